#!/usr/bin/env bash
# For .ci/run: brings the local cluster up from nothing (building whatever the
# cache lacks), runs every e2e test against it through hack/e2e.sh (which builds
# and loads the node and operator images: the cluster smoke tests and the
# operator's end-to-end tests), and always tears it down.
#
#   hack/cluster/ci.sh [pytest args...]
#
# Needs no terminal: run it with CI=true and stdin closed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO_ROOT}"
trap '"${CLUSTER_DIR}/down.sh" --quiet || true' EXIT
"${CLUSTER_DIR}/install-deps.sh"
"${CLUSTER_DIR}/up.sh"
# hack/e2e.sh finds the cluster up and leaves it to the trap above
"${REPO_ROOT}/hack/e2e.sh" "$@" </dev/null
