#!/usr/bin/env bash
# `make bench`: everything the comparison needs on a clean machine, then the comparison.
#   - strace (to count fsyncs per write), from apt if missing;
#   - etcd, built from its Go module into ~/.cache/shardset by hack/cluster/build.sh
#     (skipped when the pinned version is already in the cache);
#   - bench/compare.py under nice, with any arguments given (BENCH_ARGS in make).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-${ROOT}/.venv/bin/python}"
start=$(date +%s)
if ! command -v strace >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq strace >/dev/null
  else
    echo "bench: strace is missing (fsyncs per write are counted with it); install it" >&2
    exit 1
  fi
fi
"${ROOT}/hack/cluster/build.sh" etcd
cd "${ROOT}"
nice -n 10 "${PY}" -m bench.compare "$@"
echo "bench: done in $(($(date +%s) - start)) s (after the venv)" >&2
