import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hvd_dqn, even where the venv's editable install points elsewhere
BIN = Path(sys.executable).parent
# the suite's launches of horovodrun: the installed one, its build check asked once per suite run (tests/bin says how)
HOROVODRUN = ROOT / "tests" / "bin" / "horovodrun"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# the fault-injection switches of hvd_dqn.testing.faults (HVD_DQN_FAULT, ...) work in this suite, in process and
# in every child; a test of a production job unsets it
os.environ.setdefault("HVD_DQN_TEST_HOOKS", "1")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    """SIGTERM (a CI job cancelled, `kill`, `timeout`) stops the suite as Ctrl-C does, so the fixtures' teardown
    still runs: by default SIGTERM kills pytest outright, which leaves the loopback SLURM's daemons and network
    namespaces up and the runs of the test in progress training. And tests/bin/horovodrun's answer to its build
    check is kept for the suite run in a temp dir of its own, removed at the end."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    if "HVD_DQN_TEST_HOROVOD_BUILT" not in os.environ:
        config._horovod_built_dir = tempfile.mkdtemp(prefix="hvd-dqn-suite-")
        os.environ["HVD_DQN_TEST_HOROVOD_BUILT"] = os.path.join(config._horovod_built_dir, "built.json")
    if os.environ.get("HVD_DQN_SUITE_PROFILE"):
        _start_profile(config)


_PROFILE_SITE = """\
import atexit, json, os, resource, sys, time
_out = os.environ.get("HVD_DQN_SUITE_PROFILE")
_start = time.time()
def _record():
    if not _out:
        return
    use = resource.getrusage(resource.RUSAGE_SELF)
    row = {"pid": os.getpid(), "test": os.environ.get("PYTEST_CURRENT_TEST", ""), "argv": sys.argv[:4],
           "wall_s": round(time.time() - _start, 3), "cpu_s": round(use.ru_utime + use.ru_stime, 3)}
    with open(os.path.join(_out, "processes.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\\n")
atexit.register(_record)
"""


def _start_profile(config):
    """With HVD_DQN_SUITE_PROFILE=DIR: where the suite's time goes, for tools/suite_profile.py. Per test, the wall
    and CPU seconds of this process and of the children it reaped (tests.jsonl); per Python process the suite
    starts, its command and CPU seconds at a normal exit (processes.jsonl, written by a sitecustomize put first on
    every child's PYTHONPATH). A process killed by a signal writes no row there; its parent's reaping still
    counts it in tests.jsonl."""
    out = Path(os.environ["HVD_DQN_SUITE_PROFILE"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="hvd-dqn-profile-"))
    (site / "sitecustomize.py").write_text(_PROFILE_SITE)
    config._profile_site = site
    os.environ["HVD_DQN_SUITE_PROFILE"] = str(out)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    out = os.environ.get("HVD_DQN_SUITE_PROFILE")
    if not out:
        yield
        return
    import resource
    import time

    def cpu():
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    wall0, (own0, kids0) = time.time(), cpu()
    yield
    own1, kids1 = cpu()
    row = {
        "test": item.nodeid,
        "wall_s": round(time.time() - wall0, 3),
        "cpu_s": round(own1 - own0, 3),
        "children_cpu_s": round(kids1 - kids0, 3),
    }
    with open(os.path.join(out, "tests.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def pytest_unconfigure(config):
    built_dir = getattr(config, "_horovod_built_dir", None)
    if built_dir:
        shutil.rmtree(built_dir, ignore_errors=True)
        os.environ.pop("HVD_DQN_TEST_HOROVOD_BUILT", None)
    site = getattr(config, "_profile_site", None)
    if site:
        shutil.rmtree(site, ignore_errors=True)


# Once a rank exits non-zero (a failure, or 75 after a stop), Open MPI 4.1's mpirun sleeps its sigkill timeout twice
# before it ends, even when every rank has already exited: at launch/common.sh's 10 s, about 19 s more per job
# (docs/checkpoints.md). The env of the suite's mpirun jobs that end so and test no grace after a SIGTERM (the
# timeout-mpi case of test_job_safety does, with the 10 s): the launcher still ends the job, in about 1 s.
QUICK_MPIRUN_END = {"OMPI_MCA_odls_base_sigkill_timeout": 1}


def run_env(**extra) -> dict:
    """Environment for child processes: this checkout first on the path (works from a git worktree too)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop("HVD_DQN_FAULT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, timeout=300, *, env=None, cwd=ROOT, check=False, **env_extra) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: a timeout, Ctrl-C or SIGTERM of the suite ends the command and
    everything it started (a launcher's horovodrun, mpirun and ranks), where subprocess.run kills the command only.
    ``env``: the whole environment (default: ``run_env(**env_extra)``); ``check``: raise CalledProcessError on a
    non-zero exit, as subprocess.run(check=True)."""
    args = [str(c) for c in cmd]
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(**env_extra) if env is None else env,
        cwd=cwd,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            kill_session(proc)
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


@contextlib.contextmanager
def started(cmd, *, output=None, env=None, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **env_extra):
    """A command in a session of its own, for a test that needs its live handle (to signal it, to read its
    output as it comes): ``with started(cmd) as proc:``. Its stdout and stderr go to one text pipe, or to the file
    ``output``. Leaving the block, normally, on a failed assertion, a timeout, Ctrl-C or the suite's SIGTERM,
    kills whatever of the session is left (the command, a launcher's mpirun and ranks) and reaps the command."""
    args = [str(c) for c in cmd]
    env = run_env(**env_extra) if env is None else env
    with contextlib.ExitStack() as stack:
        if output is not None:
            stdout = stack.enter_context(open(output, "w"))
            stderr = subprocess.STDOUT
        proc = stack.enter_context(
            subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True, env=env, cwd=cwd, start_new_session=True)
        )
        try:
            yield proc
        except BaseException:
            kill_session(proc)
            raise
        kill_session(proc)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL to the session that ``proc`` leads (its process group: what it started, unless that left it) and,
    while ``proc`` runs, to all its descendants (horovodrun --gloo starts each rank's shell in a session of its
    own)."""
    descendants = []
    if proc.poll() is None:  # not reaped: its pid is still its own
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):  # the whole group had already gone
        os.killpg(proc.pid, signal.SIGKILL)
    for p in descendants:
        with contextlib.suppress(psutil.Error):
            p.kill()


def main_here(capsys, *args) -> subprocess.CompletedProcess:
    """``hvd-dqn *args`` through cli.main in this process, for refusals that need no process of their own: its
    exit code (argparse's SystemExit too) and what it wrote (``capsys``'s capture), as a CompletedProcess."""
    from hvd_dqn import cli

    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess([str(a) for a in args], code, out.out, out.err)


@pytest.fixture
def tiny_cartpole(tmp_path):
    """A CartPole config small enough for seconds, big enough for several learning phases."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "\n".join(
            [
                "env_id: CartPole-v1",
                "total_env_steps: 3000",
                "hidden_sizes: [32, 32]",
                "learning_starts: 500",
                "train_every: 200",
                "updates_per_train: 20",
                "target_update_every: 50",
                "eval_every: 1500",
                "eval_episodes: 10",
                "log_every: 1000",
                "batch_size: 32",
                "replay_capacity: 5000",
            ]
        )
        + "\n"
    )
    return cfg


# the smallest run that learns at all: 25 updates (5 at each of 200, 300, 400, 500, 600 env steps), no checkpoint
SMOKE = dict(
    env_id="CartPole-v1",
    seed=3,
    total_env_steps=600,
    hidden_sizes=(8,),
    learning_starts=200,
    train_every=100,
    updates_per_train=5,
    target_update_every=10,
    eval_every=600,
    eval_episodes=1,
    log_every=600,
    batch_size=16,
    replay_capacity=1000,
    checkpoint_every_minutes=None,
)

# a short one-rank run with checkpoints (every 400 steps, the newest 2 kept), an evaluation at 600 and 1200 and a
# log row every 300 steps: trained once per session by ``tiny_run`` for the tests that read or copy a finished run dir
TINY_RUN = dict(
    env_id="CartPole-v1",
    seed=3,
    total_env_steps=1200,
    hidden_sizes=(16, 16),
    learning_starts=300,
    train_every=100,
    updates_per_train=10,
    target_update_every=20,
    eval_every=600,
    eval_episodes=2,
    log_every=300,
    batch_size=32,
    replay_capacity=2000,
    checkpoint_every=400,
    keep_checkpoints=2,
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The run dir of TINY_RUN trained to its end (in this process): read it, or copy it before changing it."""
    from hvd_dqn import Config, Trainer

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    Trainer(Config(**TINY_RUN), run_dir=run_dir).train()
    return run_dir


@pytest.fixture(autouse=True)
def _restore_stop_signals():
    """Tests that call cli.main in this process can leave SIGTERM/SIGUSR1 ignored (the CLI ignores them once a run
    has stopped, see preemption.ignore_stop_signals); an ignored signal stays ignored in every child started after,
    which would make a later test's horovodrun or mpirun deaf to SIGTERM. Each test starts with the suite's own."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
