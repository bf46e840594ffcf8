"""A clean terminal: TensorFlow's CUDA-plugin registration errors and XLA start-up lines (written through absl
before it is initialised, so TF_CPP_MIN_LOG_LEVEL cannot silence them) are filtered from fd 2 while TensorFlow is
first imported; everything else, a real error, an ImportError and what a crashing import wrote, still shows."""

import json
import os
import sys

import pytest

from conftest import BIN, ROOT, run, run_env
from hvd_dqn.quiet import is_noise

# As TensorFlow 2.18.1 wrote them on this CPU host (no CUDA driver), with and without TF_CPP_MIN_LOG_LEVEL=3.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "E0000 00:00:1796207470.914195    7637 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
    "register factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1796207470.917991    7637 cuda_blas.cc:1418] Unable to register cuBLAS factory: Attempting to "
    "register factory for plugin cuBLAS when one has already been registered",
    "2026-12-02 10:31:38.510802: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:477] Unable to register "
    "cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered",
    "E0000 00:00:1796207470.9    7637 computation_placer.cc:97] computation placer already registered. Please "
    "check linkage and avoid linking the same target more than once.",
    "I0000 00:00:1796207474.532483    7637 service.cc:148] XLA service 0x563e6bb69090 initialized for platform Host "
    "(this does not guarantee that XLA will be used). Devices:",
    "I0000 00:00:1796207474.532530    7637 service.cc:156]   StreamExecutor device (0): Host, Default Version",
    "I0000 00:00:1796207475.525414    7637 device_compiler.h:188] Compiled cluster using XLA!  This line is logged "
    "at most once for the lifetime of the process.",
]
REAL = [
    "hvd-dqn: error: config file not found: x.yaml",
    "E0000 00:00:1796207470.914195    7637 cuda_executor.cc:1228] failed call to cuInit: INTERNAL: CUDA error",
    "2026-12-02 10:31:38.485308: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers "
    "on your machine, GPU will not be used.",
    "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory",
    "my env says: Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has "
    "already been registered",
    "W0000 00:00:1796207470.9    7637 op_level_cost_estimator.cc:699] Error in PredictCost() for the op",
]


@pytest.mark.parametrize("line", NOISE)
def test_the_noise_is_recognised(line):
    assert is_noise(line)


@pytest.mark.parametrize("line", REAL)
def test_anything_else_is_kept(line):
    assert not is_noise(line)


def _fake_tensorflow(tmp_path, body: str):
    """A package named tensorflow whose import writes to fd 2 as TensorFlow's C++ does, then runs ``body``."""
    pkg = tmp_path / "fake" / "tensorflow"
    pkg.mkdir(parents=True)
    lines = "".join(line + "\n" for line in [NOISE[0], REAL[0], NOISE[1], REAL[1]])
    (pkg / "__init__.py").write_text(f"import os\nos.write(2, {lines.encode()!r})\n{body}\n")
    return tmp_path / "fake"


def _import_quietly(fake, code="import tensorflow"):
    env = run_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}")
    return run(
        [sys.executable, "-c", f"from hvd_dqn import quiet\nquiet.install()\n{code}"], timeout=60, env=env, cwd=None
    )


