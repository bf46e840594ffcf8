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
