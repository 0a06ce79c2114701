"""The Shardset operator: reconciles ShardSet resources into node pods and Raft groups."""
