#!/usr/bin/env bash
# Imports images (saved by images.sh under ${SHARDSET_CACHE}/images) into the
# local cluster's containerd, namespace k8s.io, where the kubelet finds them.
#
#   hack/cluster/load-images.sh IMAGE...
#
# Does nothing (and says so) when the local cluster is not up.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOCK="${RUN_DIR}/containerd.sock"
if [[ ! -S "${SOCK}" ]]; then
  log "local cluster not up: images built, not loaded"
  exit 0
fi
for img in "$@"; do
  tar="${IMAGE_CACHE}/$(echo "${img}" | tr '/:' '__').tar"
  [[ -f "${tar}" ]] || die "no image tarball ${tar}: build it with hack/cluster/images.sh"
  ctr --address "${SOCK}" --namespace k8s.io images import "${tar}" >/dev/null
  log "loaded ${img}"
done
