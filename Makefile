PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SEEDS ?= 0:1000
JOBS ?= 2
SOAK_SEEDS ?= 0:100000

.PHONY: dev test lint check sim soak demo clean crds demo-local e2e chart-sync bench

# The stamp is rebuilt when pyproject.toml changes, so every target below
# does the dev install first on a fresh clone. The editable install only maps the
# packages that existed when it ran, so a .pth file also puts node-image/ and
# operator/ on sys.path: packages added later import without reinstalling.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -c "import pathlib, sysconfig; \
		pathlib.Path(sysconfig.get_paths()['purelib'], 'shardset-src.pth').write_text( \
		'$(CURDIR)/node-image\n$(CURDIR)/operator\n')"
	touch $@

dev:
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy node-image/shardset_raft node-image/shardset_sim node-image/shardset_proto node-image/shardset_node node-image/shardset \
		operator/shardset_operator
	$(BIN)/lint-imports
	$(BIN)/python hack/lint/structure.py node-image/shardset_proto node-image/shardset_node \
		node-image/shardset node-image/shardset_raft operator/shardset_operator

# Everything CI runs (.ci/run): the suite, the linters, then the local cluster
# brought up, every e2e test run against it, and the cluster torn down.
check: test lint
	hack/cluster/ci.sh </dev/null

# The CRD in crds/ is generated from the operator's pydantic models;
# tests/operator/test_crds.py fails when it is stale.
crds: $(STAMP)
	$(BIN)/python -m shardset_operator.api.crdgen

# The main job (hack/demo.sh): the local Kubernetes cluster, the node and
# operator images from this checkout, the operator's Helm chart, a ShardSet made
# Ready, a short workload through its Service, `kubectl get sset`. Needs root.
demo: $(STAMP)
	hack/demo.sh

# Without Kubernetes: three node processes on 127.0.0.1, a workload, a leader
# killed and restarted, every acknowledged write read back.
demo-local: $(STAMP)
	$(BIN)/python -m shardset.demo

# The operator end to end on the local cluster (hack/e2e.sh): cluster up unless
# it is, images built and loaded, pytest -m e2e tests/e2e. E2E_ARGS go to pytest.
e2e: $(STAMP)
	hack/e2e.sh $(E2E_ARGS)

# The chart's copies of crds/ and of the operator's RBAC rules (after `make crds`).
chart-sync: $(STAMP)
	$(BIN)/python hack/chart_sync.py

# Shardset against a 3-member etcd and PySyncObj on this machine (docs/performance.md):
# the bench extras, strace and etcd (built from its Go module) if missing, then
# bench/compare.py, which writes bench/results/<date>.{json,md,png} and the table in
# docs/performance.md. About 15 minutes; BENCH_ARGS go to bench/compare.py (--quick).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -e '.[dev,bench]'
	touch $@

bench: $(BENCH_STAMP)
	hack/bench/run.sh $(BENCH_ARGS)

sim: $(STAMP)
	$(BIN)/python -m shardset_sim run --seeds $(SEEDS) --jobs $(JOBS)

# pytest exits 5 when no test carries the soak marker yet; that is not a failure.
soak: $(STAMP)
	$(BIN)/pytest -q -m soak || [ $$? -eq 5 ]
	$(MAKE) sim SEEDS=$(SOAK_SEEDS)

clean:
	rm -rf $(VENV) build dist *.egg-info node-image/*.egg-info operator/*.egg-info \
		.pytest_cache .mypy_cache .ruff_cache .hypothesis sim-failures
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +

# The local Kubernetes cluster built from sources (hack/cluster/, docs/cluster.md):
# cluster-up, cluster-down, images, cluster-smoke; CLUSTER=kind for users elsewhere.
include hack/cluster/cluster.mk
