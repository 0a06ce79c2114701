"""The Shardset client library and the `shardset` command line."""
