#!/usr/bin/env bash
# For .ci/run: brings the local cluster up from nothing (building whatever the
# cache lacks), runs the e2e smoke tests against it, and always tears it down.
#
#   hack/cluster/ci.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO_ROOT}"
trap '"${CLUSTER_DIR}/down.sh" --quiet || true' EXIT
"${CLUSTER_DIR}/install-deps.sh"
"${CLUSTER_DIR}/up.sh"
python3 -m pytest -v tests/e2e "$@"
