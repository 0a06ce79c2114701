#!/usr/bin/env bash
# The operator's end-to-end tests on the local cluster (`make e2e`):
#
#   1. brings the local cluster up unless it is up already (and then takes it
#      down again at the end, unless KEEP_CLUSTER=1);
#   2. builds Helm if the cache lacks it;
#   3. builds shardset/node:dev and shardset/operator:dev from this checkout
#      (rebuilt only when their inputs changed; NODE_REF / OPERATOR_REF build from
#      a git ref instead, see hack/cluster/images.sh) and loads them into the
#      cluster's containerd;
#   4. runs pytest -m e2e on tests/e2e (the cluster smoke tests and
#      tests/e2e/test_operator_e2e.py), failing rather than skipping without a cluster.
#
#   hack/e2e.sh [pytest args...]     e.g. hack/e2e.sh -k operator
#
# Works without a terminal (CI=true, stdin closed). Needs root (the cluster does).
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
cd "${REPO_ROOT}"
START=$(date +%s)

cluster_answers() {
  [[ -f "${RUN_DIR}/up.done" ]] &&
    kubectl --kubeconfig "${STATE_DIR}/kubeconfig" get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}
if ! cluster_answers; then
  log "no local cluster up: starting one"
  if [[ -z "${KEEP_CLUSTER:-}" ]]; then
    trap '"${CLUSTER_DIR}/down.sh" --quiet || true' EXIT
  fi
  "${CLUSTER_DIR}/up.sh"
fi
[[ -x "${HELM_BIN}/helm" ]] || "${CLUSTER_DIR}/build.sh" helm
"${CLUSTER_DIR}/images.sh" node operator
"${CLUSTER_DIR}/load-images.sh" "${NODE_IMAGE}" "${OPERATOR_IMAGE}"

if [[ -x .venv/bin/pytest ]]; then PYTEST=(.venv/bin/pytest); else PYTEST=("${PYTHON:-python3}" -m pytest); fi
export KUBECONFIG="${STATE_DIR}/kubeconfig"
rc=0
E2E_REQUIRE_CLUSTER=1 "${PYTEST[@]}" -v -m e2e tests/e2e "$@" </dev/null || rc=$?
echo "$(date -u +%FT%TZ) e2e $(($(date +%s) - START))s rc=${rc}" >>"${SHARDSET_CACHE}/build-times.log"
exit "${rc}"
