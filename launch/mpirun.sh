#!/usr/bin/env bash
# Start `hvd-dqn train` on several ranks with Open MPI's mpirun, with the flags Horovod documents.
#
#   launch/mpirun.sh CONFIG [--set key=value ...]
#
# Everything after CONFIG goes to `hvd-dqn train` unchanged. Environment:
#   NP           number of ranks in total (default 2)
#   HOSTS        hosts and slots, mpirun's -H: "node1:4,node2:4" (default: this host)
#   HOSTFILE     a hostfile instead ("node1 slots=4" per line); wins over HOSTS
#   RUN_DIR      the run directory (default: hvd-dqn's runs/<env>-<time>)
#   MPIRUN_ARGS  extra mpirun options, word-split (e.g. "--mca btl_tcp_if_include eth0")
#   TIMELINE     record a Horovod timeline (Chrome trace JSON, written by rank 0) to this new file
#   AUTOTUNE_LOG run Horovod's autotuner, logging each sampled setting and its score to this new file
#   VIRTUAL_ENV  the venv holding hvd-dqn (default: this checkout's .venv, then PATH)
# Flags: -bind-to none -map-by slot (each rank gets its cores from TensorFlow's thread pools, not from MPI's
# binding), `-x` exports PATH, LD_LIBRARY_PATH, PYTHONPATH, VIRTUAL_ENV, HVD_DQN_TERM_GRACE_S and every TF_*,
# HOROVOD_* and NCCL_* variable that is set here to the ranks on every host; --allow-run-as-root only when run as
# root. hvd-dqn's test hooks (HVD_DQN_TEST_HOOKS and the faults it enables) are not production settings and are
# not exported.
# Every output line is prefixed by its rank: "[1,1]<stderr>:...".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/common.sh"
require_config "launch/mpirun.sh CONFIG [--set key=value ...]" "$@"
config=$1; shift

NP=${NP:-2}
horovod_profiling  # exports HOROVOD_*: passed on with -x below
hvd_dqn=$(find_hvd_dqn "$here/..")

args=(-np "$NP" -bind-to none -map-by slot --tag-output -mca pml ob1 -mca btl ^openib)
if [ -n "${HOSTFILE:-}" ]; then args+=(--hostfile "$HOSTFILE"); elif [ -n "${HOSTS:-}" ]; then args+=(-H "$HOSTS"); fi
[ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
for var in PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV HVD_DQN_TERM_GRACE_S \
    $(compgen -e | grep -E '^(TF_|HOROVOD_|NCCL_)' || true); do
  [ -n "${!var+set}" ] && args+=(-x "$var")
done
read -r -a extra <<< "${MPIRUN_ARGS:-}"
train=("$hvd_dqn" train --config "$config")
[ -n "${RUN_DIR:-}" ] && train+=(--run-dir "$RUN_DIR")

exec mpirun "${args[@]}" "${extra[@]}" "${train[@]}" "$@"
