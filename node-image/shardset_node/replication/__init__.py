"""Replication: the host loop that drives every Raft group of the node, one replica
group (a Raft core with its log storage and state machine), and the state machines."""
