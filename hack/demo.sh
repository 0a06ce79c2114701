#!/usr/bin/env bash
# The main job, on a fresh machine, in one command (`make demo`):
#
#   1. the local Kubernetes cluster (hack/cluster: builds what the cache lacks,
#      the first time about 45 minutes; then about 40 s), and Helm;
#   2. the node and operator images from this checkout, loaded into the cluster;
#   3. the operator, with its Helm chart (charts/shardset-operator), in
#      namespace shardset-system;
#   4. a ShardSet (examples/shardset-minimal.yaml, TLS on: the operator's CA) in
#      namespace shardset-demo, which enforces Pod Security `restricted`, waited
#      for until Ready, and a ShardSetUser (examples/shardsetuser.yaml);
#   5. a short workload from a pod, through the store's client Service over
#      HTTPS, authenticated with the user's token from its Secret: writes, reads
#      back, `shardset status`;
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
kubectl label namespace "${NS}" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "${NS}" apply -f examples/shardset-minimal.yaml -f examples/shardsetuser.yaml
if ! kubectl -n "${NS}" wait --for=condition=Ready sset/demo --timeout=5m; then
  kubectl -n "${NS}" get sset,pods -o wide >&2
  kubectl -n "${OPERATOR_NS}" logs deploy/shardset-operator --tail=40 >&2
  die "ShardSet demo is not Ready after 5 minutes (above: its pods and the operator's log)"
fi

if ! kubectl -n "${NS}" wait --for=condition=Ready shardsetuser/demo-app --timeout=2m; then
  kubectl -n "${NS}" get shardsetuser demo-app -o yaml >&2
  die "ShardSetUser demo-app is not Ready (above: its status)"
fi

step "a short workload through the client Service https://demo:8000, as user demo-app"
# The user's Secret, mounted: the CA to trust, the token, the Service's https URL.
POD="demo-client-$(date +%s)"
kubectl -n "${NS}" apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata: {name: ${POD}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: client
      image: ${NODE_IMAGE}
      imagePullPolicy: IfNotPresent
      env:
        - {name: SHARDSET_ENDPOINTS, valueFrom: {secretKeyRef: {name: demo-app, key: url}}}
        - {name: SHARDSET_CACERT, value: /creds/ca.crt}
        - {name: SHARDSET_TOKEN_FILE, value: /creds/token}
      command: [sh, -ec]
      args:
        - |
          for i in \$(seq 1 20); do shardset put "demo-key-\$i" "value-\$i"; done
          for i in 1 10 20; do printf "demo-key-%s = " "\$i"; shardset get "demo-key-\$i"; done
          shardset status
      volumeMounts: [{name: creds, mountPath: /creds, readOnly: true}]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
  volumes: [{name: creds, secret: {secretName: demo-app}}]
POD
kubectl -n "${NS}" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/${POD}" --timeout=3m ||
  { kubectl -n "${NS}" logs "${POD}" >&2; die "the workload pod failed (its log above)"; }
kubectl -n "${NS}" logs "${POD}"
kubectl -n "${NS}" delete pod "${POD}" --wait=false >/dev/null

step "kubectl get sset -A"
kubectl get sset -A
cat >&2 <<MSG

Done in $(($(date +%s) - START)) s. Try:
  export KUBECONFIG=${KUBECONFIG} PATH=${K8S_BIN}:${HELM_BIN}:\$PATH
  kubectl -n ${NS} get sset,shardsetusers,pods
  kubectl -n ${NS} get secret demo-app -o jsonpath='{.data.token}' | base64 -d   # its token
  kubectl -n ${NS} patch sset demo --type=merge -p '{"spec":{"consistency":{"mode":"lease"}}}'
  make cluster-down     # removes the cluster and everything in it
MSG
