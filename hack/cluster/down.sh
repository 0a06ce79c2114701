#!/usr/bin/env bash
# Tears down what up.sh made: every process (by the pid files it wrote, and the
# containerd shims of its containerd), every mount under its state, the
# container network namespaces, its interfaces (bridge, veths, dummy), its
# iptables rules (kube-proxy's, CNI's, ours), then its state directory (logs are
# kept in ${STATE_DIR}.last-logs). Idempotent: safe to run any number of times.
# The build cache and the images are left alone; so is dockerd.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUIET=""
[[ "${1:-}" == "--quiet" ]] && QUIET=1
say() { [[ -n "${QUIET}" ]] || log "$@"; }
[[ $(id -u) -eq 0 ]] || die "down.sh needs root"

CTRD_SOCK="${RUN_DIR}/containerd.sock"
CTRD_STATE="/run/shardset-containerd"

stop_pids() { # NAME...: TERM all, then KILL what is left after 10s
  local n f pid pids=() i
  for n in "$@"; do
    f="${RUN_DIR}/${n}.pid"
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    if kill -0 "${pid}" 2>/dev/null; then
      say "stopping ${n} (pid ${pid})"
      kill "${pid}" 2>/dev/null || true
      pids+=("${pid}")
    fi
    rm -f "$f"
  done
  for ((i = 0; i < 100; i++)); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "${pid}" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "${pid}" 2>/dev/null || true; done
}

# 1. The node first, so nothing restarts what we stop.
stop_pids provisioner kubelet kube-proxy

# 2. Containers: kill every task of our containerd, then its shims.
NETNS=()
if [[ -S "${CTRD_SOCK}" ]] && command -v ctr >/dev/null; then
  CTR=(ctr --address "${CTRD_SOCK}" --namespace k8s.io)
  # the pod network namespaces (pinned by containerd at /run/netns/cni-*)
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
    ns=$("${CTR[@]}" containers info "$c" 2>/dev/null | python3 -c '
import json, sys
spec = json.load(sys.stdin).get("Spec") or {}
for n in (spec.get("linux") or {}).get("namespaces") or []:
    if n.get("type") == "network" and n.get("path", "").startswith(("/var/run/netns/", "/run/netns/")):
        print(n["path"])' 2>/dev/null) || true
    [[ -n "${ns}" ]] && NETNS+=("${ns}")
  done
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
    "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 1
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
    "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true
  done
fi
stop_pids containerd
# Shims outlive containerd; ours are the ones started with our socket address.
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
  if [[ "${cmd}" == *containerd-shim* && "${cmd}" == *"${CTRD_SOCK}"* ]]; then
    say "killing shim ${p#/proc/}"
    kill -9 "${p#/proc/}" 2>/dev/null || true
  fi
done

# 3. Control plane.
stop_pids kube-scheduler kube-controller-manager kube-apiserver
stop_pids etcd

# 4. Mounts under our state (pod volumes, rootfs overlays, netns bind mounts).
umount_under() { # PREFIX: unmounts, deepest first
  local m
  awk '{print $2}' /proc/self/mounts | sed 's/\\040/ /g' | { grep -E "^$1(/|$)" || true; } | sort -r | while read -r m; do
    umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
  done
}
umount_under "${STATE_DIR}"
umount_under "${CTRD_STATE}"
# containerd's CRI pins each pod network namespace at /run/netns/cni-<uuid>;
# deleting it takes the pod's veth (and so its peer on our bridge) with it.
for ns in $(printf '%s\n' "${NETNS[@]}" | sort -u); do
  [[ -e "${ns}" ]] || continue
  say "removing netns ${ns##*/}"
  umount "${ns}" 2>/dev/null || umount -l "${ns}" 2>/dev/null || true
  rm -f "${ns}"
done

# The kubelet links container logs into /var/log/containers whatever its podLogsDir.
for l in /var/log/containers/*.log; do
  [[ -L "${l}" && "$(readlink "${l}")" == "${STATE_DIR}/"* ]] && rm -f "${l}"
done
[[ -f "${RUN_DIR}/created-var-log-containers" ]] && { rmdir /var/log/containers 2>/dev/null || true; }

# 5. Interfaces: the pod bridge (veths go with their namespaces), the dummy.
for l in $(ip -o link show master "${CNI_BRIDGE}" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link delete "${l}" 2>/dev/null || true
done
ip link show "${CNI_BRIDGE}" >/dev/null 2>&1 && { say "deleting ${CNI_BRIDGE}"; ip link delete "${CNI_BRIDGE}"; }
ip link show "${NODE_IFACE}" >/dev/null 2>&1 && { say "deleting ${NODE_IFACE}"; ip link delete "${NODE_IFACE}"; }

# 6. iptables: kube-proxy's KUBE-* chains, CNI's CNI-* chains, our SHARDSET-*.
ours='^(KUBE-|CNI-|SHARDSET-)'
for table in filter nat mangle raw; do
  rules=$(iptables -t "${table}" -S 2>/dev/null) || continue
  # jumps into our chains from any chain that is not ours
  { echo "${rules}" | grep -E -- "^-A [^ ]+ .*-j (KUBE-|CNI-|SHARDSET-)" | grep -vE -- "^-A (KUBE-|CNI-|SHARDSET-)" || true; } |
    while read -r rule; do
      # shellcheck disable=SC2086
      eval iptables -t "${table}" ${rule/-A/-D} 2>/dev/null || true
    done
  chains=$(echo "${rules}" | awk '$1 == "-N" {print $2}' | grep -E "${ours}" || true)
  for c in ${chains}; do iptables -t "${table}" -F "${c}" 2>/dev/null || true; done
  for c in ${chains}; do iptables -t "${table}" -X "${c}" 2>/dev/null || true; done
done
# kube-proxy also writes ip6tables chains on dual-stack hosts.
for table in filter nat mangle; do
  rules=$(ip6tables -t "${table}" -S 2>/dev/null) || continue
  { echo "${rules}" | grep -E -- "^-A [^ ]+ .*-j (KUBE-|CNI-)" | grep -vE -- "^-A (KUBE-|CNI-)" || true; } |
    while read -r rule; do
      # shellcheck disable=SC2086
      eval ip6tables -t "${table}" ${rule/-A/-D} 2>/dev/null || true
    done
  chains=$(echo "${rules}" | awk '$1 == "-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true)
  for c in ${chains}; do ip6tables -t "${table}" -F "${c}" 2>/dev/null || true; done
  for c in ${chains}; do ip6tables -t "${table}" -X "${c}" 2>/dev/null || true; done
done

# 7. sysctl we changed.
if [[ -f "${RUN_DIR}/ip_forward.orig" ]]; then
  sysctl -qw "net.ipv4.ip_forward=$(cat "${RUN_DIR}/ip_forward.orig")" || true
fi

# 8. State (keep the logs of the last run for post-mortems).
if [[ -d "${STATE_DIR}" ]]; then
  if [[ -d "${LOG_DIR}" ]]; then
    rm -rf "${STATE_DIR}.last-logs"
    mv "${LOG_DIR}" "${STATE_DIR}.last-logs"
  fi
  rm -rf --one-file-system "${STATE_DIR}"
fi
rm -rf "${CTRD_STATE}"
say "cluster down"
