"""The contract between a Shardset node, its clients and the operator.

Wire formats, message bodies and the rules every side must agree on (hash slots,
placement, the shard map). Nothing here imports the node, the client or the operator.
"""
