#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback, for the test suite (and for trying launch/slurm.sbatch).
#
#   launch/local-slurm.sh start|stop|status
#
# start   (root) installs slurm-wlm and munge if missing (tools/install.sh --slurm), writes /etc/slurm/slurm.conf
#         (only if absent or written by this script), then starts munged, slurmctld and slurmd unless they run
#         already, and waits for the node to be idle. Idempotent.
# stop    stops exactly the daemons that `start` started (their pids are recorded in $STATE_DIR), nothing else.
# status  prints which daemons run, which of them this script started, and `sinfo`; exit 0 iff the node is up.
# Environment: STATE_DIR (default /run/hvd-dqn-slurm), LOCAL_SLURM_CPUS (default nproc).
# The cluster: one node (this host, 127.0.0.1), partition "debug", jobs run as the submitting user, no cgroups,
# no accounting database; finished jobs stay visible to `scontrol show job` for MinJobAge (1 h).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR=${STATE_DIR:-/run/hvd-dqn-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hvd-dqn launch/local-slurm.sh"
NODE=$(hostname -s)

log() { echo "[local-slurm] $*" >&2; }
die() { echo "local-slurm.sh: error: $*" >&2; exit 1; }

running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { pgrep -x "$1" | head -n1 || true; }  # a daemon of that name, whoever started it
ours() { local f=$STATE_DIR/$1.pid; [ -f "$f" ] && running "$(cat "$f")" && cat "$f"; }

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it"
  fi
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  local tmp=$CONF.tmp.$$
  cat > "$tmp" <<CONF
$MARK
ClusterName=hvd-dqn-local
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
# a requeued job waits out the old job credential before it starts again (120 s by default): the tests' requeue
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=${LOCAL_SLURM_CPUS:-$(nproc)} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  mv "$tmp" "$CONF"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs: /var/log/slurm, /var/log/munge)"
    sleep 0.5
  done
}

node_idle() { sinfo -h -n "$NODE" -o %t | grep -qE '^(idle|mix|alloc)'; }

start() {
  [ "$(id -u)" = 0 ] || die "start needs root (it starts system daemons)"
  mkdir -p "$STATE_DIR"
  local -A before=() ; local d now
  for d in munged slurmctld slurmd; do before[$d]=$(pid_of "$d"); done
  command -v slurmctld >/dev/null && command -v munged >/dev/null || bash tools/install.sh --slurm
  # Without a policy-rc.d, a package's postinst may have started daemons just now: those are ours.
  for d in munged slurmctld slurmd; do
    now=$(pid_of "$d"); [ -n "$now" ] && [ -z "${before[$d]}" ] || continue
    if [ "$d" = munged ]; then echo "$now" > "$STATE_DIR/munged.pid"
    else log "stopping the $d the package install started (it has not got our config)"; kill "$now" || true; fi
  done

  if [ -z "$(pid_of munged)" ]; then
    [ -f /etc/munge/munge.key ] || mungekey -c
    mkdir -p /run/munge && chown munge:munge /run/munge
    log "starting munged"
    su -s /bin/sh munge -c /usr/sbin/munged
    wait_for 10 munged test -s /run/munge/munged.pid
    cat /run/munge/munged.pid > "$STATE_DIR/munged.pid"
  fi
  munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge)"

  write_conf
  if [ -z "$(pid_of slurmctld)" ]; then
    log "starting slurmctld"
    rm -f "$STATE_DIR/slurmctld.pid"
    slurmctld
    wait_for 20 slurmctld test -s "$STATE_DIR/slurmctld.pid"
    touch "$STATE_DIR/slurmctld.ours"
  fi
  wait_for 20 "slurmctld to answer" scontrol ping
  if [ -z "$(pid_of slurmd)" ]; then
    log "starting slurmd"
    rm -f "$STATE_DIR/slurmd.pid"
    slurmd
    wait_for 20 slurmd test -s "$STATE_DIR/slurmd.pid"
    touch "$STATE_DIR/slurmd.ours"
  fi
  wait_for 30 "node $NODE to be idle" node_idle
  log "up: $(sinfo -h -o '%P %D %t %N')"
}

stop_one() {  # stop_one NAME: stop the daemon whose pid we recorded, wait until it is gone
  local f=$STATE_DIR/$1.pid pid
  [ -f "$f" ] || return 0
  case $1 in slurmctld|slurmd) [ -f "$STATE_DIR/$1.ours" ] || return 0 ;; esac
  pid=$(cat "$f")
  if running "$pid" && [ "$(ps -o comm= -p "$pid")" = "$1" ]; then
    log "stopping $1 ($pid)"
    kill "$pid"
    for _ in $(seq 50); do running "$pid" || break; sleep 0.2; done
    running "$pid" && { log "$1 ($pid) ignores SIGTERM; killing it"; kill -9 "$pid"; }
  fi
  rm -f "$f" "$STATE_DIR/$1.ours"
}

stop() {
  [ -d "$STATE_DIR" ] || { log "nothing started here"; return 0; }
  stop_one slurmd
  stop_one slurmctld
  stop_one munged
  rmdir "$STATE_DIR" 2>/dev/null || true
}

status() {
  local d pid up=0
  for d in munged slurmctld slurmd; do
    pid=$(pid_of "$d")
    if [ -z "$pid" ]; then echo "$d: not running"
    elif [ -n "$(ours "$d" || true)" ] && { [ "$d" = munged ] || [ -f "$STATE_DIR/$d.ours" ]; }; then
      echo "$d: running ($pid, started by local-slurm.sh)"
    else echo "$d: running ($pid, not started by local-slurm.sh)"; fi
  done
  if command -v sinfo >/dev/null && [ -n "$(pid_of slurmctld)" ] && sinfo 2>/dev/null; then
    node_idle && up=1
  fi
  [ $up = 1 ]
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: launch/local-slurm.sh start|stop|status" >&2; exit 2 ;;
esac
