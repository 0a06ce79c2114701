import sys

from shardset_sim.cli import main

sys.exit(main())
