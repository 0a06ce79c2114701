#!/usr/bin/env bash
# Brings up a single-node Kubernetes cluster on this machine, from nothing:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler as host
# processes (as kubernetes' hack/local-up-cluster.sh does), containerd + kubelet
# + kube-proxy (iptables) as the node, CNI bridge networking, CoreDNS and a
# default hostPath StorageClass. Waits until the node is Ready and CoreDNS
# answers. Binaries and images come from the cache (build.sh, images.sh build
# whatever is missing). Tear down with down.sh.
#
# Needs root. State, logs and the kubeconfig live under ${STATE_DIR}
# (default /var/lib/shardset-cluster); the kubeconfig is ${STATE_DIR}/kubeconfig.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) -eq 0 ]] || die "up.sh needs root"
START=$(date +%s)
step() { log "[$(($(date +%s) - START))s] $*"; }

"${CLUSTER_DIR}/install-deps.sh" >/dev/null
if [[ -f "${RUN_DIR}/up.done" ]] &&
  kubectl --kubeconfig "${STATE_DIR}/kubeconfig" get --raw /readyz --request-timeout=5s >/dev/null 2>&1; then
  log "cluster already up (${STATE_DIR}); run down.sh first"
  exit 0
fi
"${CLUSTER_DIR}/down.sh" --quiet # leftovers of a half-finished run

step "binaries (cache: ${SHARDSET_CACHE})"
"${CLUSTER_DIR}/build.sh" k8s etcd coredns pause
step "images"
"${CLUSTER_DIR}/images.sh" base pause coredns testserver

mkdir -p "${STATE_DIR}" "${LOG_DIR}" "${RUN_DIR}"
PKI="${STATE_DIR}/pki"
KCFG="${STATE_DIR}/kubeconfigs"
CTRD_SOCK="${RUN_DIR}/containerd.sock"
CTRD_STATE="/run/shardset-containerd"
ADMIN_KUBECONFIG="${STATE_DIR}/kubeconfig"
KUBECTL=(kubectl --kubeconfig "${ADMIN_KUBECONFIG}")

# start NAME CMD... : runs CMD in the background, logging to ${LOG_DIR}/NAME.log
start() {
  local name=$1; shift
  setsid nohup "$@" >"${LOG_DIR}/${name}.log" 2>&1 </dev/null &
  echo $! >"${RUN_DIR}/${name}.pid"
}
alive() { kill -0 "$(cat "${RUN_DIR}/$1.pid")" 2>/dev/null; }
wait_for() { # DESC TIMEOUT_S PROC CMD... : waits until CMD succeeds while PROC lives
  local desc=$1 timeout=$2 proc=$3; shift 3
  local deadline=$(($(date +%s) + timeout))
  while (($(date +%s) < deadline)); do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -n "${proc}" ]] && ! alive "${proc}"; then
      tail -20 "${LOG_DIR}/${proc}.log" >&2
      die "${proc} exited while waiting for ${desc}"
    fi
    sleep 1
  done
  [[ -n "${proc}" ]] && tail -20 "${LOG_DIR}/${proc}.log" >&2
  die "timed out after ${timeout}s waiting for ${desc}"
}

step "host network: ${NODE_IFACE} ${NODE_IP}, forwarding"
# The node's address lives on a dummy interface of our own, so the cluster does
# not depend on (nor listen on) the machine's real network.
# (a port-less bridge: this kernel has no dummy driver, and a bridge works the same)
ip link show "${NODE_IFACE}" >/dev/null 2>&1 || ip link add "${NODE_IFACE}" type dummy 2>/dev/null ||
  ip link add "${NODE_IFACE}" type bridge
ip addr replace "${NODE_IP}/32" dev "${NODE_IFACE}"
ip link set "${NODE_IFACE}" up
sysctl -qn net.ipv4.ip_forward >"${RUN_DIR}/ip_forward.orig"
sysctl -qw net.ipv4.ip_forward=1
modprobe br_netfilter 2>/dev/null || true
modprobe overlay 2>/dev/null || true
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
# Pods may talk to each other, to services and to this host, never beyond it.
iptables -N SHARDSET-FORWARD 2>/dev/null || iptables -F SHARDSET-FORWARD
iptables -A SHARDSET-FORWARD -s "${POD_CIDR}" -d "${POD_CIDR}" -j RETURN
iptables -A SHARDSET-FORWARD -s "${POD_CIDR}" -j DROP
iptables -C FORWARD -j SHARDSET-FORWARD 2>/dev/null || iptables -I FORWARD 1 -j SHARDSET-FORWARD

