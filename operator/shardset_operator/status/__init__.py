"""Pure status computation: shard health, conditions, progress in words, and the status
patch. Computed from one observation; nothing here does I/O."""
