# Sourced by the launchers in this directory: argument checks and finding the hvd-dqn executable.
# Not a launcher itself.

usage_and_exit() {  # usage_and_exit USAGE
  echo "usage: $1" >&2
  exit 2
}

# require_config USAGE "$@": the first argument must be an existing config file.
require_config() {
  local usage=$1; shift
  [ $# -ge 1 ] || usage_and_exit "$usage"
  case $1 in -h|--help) usage_and_exit "$usage" ;; esac
  [ -f "$1" ] || { echo "hvd-dqn launcher: error: config file not found: $1" >&2; exit 2; }
}

# find_hvd_dqn REPO_DIR: print the hvd-dqn executable: $VIRTUAL_ENV's, else REPO_DIR/.venv's, else PATH's.
find_hvd_dqn() {
  local venv
  for venv in "${VIRTUAL_ENV:-}" "$1/.venv"; do
    if [ -n "$venv" ] && [ -x "$venv/bin/hvd-dqn" ]; then echo "$venv/bin/hvd-dqn"; return 0; fi
  done
  command -v hvd-dqn && return 0
  echo "hvd-dqn launcher: error: no hvd-dqn found (set VIRTUAL_ENV, or run 'make install' for $1/.venv)" >&2
  exit 2
}

# horovod_profiling: Horovod's timeline and autotuner for the ranks, from the launchers' TIMELINE=FILE and
# AUTOTUNE_LOG=FILE, as the HOROVOD_* variables Horovod reads at hvd.init() (on rank 0, which writes both files).
# Paths are made absolute (ranks may start elsewhere); a file that exists is refused, since Horovod would
# truncate it; the directory must exist.
horovod_profiling() {
  local var path
  for var in TIMELINE AUTOTUNE_LOG; do
    [ -n "${!var:-}" ] || continue
    path=$(realpath -m -- "${!var}")
    if [ -e "$path" ]; then
      echo "hvd-dqn launcher: error: $var file $path exists (Horovod would overwrite it): give a new path" >&2; exit 2
    fi
    if [ ! -d "$(dirname "$path")" ]; then
      echo "hvd-dqn launcher: error: $var: no directory $(dirname "$path")" >&2; exit 2
    fi
    if [ "$var" = TIMELINE ]; then
      export HOROVOD_TIMELINE=$path
    else
      export HOROVOD_AUTOTUNE=1 HOROVOD_AUTOTUNE_LOG=$path
    fi
  done
  return 0
}

# Open MPI's mpirun SIGKILLs its ranks 1 s after it is itself SIGTERMed (`timeout N horovodrun --mpi ...` signals
# mpirun too), too soon for the ranks to agree on the stop and write a checkpoint; 10 s leaves them the time and
# still ends a hung rank. A value the user set wins.
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-10}
