import sys

from shardset.cli import main

sys.exit(main())
