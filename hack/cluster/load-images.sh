#!/usr/bin/env bash
# Imports images (saved by images.sh under ${SHARDSET_CACHE}/images) into the
# local cluster's containerd, namespace k8s.io, where the kubelet finds them.
#
#   hack/cluster/load-images.sh IMAGE... [--saved]
#
# --saved: every image images.sh has saved under ${IMAGE_CACHE}.
#
# Does nothing (and says so) when the local cluster is not up.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOCK="${RUN_DIR}/containerd.sock"
if [[ ! -S "${SOCK}" ]]; then
  log "local cluster not up: images built, not loaded"
  exit 0
fi
declare -A seen=()
tars=()
for img in "$@"; do
  if [[ "${img}" == --saved ]]; then # every image images.sh has saved
    for t in "${IMAGE_CACHE}/${IMAGE_PREFIX}"_*.tar "${IMAGE_CACHE}"/shardset_*.tar; do
      [[ -f "$t" ]] && tars+=("$t")
    done
    continue
  fi
  tar="${IMAGE_CACHE}/$(echo "${img}" | tr '/:' '__').tar"
  [[ -f "${tar}" ]] || die "no image tarball ${tar}: build it with hack/cluster/images.sh"
  tars+=("${tar}")
done
# What this cluster's containerd already holds (image ids as images.sh saved
# them): an unchanged image is not imported again (an import takes ~20 s).
LOADED="${RUN_DIR}/loaded-images"
mkdir -p "${LOADED}"
for tar in "${tars[@]}"; do
  [[ -n "${seen[${tar}]:-}" ]] && continue
  seen[${tar}]=1
  img=$(basename "${tar}" .tar)
  if [[ -f "${tar}.id" ]] && cmp -s "${tar}.id" "${LOADED}/${img}.id"; then
    log "${img}: already loaded"
    continue
  fi
  ctr --address "${SOCK}" --namespace k8s.io images import "${tar}" >/dev/null
  [[ -f "${tar}.id" ]] && cp "${tar}.id" "${LOADED}/${img}.id"
  log "loaded ${img}"
done
