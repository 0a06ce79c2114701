"""Shardset node runtime: storage, peer transport and the loop that drives the Raft groups."""
