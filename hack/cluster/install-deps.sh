#!/usr/bin/env bash
# Installs the local cluster's runtime dependencies from Debian's packages.
# Idempotent: packages already installed are skipped by apt.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(
  containerd runc containernetworking-plugins   # container runtime + CNI plugins
  iptables conntrack socat ebtables ethtool iproute2 kmod util-linux mount  # kubelet / kube-proxy
  debootstrap docker.io                          # offline image builds
  ca-certificates curl python3
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "install-deps: needs root (missing: ${missing[*]})" >&2; exit 1; }
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian's containerd/docker packages may try to start services; the cluster
# scripts start their own daemons, so nothing else is needed here.
