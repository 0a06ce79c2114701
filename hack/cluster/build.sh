#!/usr/bin/env bash
# Builds the cluster's binaries from Go modules into ${SHARDSET_CACHE}, keyed by
# version (see versions.env). Anything already in the cache is skipped.
#
#   hack/cluster/build.sh [k8s] [etcd] [coredns] [helm] [kind] [pause]
#
# With no argument it builds everything the local cluster needs (not kind).
# Builds run under nice/ionice with GOMAXPROCS=2 and -p 2.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export GOMAXPROCS="${GOMAXPROCS:-2}"
export CGO_ENABLED=0
export GOFLAGS="-mod=mod -trimpath"
GOBUILD=("${NICE[@]}" go build -p "${GOMAXPROCS}")
TIMES_FILE="${SHARDSET_CACHE}/build-times.log"
mkdir -p "${SHARDSET_CACHE}"

timed() { # name cmd...
  local name=$1 start end; shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "built ${name} in $((end - start))s"
  echo "$(date -u +%FT%TZ) ${name} $((end - start))s" >>"${TIMES_FILE}"
}

have_all() { # dir bin...
  local dir=$1 b; shift
  for b in "$@"; do [[ -x "${dir}/${b}" ]] || return 1; done
}

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm kubectl)

build_k8s() {
  have_all "${K8S_BIN}" "${K8S_CMDS[@]}" && { log "k8s ${K8S_VERSION}: cached"; return; }
  local mod="${CLUSTER_DIR}/gomod/k8s"
  # Keep the wrapper module in step with versions.env.
  if ! grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "${mod}/go.mod"; then
    log "updating ${mod}/go.mod to ${K8S_VERSION} / ${K8S_STAGING_VERSION}"
    (cd "${mod}" && go mod edit -require "k8s.io/kubernetes@${K8S_VERSION}" &&
      for m in $(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))'); do
        go mod edit -replace "${m}=${m}@${K8S_STAGING_VERSION}"
      done && go mod tidy)
  fi
  local major minor
  major=$(echo "${K8S_VERSION#v}" | cut -d. -f1)
  minor=$(echo "${K8S_VERSION#v}" | cut -d. -f2)
  local ld="-s -w" pkg kv
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in "gitVersion=${K8S_VERSION}" "gitMajor=${major}" "gitMinor=${minor}" \
      "gitTreeState=clean" "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
      ld+=" -X ${pkg}.${kv}"
    done
  done
  local tmp="${K8S_BIN}.tmp"
  mkdir -p "${tmp}"
  local pkgs=() c
  for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${c}"); done
  (cd "${mod}" && timed "k8s-${K8S_VERSION}" "${GOBUILD[@]}" -tags "selinux,notest,grpcnotrace" -ldflags "${ld}" -o "${tmp}/" "${pkgs[@]}")
  mkdir -p "${K8S_BIN}"
  mv "${tmp}"/* "${K8S_BIN}/" && rmdir "${tmp}"
  "${K8S_BIN}/kubectl" version --client | head -1 >&2
}

build_etcd() {
  have_all "${ETCD_BIN}" etcd etcdctl && { log "etcd ${ETCD_VERSION}: cached"; return; }
  # etcd's own modules carry replace directives, so `go install` refuses them:
  # a wrapper module requires the published modules instead.
  local mod="${CLUSTER_DIR}/gomod/etcd"
  grep -q "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "${mod}/go.mod" ||
    (cd "${mod}" && go mod edit -require "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" \
      -require "go.etcd.io/etcd/etcdctl/v3@${ETCD_VERSION}" && go mod tidy)
  mkdir -p "${ETCD_BIN}"
  (cd "${mod}" &&
    timed "etcd-${ETCD_VERSION}" "${GOBUILD[@]}" -ldflags "-s -w" -o "${ETCD_BIN}/etcd" go.etcd.io/etcd/server/v3 &&
    timed "etcdctl-${ETCD_VERSION}" "${GOBUILD[@]}" -ldflags "-s -w" -o "${ETCD_BIN}/etcdctl" go.etcd.io/etcd/etcdctl/v3)
  "${ETCD_BIN}/etcd" --version | head -1 >&2
}

go_install() { # name version bindir pkg@version [ldflags]
  local name=$1 bindir=$2 pkgver=$3 ld=${4:-}
  mkdir -p "${bindir}"
  GOBIN="${bindir}" timed "${name}" "${NICE[@]}" go install -p "${GOMAXPROCS}" -ldflags "-s -w ${ld}" "${pkgver}"
}

build_coredns() {
  have_all "${COREDNS_BIN}" coredns && { log "coredns ${COREDNS_VERSION}: cached"; return; }
  go_install "coredns-${COREDNS_VERSION}" "${COREDNS_BIN}" "github.com/coredns/coredns@${COREDNS_VERSION}" \
    "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
  "${COREDNS_BIN}/coredns" -version >&2
}

build_helm() {
  have_all "${HELM_BIN}" helm && { log "helm ${HELM_VERSION}: cached"; return; }
  go_install "helm-${HELM_VERSION}" "${HELM_BIN}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" \
    "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  "${HELM_BIN}/helm" version --short >&2
}

build_kind() {
  have_all "${KIND_BIN}" kind && { log "kind ${KIND_VERSION}: cached"; return; }
  go_install "kind-${KIND_VERSION}" "${KIND_BIN}" "sigs.k8s.io/kind@${KIND_VERSION}"
  "${KIND_BIN}/kind" version >&2
}

build_pause() {
  have_all "${PAUSE_BIN}" pause && { log "pause ${PAUSE_VERSION}: cached"; return; }
  mkdir -p "${PAUSE_BIN}"
  (cd "${CLUSTER_DIR}/images/pause" &&
    timed "pause-${PAUSE_VERSION}" "${NICE[@]}" go build -ldflags "-s -w" -o "${PAUSE_BIN}/pause" .)
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(k8s etcd coredns helm pause)
for t in "${targets[@]}"; do
  case "$t" in
    k8s | etcd | coredns | helm | kind | pause) "build_$t" ;;
    *) die "unknown target $t" ;;
  esac
done
