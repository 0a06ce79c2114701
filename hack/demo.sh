#!/usr/bin/env bash
# The main job, on a fresh machine, in one command (`make demo`):
#
#   1. the local Kubernetes cluster (hack/cluster: builds what the cache lacks,
#      the first time about 45 minutes; then about 40 s), and Helm;
#   2. the node and operator images from this checkout, loaded into the cluster;
#   3. the operator, with its Helm chart (charts/shardset-operator), in
#      namespace shardset-system;
#   4. a ShardSet (examples/shardset-minimal.yaml) in namespace shardset-demo,
#      waited for until Ready;
#   5. a short workload from a pod, through the store's client Service:
#      writes, reads back, `shardset status`;
#   6. `kubectl get sset`.
#
# The cluster stays up for you to use; `make cluster-down` removes everything.
# Rerunning is safe: each step reuses what is already there. Needs root.
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
cd "${REPO_ROOT}"
START=$(date +%s)
NS="${DEMO_NAMESPACE:-shardset-demo}"
OPERATOR_NS="${OPERATOR_NAMESPACE:-shardset-system}"
export KUBECONFIG="${STATE_DIR}/kubeconfig"
step() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }

step "local Kubernetes cluster (hack/cluster/up.sh)"
"${CLUSTER_DIR}/install-deps.sh" >/dev/null
"${CLUSTER_DIR}/up.sh"
[[ -x "${HELM_BIN}/helm" ]] || "${CLUSTER_DIR}/build.sh" helm

step "images ${NODE_IMAGE} and ${OPERATOR_IMAGE} from this checkout"
"${CLUSTER_DIR}/images.sh" node operator
"${CLUSTER_DIR}/load-images.sh" "${NODE_IMAGE}" "${OPERATOR_IMAGE}"

step "the operator: helm upgrade --install shardset-operator charts/shardset-operator"
# Helm installs a chart's CRDs only on first install: apply them so a rerun after
# a schema change gets the new one.
kubectl apply --server-side --force-conflicts -f charts/shardset-operator/crds/ >/dev/null
# The image's input hash as a pod annotation: a rebuilt image under the same
# tag changes the pod template, so the operator pod is replaced to run it.
IMAGE_INPUTS=$(docker image inspect -f '{{index .Config.Labels "shardset.inputs"}}' "${OPERATOR_IMAGE}")
helm upgrade --install shardset-operator charts/shardset-operator \
  --namespace "${OPERATOR_NS}" --create-namespace \
  --set-string "podAnnotations.shardset\.io/image-inputs=${IMAGE_INPUTS}" --wait --timeout 3m

step "a ShardSet: examples/shardset-minimal.yaml in namespace ${NS}"
kubectl create namespace "${NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "${NS}" apply -f examples/shardset-minimal.yaml
if ! kubectl -n "${NS}" wait --for=condition=Ready sset/demo --timeout=5m; then
  kubectl -n "${NS}" get sset,pods -o wide >&2
  kubectl -n "${OPERATOR_NS}" logs deploy/shardset-operator --tail=40 >&2
  die "ShardSet demo is not Ready after 5 minutes (above: its pods and the operator's log)"
fi

step "a short workload through the client Service http://demo:8000"
POD="demo-client-$(date +%s)"
kubectl -n "${NS}" run "${POD}" --image="${NODE_IMAGE}" --image-pull-policy=IfNotPresent \
  --restart=Never --env=SHARDSET_ENDPOINTS=http://demo:8000 --command -- sh -ec '
    for i in $(seq 1 20); do shardset put "demo-key-$i" "value-$i"; done
    for i in 1 10 20; do printf "demo-key-%s = " "$i"; shardset get "demo-key-$i"; done
    shardset status' >/dev/null
kubectl -n "${NS}" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/${POD}" --timeout=3m ||
  { kubectl -n "${NS}" logs "${POD}" >&2; die "the workload pod failed (its log above)"; }
kubectl -n "${NS}" logs "${POD}"
kubectl -n "${NS}" delete pod "${POD}" --wait=false >/dev/null

step "kubectl get sset -A"
kubectl get sset -A
cat >&2 <<MSG

Done in $(($(date +%s) - START)) s. Try:
  export KUBECONFIG=${KUBECONFIG} PATH=${K8S_BIN}:${HELM_BIN}:\$PATH
  kubectl -n ${NS} get sset,pods
  kubectl -n ${NS} patch sset demo --type=merge -p '{"spec":{"consistency":{"mode":"lease"}}}'
  make cluster-down     # removes the cluster and everything in it
MSG
