#!/usr/bin/env bash
# Start `hvd-dqn train` on several ranks with horovodrun.
#
#   launch/horovodrun.sh CONFIG [--set key=value ...]
#
# Everything after CONFIG goes to `hvd-dqn train` unchanged. Environment:
#   NP               number of ranks in total (default 2)
#   HOSTS            hosts and slots, horovodrun's -H: "node1:4,node2:4" (default localhost:NP)
#   HOSTFILE         a hostfile instead ("node1 slots=4" per line); wins over HOSTS
#   CONTROLLER       mpi (default: lower latency per update than gloo, docs/update-cost.md) or gloo
#   RUN_DIR          the run directory (default: hvd-dqn's runs/<env>-<time>)
#   HOROVODRUN_ARGS  extra horovodrun options, word-split (e.g. "--network-interfaces eth0 --verbose")
#   TIMELINE         record a Horovod timeline (Chrome trace JSON, written by rank 0) to this new file
#   AUTOTUNE_LOG     run Horovod's autotuner, logging each sampled setting and its score to this new file
#   VIRTUAL_ENV      the venv holding hvd-dqn and horovodrun (default: this checkout's .venv, then PATH)
# Across hosts, horovodrun reaches the others by ssh (passwordless) and runs the same paths there.
# Output: rank 0's lines as it prints them; any other line of a rank (errors, tracebacks) after "rank N: "
# (hvd_dqn.launchout takes off horovodrun's "[1,1]<stderr>:" tags; where hvd-dqn's Python cannot be found,
# horovodrun runs on its own, tags and all).
# Preemption: SIGTERM or SIGUSR1 to this script is passed to the ranks on this host as SIGUSR1 (one rank's
# signal stops them all): they checkpoint and exit 75, horovodrun then exits 1 ("Exit code: 75" in its error).
# Sent to horovodrun itself (or by `timeout`), SIGTERM still stops every rank with a checkpoint: with gloo
# horovodrun gives the ranks SIGTERM and SIGKILL 5 s later; with mpi it ends alone, and each rank, watching it,
# asks for the stop itself (hvd_dqn/launcherwatch.py). Here the ranks get SIGUSR1, which has no 5 s limit.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/common.sh"
require_config "launch/horovodrun.sh CONFIG [--set key=value ...]" "$@"
config=$1; shift

NP=${NP:-2}
CONTROLLER=${CONTROLLER:-mpi}
case $CONTROLLER in gloo|mpi) ;; *) echo "hvd-dqn launcher: error: CONTROLLER must be gloo or mpi, not '$CONTROLLER'" >&2; exit 2 ;; esac
horovod_profiling
hvd_dqn=$(find_hvd_dqn "$here/..")
horovodrun=$(dirname "$hvd_dqn")/horovodrun
[ -x "$horovodrun" ] || horovodrun=horovodrun

args=(-np "$NP" "--$CONTROLLER")
if [ -n "${HOSTFILE:-}" ]; then args+=(--hostfile "$HOSTFILE"); else args+=(-H "${HOSTS:-localhost:$NP}"); fi
read -r -a extra <<< "${HOROVODRUN_ARGS:-}"
train=("$hvd_dqn" train --config "$config")
[ -n "${RUN_DIR:-}" ] && train+=(--run-dir "$RUN_DIR")

# hvd_dqn.launchout shows the job's output untagged, and drops the CUDA-plugin noise that horovodrun's check of
# its build (children that import TensorFlow) prints on a CPU host; it runs under the Python that hvd-dqn's own
# script names
shown=()
read -r shebang < "$hvd_dqn" || true
python=${shebang#\#!}
if [ "$python" != "$shebang" ] && [ -x "$python" ]; then
  shown=("$python" -m hvd_dqn.launchout)
fi
"${shown[@]}" "$horovodrun" "${args[@]}" "${extra[@]}" "${train[@]}" "$@" &
launcher=$!

ranks() {  # the ranks among the launcher's descendants: Python running the hvd-dqn script (not the shells that
  # start them, nor horovodrun, its forked helpers or hvd_dqn.launchout, whose command lines name hvd-dqn too)
  local child argv
  for child in $(pgrep -P "$1"); do
    argv=()
    mapfile -d '' -t argv 2>/dev/null < "/proc/$child/cmdline" || true
    case ${argv[0]:-} in *python*) [ "$(basename -- "${argv[1]:-}")" = hvd-dqn ] && echo "$child" ;; esac
    ranks "$child"
  done
}
forward() {
  echo "hvd-dqn launcher: SIG$1: asking the ranks to checkpoint and stop" >&2
  local pid
  for pid in $(ranks "$launcher"); do kill -USR1 "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
while :; do  # a trapped signal interrupts wait; wait again until horovodrun itself has ended
  status=0
  wait "$launcher" || status=$?
  kill -0 "$launcher" 2>/dev/null || break
done
exit "$status"