def test_a_filtered_import_keeps_the_real_lines_in_order(tmp_path):
    proc = _import_quietly(
        _fake_tensorflow(tmp_path, "import sys\nprint('python warning', file=sys.stderr)"),
        "import tensorflow\nimport sys\nprint('after', file=sys.stderr)",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [REAL[0], REAL[1], "python warning", "after"]


def test_an_import_error_still_shows(tmp_path):
    proc = _import_quietly(
        _fake_tensorflow(tmp_path, "raise ImportError('libcudart.so.12: cannot open shared object file')")
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[:2] == [REAL[0], REAL[1]] and lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ImportError: libcudart.so.12: cannot open shared object file"
    assert not any(is_noise(line) for line in lines)


def test_what_a_crashing_import_wrote_still_shows(tmp_path):
    proc = _import_quietly(_fake_tensorflow(tmp_path, "os.write(2, b'fatal: about to abort\\n')\nos.abort()"))
    assert proc.returncode == -6  # SIGABRT
    assert proc.stderr.splitlines() == [REAL[0], REAL[1], "fatal: about to abort"]


def test_a_stop_signal_to_the_whole_job_during_the_import_loses_nothing(tmp_path):
    """SLURM signals every process of a job step, Ctrl-C the whole process group: the filter outlives it. (The
    rank handles the signals, as the trainer does; a handler, unlike SIG_IGN, is not inherited by the filter.)"""
    fake = _fake_tensorflow(
        tmp_path,
        "import signal, time\nfor sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):"
        "\n    os.killpg(0, sig)\ntime.sleep(0.5)\nos.write(2, b'still here\\n')",
    )
    code = (
        "import signal\nfor sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):\n"
        "    signal.signal(sig, lambda *_: None)\nfrom hvd_dqn import quiet\nquiet.install()\nimport tensorflow"
    )
    proc = run([sys.executable, "-c", code], timeout=60, env=run_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}"), cwd=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [REAL[0], REAL[1], "still here"]


def test_the_filtered_import_leaves_the_thread_pools_to_be_sized():
    """The filter starts no TensorFlow runtime, so hvd_dqn.distributed can still give each rank of a host its
    share of the cores. (An XLA warm-up inside the import once started it: each of 2 ranks on 2 cores then ran
    TensorFlow's default 2 + 2 threads, and np=2 ran slower: docs/update-cost.md.)"""
    code = (
        "from hvd_dqn import quiet\nquiet.install()\nimport tensorflow as tf\nfrom hvd_dqn import distributed\n"
        "distributed._configure_devices(distributed.World(rank=0, size=2, local_rank=0, local_size=2))\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads())"
    )
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert proc.stdout.split() == [str(share), str(min(2, share))]


# ------------------------------------------------------------------ the real thing, as a user runs it
def _user_env(**extra):
    """A user's shell: no TF_CPP_MIN_LOG_LEVEL (the suite sets it)."""
    env = run_env(**extra)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _tiny(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "env_id: CartPole-v1\ntotal_env_steps: 600\nhidden_sizes: [16, 16]\nlearning_starts: 300\n"
        "train_every: 100\nupdates_per_train: 10\ntarget_update_every: 20\neval_every: 600\n"
        "eval_episodes: 2\nlog_every: 300\nbatch_size: 32\nreplay_capacity: 2000\n"
    )
    return cfg


def test_a_cpu_run_on_one_rank_writes_nothing_on_stderr(tmp_path):
    run_dir = tmp_path / "run"
    proc = run(
        [BIN / "hvd-dqn", "train", "--config", _tiny(tmp_path), "--run-dir", run_dir], timeout=300, env=_user_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1].startswith("hvd-dqn summary: ")
    # np=1 compiles its learning phase with XLA: the start-up lines of that were spent inside the filter
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 40  # 4 phases of 10 updates


def test_the_horovodrun_launcher_writes_nothing_on_stderr_and_our_lines_untagged(tmp_path):
    """launch/horovodrun.sh (and make train) show rank 0's lines as it prints them: no "[1,0]<stdout>:" tags
    (hvd_dqn.launchout). The ranks' own output is in it too: launchout shows any other line of a rank after
    "rank N: ", on the stream it came on, so an empty stderr and untagged stdout also say that the ranks under
    plain horovodrun --mpi (the launcher's default) write no noise: each rank sets TF_CPP_MIN_LOG_LEVEL and
    filters its TensorFlow import itself, with or without the launcher. horovodrun's own build check (in children
    of horovodrun, outside the ranks) prints noise that launchout filters."""
    proc = run(
        [ROOT / "launch" / "horovodrun.sh", _tiny(tmp_path)],
        timeout=300,
        env=_user_env(NP=2, RUN_DIR=tmp_path / "run", VIRTUAL_ENV=BIN.parent),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    lines = proc.stdout.splitlines()
    assert [line.split(" |")[0] for line in lines[:-1]] == ["hvd-dqn"] * len(rows), lines
    assert lines[-1].startswith("hvd-dqn summary: {"), lines