step "certificates and kubeconfigs (kubeadm init phase, offline)"
cat >"${STATE_DIR}/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: ${NODE_IP}
  bindPort: ${API_PORT}
nodeRegistration:
  name: ${NODE_NAME}
  criSocket: unix://${CTRD_SOCK}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: ${K8S_VERSION}
clusterName: shardset-local
certificatesDir: ${PKI}
controlPlaneEndpoint: ${NODE_IP}:${API_PORT}
networking:
  dnsDomain: ${CLUSTER_DOMAIN}
  podSubnet: ${POD_CIDR}
  serviceSubnet: ${SERVICE_CIDR}
apiServer:
  certSANs: [127.0.0.1, localhost, ${NODE_IP}]
EOF
KA=(kubeadm --config "${STATE_DIR}/kubeadm.yaml")
"${KA[@]}" init phase certs all >"${LOG_DIR}/kubeadm.log" 2>&1
mkdir -p "${KCFG}"
"${KA[@]}" init phase kubeconfig all --kubeconfig-dir "${KCFG}" >>"${LOG_DIR}/kubeadm.log" 2>&1
"${KA[@]}" kubeconfig user --client-name system:kube-proxy >"${KCFG}/kube-proxy.conf" 2>>"${LOG_DIR}/kubeadm.log"
cp "${KCFG}/admin.conf" "${ADMIN_KUBECONFIG}"

step "etcd ${ETCD_VERSION}"
start etcd "${ETCD_BIN}/etcd" --name default --data-dir "${STATE_DIR}/etcd" \
  --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster "default=http://127.0.0.1:${ETCD_PEER_PORT}" --listen-metrics-urls "" \
  --quota-backend-bytes 2147483648 --log-level warn
wait_for "etcd health" 60 etcd "${ETCD_BIN}/etcdctl" --endpoints "127.0.0.1:${ETCD_PORT}" endpoint health

step "kube-apiserver"
start kube-apiserver kube-apiserver \
  --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
  --advertise-address "${NODE_IP}" --bind-address "${NODE_IP}" --secure-port "${API_PORT}" \
  --client-ca-file "${PKI}/ca.crt" \
  --tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
  --kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
  --kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer "https://kubernetes.default.svc.${CLUSTER_DOMAIN}" \
  --service-account-key-file "${PKI}/sa.pub" --service-account-signing-key-file "${PKI}/sa.key" \
  --service-cluster-ip-range "${SERVICE_CIDR}" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --proxy-client-cert-file "${PKI}/front-proxy-client.crt" --proxy-client-key-file "${PKI}/front-proxy-client.key" \
  --requestheader-client-ca-file "${PKI}/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-extra-headers-prefix X-Remote-Extra- --requestheader-group-headers X-Remote-Group \
  --requestheader-username-headers X-Remote-User
wait_for "kube-apiserver /readyz" 120 kube-apiserver \
  kubectl --kubeconfig "${KCFG}/super-admin.conf" get --raw /readyz
# kubeadm's admin.conf is in group kubeadm:cluster-admins, which kubeadm binds
# to cluster-admin during `init`; we skipped init, so bind it here.
kubectl --kubeconfig "${KCFG}/super-admin.conf" create clusterrolebinding kubeadm:cluster-admins \
  --clusterrole cluster-admin --group kubeadm:cluster-admins >/dev/null

step "kube-controller-manager, kube-scheduler"
start kube-controller-manager kube-controller-manager \
  --kubeconfig "${KCFG}/controller-manager.conf" \
  --authentication-kubeconfig "${KCFG}/controller-manager.conf" \
  --authorization-kubeconfig "${KCFG}/controller-manager.conf" \
  --bind-address 127.0.0.1 --leader-elect=false \
  --client-ca-file "${PKI}/ca.crt" --requestheader-client-ca-file "${PKI}/front-proxy-ca.crt" \
  --cluster-signing-cert-file "${PKI}/ca.crt" --cluster-signing-key-file "${PKI}/ca.key" \
  --root-ca-file "${PKI}/ca.crt" --service-account-private-key-file "${PKI}/sa.key" \
  --use-service-account-credentials=true \
  --allocate-node-cidrs=true --cluster-cidr "${POD_CIDR}" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "${SERVICE_CIDR}" --controllers '*,bootstrapsigner,tokencleaner'
start kube-scheduler kube-scheduler \
  --kubeconfig "${KCFG}/scheduler.conf" \
  --authentication-kubeconfig "${KCFG}/scheduler.conf" \
  --authorization-kubeconfig "${KCFG}/scheduler.conf" \
  --bind-address 127.0.0.1 --leader-elect=false

