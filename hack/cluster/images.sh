#!/usr/bin/env bash
# Builds the cluster's images offline and saves each as a tarball under
# ${SHARDSET_CACHE}/images, ready for `ctr -n k8s.io images import`.
#
#   hack/cluster/images.sh [base] [pause] [coredns] [testserver] [node] [DIR:IMAGE ...]
#
# node: node-image/Dockerfile with a wheelhouse of the repository (NODE_SRC,
# default the repository root) built on the host.
#
# base: a Debian root made by debootstrap, `docker import`ed as ${BASE_IMAGE};
# its rootfs tarball is cached per suite and date and reused for 30 days
# (REFRESH_BASE=1 makes a new one). Every Dockerfile takes a BASE_IMAGE build
# argument. No registry is contacted: builds run with --network none.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER="${DOCKER:-docker}"
export DOCKER_BUILDKIT=0
mkdir -p "${IMAGE_CACHE}"

ensure_docker() {
  if "${DOCKER}" info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || die "dockerd missing: run hack/cluster/install-deps.sh"
  log "starting dockerd (no bridge, no iptables: it only builds images)"
  mkdir -p "${SHARDSET_CACHE}"
  setsid nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --log-level=warn >"${SHARDSET_CACHE}/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do "${DOCKER}" info >/dev/null 2>&1 && return; sleep 1; done
  die "dockerd did not start; see ${SHARDSET_CACHE}/dockerd.log"
}

image_exists() { "${DOCKER}" image inspect "$1" >/dev/null 2>&1; }

build_base() {
  if [[ "${BASE_IMAGE}" != "${OUR_BASE_IMAGE}" ]]; then
    log "BASE_IMAGE=${BASE_IMAGE}: not building our own base"
    return
  fi
  local tarball
  if [[ -z "${REFRESH_BASE:-}" ]]; then
    tarball=$(find "${IMAGE_CACHE}" -maxdepth 1 -name "debian-${DEBIAN_SUITE}-rootfs-*.tar" -mtime -30 | sort | tail -1)
  fi
  if [[ -z "${tarball:-}" ]]; then
    tarball="${IMAGE_CACHE}/debian-${DEBIAN_SUITE}-rootfs-$(date -u +%Y%m%d).tar"
    local root="${IMAGE_CACHE}/rootfs.tmp" start
    start=$(date +%s)
    rm -rf "${root}"
    log "debootstrap ${DEBIAN_SUITE} -> ${tarball}"
    "${NICE[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "${DEBIAN_SUITE}" "${root}" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"${IMAGE_CACHE}/debootstrap.log"
    rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb
    tar -C "${root}" --numeric-owner -cf "${tarball}.tmp" . && mv "${tarball}.tmp" "${tarball}"
    rm -rf "${root}"
    echo "$(date -u +%FT%TZ) debootstrap-${DEBIAN_SUITE} $(($(date +%s) - start))s" >>"${SHARDSET_CACHE}/build-times.log"
  fi
  local id="${tarball##*/}"
  if [[ "$("${DOCKER}" image inspect -f '{{index .Config.Labels "shardset.rootfs"}}' "${BASE_IMAGE}" 2>/dev/null)" != "${id}" ]]; then
    log "docker import ${tarball} as ${BASE_IMAGE}"
    "${DOCKER}" import --change "LABEL shardset.rootfs=${id}" --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      "${tarball}" "${BASE_IMAGE}" >/dev/null
  fi
}

