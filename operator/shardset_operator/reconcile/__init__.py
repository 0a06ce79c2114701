"""One reconcile of a ShardSet: `converge.converge` calls one function per phase, each
phase in its own module (bootstrap, observe, membership, roll, apply, consistency,
operation, report). Phases plan with `plan/` and `status/` and act through `clients/`."""