step "containerd (sandbox image ${PAUSE_IMAGE})"
mkdir -p "${STATE_DIR}/cni/net.d" "${STATE_DIR}/containerd"
cat >"${STATE_DIR}/containerd/config.toml" <<EOF
version = 2
root = "${STATE_DIR}/containerd/root"
state = "${CTRD_STATE}"
[grpc]
  address = "${CTRD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj (runc fails with "can't get final child's PID from pipe" on
  # the sandbox's -998); clamp containers to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN_DIR}"
    conf_dir = "${STATE_DIR}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
cat >"${STATE_DIR}/cni/net.d/10-shardset.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "shardset",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${CNI_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${NODE_POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "${STATE_DIR}/containerd/config.toml"
CTR=(ctr --address "${CTRD_SOCK}" --namespace k8s.io)
wait_for "containerd" 60 containerd "${CTR[@]}" version

step "loading images into containerd (k8s.io)"
# ours, and whatever else images.sh has saved (the node image, ...)
"${CLUSTER_DIR}/load-images.sh" "${PAUSE_IMAGE}" "${COREDNS_IMAGE}" "${TESTSERVER_IMAGE}" --saved

step "kubelet"
mkdir -p "${STATE_DIR}/kubelet"
cat >"${STATE_DIR}/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CTRD_SOCK}
clusterDNS: [${DNS_SVC_IP}]
clusterDomain: ${CLUSTER_DOMAIN}
resolvConf: ${STATE_DIR}/resolv.conf
podLogsDir: ${STATE_DIR}/pod-logs
failSwapOn: false
failCgroupV1: false
rotateCertificates: false
serializeImagePulls: false
# Images cannot be pulled here: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
# Pods with dnsPolicy Default get this: no upstream server (nothing leaves the machine).
echo "nameserver 127.0.0.1" >"${STATE_DIR}/resolv.conf"
[[ -d /var/log/containers ]] || touch "${RUN_DIR}/created-var-log-containers"
start kubelet kubelet --config "${STATE_DIR}/kubelet/config.yaml" \
  --kubeconfig "${KCFG}/kubelet.conf" --root-dir "${STATE_DIR}/kubelet" \
  --cert-dir "${STATE_DIR}/kubelet/pki" --hostname-override "${NODE_NAME}" --node-ip "${NODE_IP}" \
  --oom-score-adj 0 --v 1

step "kube-proxy (iptables)"
cat >"${STATE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: ${KCFG}/kube-proxy.conf}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
clusterCIDR: ${POD_CIDR}
nodePortAddresses: ["${NODE_IP}/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
oomScoreAdj: 0
EOF
start kube-proxy kube-proxy --config "${STATE_DIR}/kube-proxy.yaml"

step "waiting for node ${NODE_NAME} to be Ready"
wait_for "node Ready" 180 kubelet "${KUBECTL[@]}" wait --for=condition=Ready "node/${NODE_NAME}" --timeout=2s

step "CoreDNS, default StorageClass, provisioner"
sed -e "s|@COREDNS_IMAGE@|${COREDNS_IMAGE}|; s|@DNS_SVC_IP@|${DNS_SVC_IP}|; s|@CLUSTER_DOMAIN@|${CLUSTER_DOMAIN}|" \
  "${CLUSTER_DIR}/manifests/coredns.yaml" | "${KUBECTL[@]}" apply -f - >/dev/null
"${KUBECTL[@]}" apply -f "${CLUSTER_DIR}/manifests/storage.yaml" >/dev/null
KUBECONFIG="${ADMIN_KUBECONFIG}" start provisioner python3 "${CLUSTER_DIR}/provisioner.py" \
  --root "${STATE_DIR}/volumes" --node "${NODE_NAME}"
wait_for "CoreDNS rollout" 180 kubelet "${KUBECTL[@]}" -n kube-system rollout status deploy/coredns --timeout=2s
wait_for "CoreDNS to answer kubernetes.default" 60 "" \
  python3 "${CLUSTER_DIR}/dnsquery.py" "${DNS_SVC_IP}" "kubernetes.default.svc.${CLUSTER_DOMAIN}"

touch "${RUN_DIR}/up.done"
echo "$(date -u +%FT%TZ) cluster-up $(($(date +%s) - START))s" >>"${SHARDSET_CACHE}/build-times.log"
step "cluster up: export KUBECONFIG=${ADMIN_KUBECONFIG}"
"${KUBECTL[@]}" get nodes -o wide
