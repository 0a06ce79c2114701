# Common settings for hack/cluster/*.sh. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_DIR}/../.." && pwd)"
# shellcheck source=versions.env
source "${CLUSTER_DIR}/versions.env"

# Build cache, outside the repo, keyed by version.
SHARDSET_CACHE="${SHARDSET_CACHE:-${HOME}/.cache/shardset}"
K8S_BIN="${SHARDSET_CACHE}/k8s-${K8S_VERSION}/bin"
ETCD_BIN="${SHARDSET_CACHE}/etcd-${ETCD_VERSION}/bin"
COREDNS_BIN="${SHARDSET_CACHE}/coredns-${COREDNS_VERSION}/bin"
HELM_BIN="${SHARDSET_CACHE}/helm-${HELM_VERSION}/bin"
KIND_BIN="${SHARDSET_CACHE}/kind-${KIND_VERSION}/bin"
PAUSE_BIN="${SHARDSET_CACHE}/pause-${PAUSE_VERSION}/bin"
IMAGE_CACHE="${SHARDSET_CACHE}/images"

# Cluster state (certs, etcd data, logs, pids) lives here.
STATE_DIR="${SHARDSET_STATE:-/var/lib/shardset-cluster}"
LOG_DIR="${STATE_DIR}/logs"
RUN_DIR="${STATE_DIR}/run"

# Image names loaded into the cluster's containerd (namespace k8s.io).
IMAGE_PREFIX="${IMAGE_PREFIX:-shardset.local}"
# Our debootstrapped base; set BASE_IMAGE to build FROM another (e.g. python:3.11-slim).
OUR_BASE_IMAGE="${IMAGE_PREFIX}/debian-base:${DEBIAN_SUITE}"
BASE_IMAGE="${BASE_IMAGE:-${OUR_BASE_IMAGE}}"
PAUSE_IMAGE="${IMAGE_PREFIX}/pause:${PAUSE_VERSION}"
COREDNS_IMAGE="${IMAGE_PREFIX}/coredns:${COREDNS_VERSION}"
TESTSERVER_IMAGE="${IMAGE_PREFIX}/testserver:dev"
# The product's images carry the names users see (the chart's and the CRD's
# defaults); the test-only images above carry ${IMAGE_PREFIX}.
NODE_IMAGE="${NODE_IMAGE:-shardset/node:dev}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-shardset/operator:dev}"

# Networks: all local to this machine.
POD_CIDR="${POD_CIDR:-10.244.0.0/16}"
NODE_POD_CIDR="${NODE_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
KUBERNETES_SVC_IP="10.96.0.1"
DNS_SVC_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
API_PORT="${API_PORT:-6443}"
# The node's address sits on a dummy interface of our own (not the real NIC).
NODE_IFACE="${NODE_IFACE:-shardset0}"
NODE_IP="${NODE_IP:-10.250.0.1}"
NODE_NAME="${NODE_NAME:-shardset-node}"
CNI_BRIDGE="${CNI_BRIDGE:-shardset-cni0}"
CNI_BIN_DIR="${CNI_BIN_DIR:-/usr/lib/cni}"
# Non-default etcd ports, so an etcd someone else runs on 2379 is left alone.
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"

export PATH="${K8S_BIN}:${ETCD_BIN}:${HELM_BIN}:${KIND_BIN}:${PATH}"

# Heavy work yields the CPU to everyone else on the machine.
NICE=(nice -n 19 ionice -c3)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
