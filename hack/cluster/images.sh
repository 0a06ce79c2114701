#!/usr/bin/env bash
# Builds the cluster's images offline and saves each as a tarball under
# ${SHARDSET_CACHE}/images, ready for `ctr -n k8s.io images import`.
#
#   hack/cluster/images.sh [base] [pause] [coredns] [testserver] [node] [operator] [DIR:IMAGE ...]
#
# node, operator: node-image/Dockerfile and operator/Dockerfile, both installing
# the repository's `shardset` wheel and its dependencies from a wheelhouse built
# on the host. The sources are this checkout's working tree (tracked and
# untracked-but-not-ignored files), or, with NODE_REF / OPERATOR_REF, a git
# ref's tree (e.g. NODE_REF=consistency builds the node from that branch).
# Each image is labelled with a hash of its inputs (the sources, the
# Dockerfile, the base image) and is not rebuilt while they are unchanged; the
# wheels of one source hash are kept under ${SHARDSET_CACHE}/wheels/<hash>.
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

# pip and the image builds of our own code run at nice 10 (the machine's rule for
# heavy jobs), not at build.sh's nice 19 + idle I/O class: on a machine whose
# cores are busy, that gets them next to nothing (a wheelhouse took 10 minutes).
PIP_NICE=(nice -n "${IMAGE_NICENESS:-10}")

# The repository's sources that go into the `shardset` wheel.
WHEEL_PATHS=(pyproject.toml README.md node-image operator)

# source_hash_memo REF: SOURCE_HASHES[xREF], hashed once per ref and run (not
# in a subshell, so the memo sticks): node and operator built by one run get
# one wheel even while someone edits the tree.
declare -A SOURCE_HASHES=()
source_hash_memo() {
  local ref=$1
  [[ -n "${SOURCE_HASHES[x${ref}]:-}" ]] || SOURCE_HASHES[x${ref}]=$(source_hash "${ref}")
}

# source_hash REF: a hash of the sources; REF empty means the working tree
# (so a build from a dirty checkout gets its own hash).
source_hash() {
  local ref=$1
  if [[ -n "${ref}" ]]; then
    git -C "${REPO_ROOT}" rev-parse --verify -q "${ref}^{tree}" >/dev/null || die "no git ref ${ref}"
    git -C "${REPO_ROOT}" ls-tree -r "${ref}" -- "${WHEEL_PATHS[@]}" | sha256sum | cut -c1-16
    return
  fi
  (cd "${REPO_ROOT}" && git ls-files -co --exclude-standard -- "${WHEEL_PATHS[@]}" |
    LC_ALL=C sort | while read -r f; do [[ -f "$f" ]] && printf '%s  %s\n' "$(sha256sum <"$f" | cut -c1-64)" "$f"; done) |
    sha256sum | cut -c1-16
}

# export_sources REF DIR: the sources into DIR (out of tree: pip's in-tree build
# would leave build/ behind in the checkout).
export_sources() {
  local ref=$1 dir=$2
  if [[ -n "${ref}" ]]; then
    git -C "${REPO_ROOT}" archive "${ref}" -- "${WHEEL_PATHS[@]}" | tar -C "${dir}" -xf -
  else
    (cd "${REPO_ROOT}" && git ls-files -co --exclude-standard -- "${WHEEL_PATHS[@]}" | tar -cf - -T -) |
      tar -C "${dir}" -xf -
  fi
}

