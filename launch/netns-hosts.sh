#!/usr/bin/env bash
# Two test "hosts" on this machine: network namespaces hvdA (10.250.0.1) and hvdB (10.250.0.2) joined by a veth
# pair, each with its own network stack, named in /etc/hosts. mpirun reaches them with launch/netns-agent.sh as
# its launch agent instead of ssh (see tests/test_launchers.py). Root only.
#
#   launch/netns-hosts.sh up|down|status
#
# up is idempotent; down deletes the namespaces (the veth pair goes with them) and the /etc/hosts lines it added.
set -euo pipefail
MARK="# hvd-dqn netns test host"
declare -A ADDR=([hvdA]=10.250.0.1 [hvdB]=10.250.0.2)
die() { echo "netns-hosts.sh: error: $*" >&2; exit 1; }

exists() { ip netns list | grep -qw "$1"; }

up() {
  [ "$(id -u)" = 0 ] || die "needs root"
  if ! exists hvdA || ! exists hvdB; then
    down
    ip netns add hvdA
    ip netns add hvdB
    ip link add vhvdA type veth peer name vhvdB
    for h in hvdA hvdB; do
      ip link set "v$h" netns "$h"
      ip -n "$h" addr add "${ADDR[$h]}/24" dev "v$h"
      ip -n "$h" link set lo up
      ip -n "$h" link set "v$h" up
    done
  fi
  for h in hvdA hvdB; do
    grep -qE "^${ADDR[$h]} $h " /etc/hosts || echo "${ADDR[$h]} $h $MARK" >> /etc/hosts
  done
}

down() {
  for h in hvdA hvdB; do exists "$h" && ip netns del "$h"; done
  if grep -qF "$MARK" /etc/hosts; then
    # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replacing the file
    grep -vF "$MARK" /etc/hosts > /etc/hosts.hvd-dqn.tmp || true
    cat /etc/hosts.hvd-dqn.tmp > /etc/hosts && rm -f /etc/hosts.hvd-dqn.tmp
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) exists hvdA && exists hvdB && echo "hvdA ${ADDR[hvdA]}, hvdB ${ADDR[hvdB]}: up" || { echo down; exit 1; } ;;
  *) echo "usage: launch/netns-hosts.sh up|down|status" >&2; exit 2 ;;
esac
