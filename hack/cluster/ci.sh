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
# the project's venv when there is one (main's Makefile makes .venv), else python3
if [[ -x .venv/bin/pytest ]]; then PYTEST=(.venv/bin/pytest); else PYTEST=("${PYTHON:-python3}" -m pytest); fi
E2E_REQUIRE_CLUSTER=1 "${PYTEST[@]}" -v -m e2e tests/e2e "$@"