# docker_build IMAGE CONTEXT_DIR [FILES_TO_COPY_IN...]
docker_build() {
  local image=$1 src=$2; shift 2
  local ctx
  ctx=$(mktemp -d)
  cp -a "${src}/." "${ctx}/"
  local f
  for f in "$@"; do cp -a "$f" "${ctx}/"; done
  # Python dependencies: a wheelhouse built on the host (same CPython 3.11 as
  # the Debian base), copied in as wheels/, so pip in the image needs no network:
  #   RUN pip install --no-index --find-links /wheels -r /requirements.txt
  if [[ -f "${ctx}/requirements.txt" ]]; then
    mkdir -p "${SHARDSET_CACHE}/wheelhouse"
    "${NICE[@]}" python3 -m pip wheel -q -r "${ctx}/requirements.txt" -w "${SHARDSET_CACHE}/wheelhouse"
    mkdir -p "${ctx}/wheels"
    python3 -m pip download -q --no-index --find-links "${SHARDSET_CACHE}/wheelhouse" \
      -r "${ctx}/requirements.txt" -d "${ctx}/wheels"
  fi
  "${NICE[@]}" "${DOCKER}" build -q --network none --build-arg "BASE_IMAGE=${BUILD_BASE:-${BASE_IMAGE}}" \
    -t "${image}" "${ctx}" >/dev/null
  rm -rf "${ctx}"
  save_image "${image}"
}

# Saves IMAGE to the cache unless the tarball already holds this image id.
save_image() {
  local image=$1 tar id
  tar="${IMAGE_CACHE}/$(echo "${image}" | tr '/:' '__').tar"
  id=$("${DOCKER}" image inspect -f '{{.Id}}' "${image}")
  if [[ -f "${tar}" && "$(cat "${tar}.id" 2>/dev/null)" == "${id}" ]]; then
    log "${image}: unchanged"
    return
  fi
  "${DOCKER}" save "${image}" -o "${tar}.tmp" && mv "${tar}.tmp" "${tar}" && echo "${id}" >"${tar}.id"
  log "${image}: saved to ${tar}"
}

IMAGES_DIR="${CLUSTER_DIR}/images"

build_image() {
  case "$1" in
    base) build_base ;;
    pause)
      [[ -x "${PAUSE_BIN}/pause" ]] || "${CLUSTER_DIR}/build.sh" pause
      BUILD_BASE=scratch docker_build "${PAUSE_IMAGE}" "${IMAGES_DIR}/pause" "${PAUSE_BIN}/pause" ;;
    coredns)
      [[ -x "${COREDNS_BIN}/coredns" ]] || "${CLUSTER_DIR}/build.sh" coredns
      build_base
      docker_build "${COREDNS_IMAGE}" "${IMAGES_DIR}/coredns" "${COREDNS_BIN}/coredns" ;;
    testserver)
      build_base
      docker_build "${TESTSERVER_IMAGE}" "${IMAGES_DIR}/testserver" ;;
    node) # the node program, from a wheelhouse built on the host
      build_base
      local src="${NODE_SRC:-${REPO_ROOT}}" ctx
      [[ -f "${REPO_ROOT}/node-image/Dockerfile" && -f "${src}/pyproject.toml" ]] ||
        die "no node program in ${src} (node-image/Dockerfile, pyproject.toml)"
      ctx=$(mktemp -d)
      cp "${REPO_ROOT}/node-image/Dockerfile" "${ctx}/"
      mkdir -p "${ctx}/wheels" "${SHARDSET_CACHE}/wheelhouse"
      "${NICE[@]}" python3 -m pip wheel -q --find-links "${SHARDSET_CACHE}/wheelhouse" \
        --wheel-dir "${ctx}/wheels" "${src}"
      find "${ctx}/wheels" -name '*.whl' ! -name 'shardset-*' -exec cp -n {} "${SHARDSET_CACHE}/wheelhouse/" \;
      "${NICE[@]}" "${DOCKER}" build -q --network none --build-arg "BASE_IMAGE=${BASE_IMAGE}" \
        -t "${NODE_IMAGE}" "${ctx}" >/dev/null
      rm -rf "${ctx}"
      save_image "${NODE_IMAGE}" ;;
    *:*) # DIR:IMAGE, e.g. node-image:shardset.local/node:dev
      build_base
      docker_build "${1#*:}" "${REPO_ROOT}/${1%%:*}" ;;
    *) die "unknown image $1" ;;
  esac
}

ensure_docker
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(base pause coredns testserver)
for t in "${targets[@]}"; do build_image "$t"; done
