"""Storage on the node's disk: the write-ahead log, the Raft store on top of it, the
SQLite KV engine and its snapshot file format, and the one durable-write helper."""