# Wheels of the repository at source hash H in ${SHARDSET_CACHE}/wheels/H:
# the dependencies, resolved from the index only when pyproject.toml changes
# (wheels/deps-<hash of pyproject.toml>), plus the `shardset` wheel of H, built
# offline from the shared wheelhouse (which also holds the build backend).
repo_wheels() {
  local ref=$1 hash=$2 dir="${SHARDSET_CACHE}/wheels/$2" house="${SHARDSET_CACHE}/wheelhouse"
  if [[ -f "${dir}/.done" ]]; then echo "${dir}"; return; fi
  local tree deps
  tree=$(mktemp -d)
  export_sources "${ref}" "${tree}"
  deps="${SHARDSET_CACHE}/wheels/deps-$(sha256sum <"${tree}/pyproject.toml" | cut -c1-16)"
  mkdir -p "${house}"
  if [[ ! -f "${deps}/.done" ]]; then
    rm -rf "${deps}" && mkdir -p "${deps}"
    # offline from the shared wheelhouse when it has everything, else from the index
    if "${PIP_NICE[@]}" python3 -m pip wheel -q --no-index --find-links "${house}" \
      --wheel-dir "${deps}" "${tree}" >/dev/null 2>&1; then
      log "dependencies of pyproject.toml: all in ${house}"
    else
      log "resolving the dependencies of pyproject.toml into ${deps} (package index)"
      "${PIP_NICE[@]}" python3 -m pip wheel -q --find-links "${house}" --wheel-dir "${deps}" "${tree}" >&2
    fi
    "${PIP_NICE[@]}" python3 -m pip wheel -q --find-links "${house}" --wheel-dir "${house}" \
      "setuptools>=69" wheel >&2
    rm -f "${deps}"/shardset-*.whl
    find "${deps}" -name '*.whl' -exec cp -n {} "${house}/" \;
    touch "${deps}/.done"
  fi
  log "building the shardset wheel of ${ref:-the working tree} (${hash}), offline"
  rm -rf "${dir}" && mkdir -p "${dir}"
  "${PIP_NICE[@]}" python3 -m pip wheel -q --no-deps --no-index --find-links "${house}" \
    --wheel-dir "${dir}" "${tree}" >&2
  rm -rf "${tree}"
  cp "${deps}"/*.whl "${dir}/"
  touch "${dir}/.done"
  # keep the five newest wheel sets of our sources
  find "${SHARDSET_CACHE}/wheels" -mindepth 1 -maxdepth 1 -type d ! -name 'deps-*' -printf '%T@ %p\n' |
    sort -rn | tail -n +6 | cut -d' ' -f2- | xargs -r rm -rf
  echo "${dir}"
}

# check_nonroot IMAGE: the image runs as a numeric, non-root user. Pod Security
# `restricted` needs runAsNonRoot, which the kubelet can only verify for a numeric
# USER (the node image: 10001, whose data dir the pods get through fsGroup; the
# operator's: 10002). Reads the image's config only: no effect on the build cache.
check_nonroot() {
  local user uid
  user=$("${DOCKER}" image inspect -f '{{.Config.User}}' "$1")
  uid=${user%%:*}
  [[ "${uid}" =~ ^[0-9]+$ && "${uid}" != 0 ]] ||
    die "$1 runs as user '${user}': Pod Security restricted needs a numeric non-root USER"
}

# repo_image IMAGE DOCKERFILE REF: builds IMAGE from the wheelhouse of REF's
# sources (empty: the working tree) unless an image with the same inputs exists.
repo_image() {
  local image=$1 dockerfile=$2 ref=$3
  [[ -f "${dockerfile}" ]] || die "no ${dockerfile}"
  build_base
  local shash base_id key wheels ctx start
  source_hash_memo "${ref}"
  shash=${SOURCE_HASHES[x${ref}]}
  base_id=$("${DOCKER}" image inspect -f '{{.Id}}' "${BASE_IMAGE}" 2>/dev/null || echo "${BASE_IMAGE}")
  key=$(printf '%s %s %s' "${shash}" "$(sha256sum <"${dockerfile}" | cut -c1-64)" "${base_id}" | sha256sum | cut -c1-16)
  if [[ "$("${DOCKER}" image inspect -f '{{index .Config.Labels "shardset.inputs"}}' "${image}" 2>/dev/null)" == "${key}" ]]; then
    log "${image}: up to date (inputs ${key})"
    check_nonroot "${image}"
    save_image "${image}"
    return
  fi
  start=$(date +%s)
  wheels=$(repo_wheels "${ref}" "${shash}")
  ctx=$(mktemp -d)
  cp "${dockerfile}" "${ctx}/Dockerfile"
  cp -a "${wheels}" "${ctx}/wheels"
  log "building ${image} from ${ref:-the working tree} (inputs ${key})"
  "${PIP_NICE[@]}" "${DOCKER}" build -q --network none --build-arg "BASE_IMAGE=${BASE_IMAGE}" \
    --label "shardset.inputs=${key}" --label "shardset.source=${shash}" \
    -t "${image}" "${ctx}" >/dev/null
  rm -rf "${ctx}"
  echo "$(date -u +%FT%TZ) image-${image} $(($(date +%s) - start))s" >>"${SHARDSET_CACHE}/build-times.log"
  check_nonroot "${image}"
  save_image "${image}"
}

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
    node) # the node program, from the repository's wheelhouse
      repo_image "${NODE_IMAGE}" "${REPO_ROOT}/node-image/Dockerfile" "${NODE_REF:-}" ;;
    operator) # the Kopf operator, from the same wheelhouse
      repo_image "${OPERATOR_IMAGE}" "${REPO_ROOT}/operator/Dockerfile" "${OPERATOR_REF:-}" ;;
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
