#!/usr/bin/env bash
# Installs what hvd-dqn needs and is missing: Open MPI (apt), a venv in .venv/, TensorFlow, tf-keras,
# then Horovod built against them (TensorFlow + MPI + Gloo), then this package with its test and minatar extras.
# Idempotent: a stamp in .venv/ records the inputs of the last successful install; nothing is redone
# while they are unchanged. Versions and the reasons for them: see README "Install".
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TF_VERSION=2.18.1
TF_KERAS_VERSION=2.18.0
HOROVOD_VERSION=0.28.1
STAMP="$VENV/.hvd-dqn-installed"
want_stamp="tf=$TF_VERSION tfk=$TF_KERAS_VERSION hvd=$HOROVOD_VERSION $(sha1sum setup.cfg | cut -c1-12)"

log() { echo "[install] $*" >&2; }

apt_install() {  # apt_install PKG... : install the Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}; install them as root (apt-get install -y ${missing[*]})"; exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

if [ "${1:-}" = "--slurm" ]; then  # the test suite's local SLURM cluster
  apt_install slurm-wlm munge
  exit 0
fi

command -v mpirun >/dev/null 2>&1 && [ -e /usr/include/x86_64-linux-gnu/mpi.h -o -n "$(command -v mpicc)" ] \
  || apt_install openmpi-bin libopenmpi-dev

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
export PIP_NO_WARN_SCRIPT_LOCATION=1
"${PIP[@]}" --upgrade pip setuptools wheel
# TensorFlow first: Horovod's build compiles against the installed TensorFlow's headers.
"${PIP[@]}" "tensorflow==$TF_VERSION" "tf-keras==$TF_KERAS_VERSION"
if ! "$VENV/bin/python" -c "import horovod.tensorflow" >/dev/null 2>&1 \
   || [ "$("$VENV/bin/python" -c 'import horovod; print(horovod.__version__)')" != "$HOROVOD_VERSION" ]; then
  log "building horovod $HOROVOD_VERSION (a few minutes)"
  # GPU clusters add HOROVOD_GPU_OPERATIONS=NCCL (see README "Install", and docs/cluster.md "GPU clusters").
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "${PIP[@]}" --no-build-isolation "horovod==$HOROVOD_VERSION"
fi
# the test suite's MinAtar tests need the optional (GPL-3) minatar extra; `pip install -e .` alone leaves it out
"${PIP[@]}" -e ".[test,minatar]"
# the whole output first: `horovodrun --check-build | grep -q` lets grep exit at its match, and horovodrun, still
# printing, dies of a broken pipe (under pipefail the install then fails on a good build)
build_check=$("$VENV/bin/horovodrun" --check-build 2>&1) || true
grep -q "\[X\] TensorFlow" <<<"$build_check" || { log "horovod was built without TensorFlow"; exit 1; }
echo "$want_stamp" > "$STAMP"
log "done"
