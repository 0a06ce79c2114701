"""`python -m shardset_node`: run one node (what the container image starts)."""

import sys

from shardset_node.main import main

sys.exit(main())
