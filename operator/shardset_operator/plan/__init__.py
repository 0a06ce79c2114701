"""Pure planners: from what the store reports, what to do next (members, replica moves,
repairs, recovery, splits, rolling restarts, leader balance, the operation's next step).
Nothing here does I/O; `reconcile/` carries the plans out through `clients/`."""
