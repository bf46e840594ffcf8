"""No two jobs in one run dir, no rank outliving its launcher, no silent hang: each for real under
``horovodrun -np 2`` with both controllers (docs/reliability.md). Every test kills what it started, even when
it fails: each process whose command line names the test's run dir, and every descendant seen."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import BIN, main_here, run, started
from hvd_dqn.watchdog import HEARTBEAT_DIR

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
LONG_RUN = {  # long enough to be mid-training whenever the test acts: the tests stop it or let it run out
    "env_id": "CartPole-v1",
    "total_env_steps": 2_000_000,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "train_every": 250,
    "updates_per_train": 5,
    "target_update_every": 50,
    "eval_every": 1_000_000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
}
START_S = 300  # TensorFlow and Horovod start-up of two ranks on a busy 2-core machine


def _config(tmp_path, **overrides) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**LONG_RUN, **overrides}.items()))
    return cfg


def _horovodrun(controller: str, *train_args) -> list[str]:
    return [
        str(BIN / "horovodrun"),
        "-np",
        "2",
        f"--{controller}",
        "-H",
        "localhost:2",
        str(BIN / "hvd-dqn"),
        "train",
        *[str(a) for a in train_args],
    ]


class Job:
    """A launcher command in its own session (conftest.started), output to a file; ``cleanup()`` kills what it
    left outside that session."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, log: Path):
        self.proc, self.run_dir, self.log = proc, run_dir, log
        self.seen: set[int] = set()

    @property
    def output(self) -> str:
        return self.log.read_text()

    def alive(self) -> list[psutil.Process]:
        """The job's processes still running: descendants of the launcher (remembered, since orphans lose
        their parent) and any process whose command line names the run dir (mpirun, the ranks)."""
        found = {}
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.add(p.pid)
        except psutil.Error:
            pass
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            if p.pid in self.seen or str(self.run_dir) in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
        return list(found.values())

    def ranks(self) -> dict[int, psutil.Process]:
        """rank -> its process (from the rank variables that horovodrun's controllers give each rank)."""
        ranks = {}
        for p in self.alive():
            try:
                cmd, env = p.cmdline(), p.environ()
            except psutil.Error:
                continue
            rank = env.get("HOROVOD_RANK", env.get("OMPI_COMM_WORLD_RANK"))
            if (
                rank is not None
                and "train" in cmd
                and "python" in os.path.basename(cmd[0])
                and not any(os.path.basename(c) == "horovodrun" for c in cmd)
            ):  # gloo's forked helpers
                ranks[int(rank)] = p
        return ranks

    def wait_training(self, min_rows: int = 2) -> None:
        """Until rank 0 has logged ``min_rows`` metric rows."""
        deadline = time.monotonic() + START_S
        metrics = self.run_dir / "metrics.jsonl"
        while time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= min_rows:
                return
            assert self.proc.poll() is None, self.output
            time.sleep(1)
        pytest.fail(f"no training within {START_S} s:\n{self.output[-3000:]}")

    def wait_ended(self, within_s: float, what: str) -> float:
        """Seconds until the launcher exits; fails after ``within_s``, saying the job still runs after ``what``."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job still runs {within_s:g} s after {what}:\n{self.output[-3000:]}")
        return time.monotonic() - t0

    def wait_gone(self, within_s: float) -> float:
        """Seconds until none of the job's processes is left; fails after ``within_s``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within_s:
            self.proc.poll()  # reap the launcher
            if not self.alive():
                return time.monotonic() - t0
            time.sleep(0.5)
        left = [(p.pid, " ".join(p.cmdline())[:80]) for p in self.alive()]
        pytest.fail(f"processes still alive {within_s:g} s after: {left}\n{self.output[-3000:]}")

    def cleanup(self) -> None:
        for p in self.alive():
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass


@pytest.fixture
def jobs():
    """``jobs(cmd, run_dir, log, **env)`` starts a Job; at the end each is killed with all it left."""
    made = []
    with contextlib.ExitStack() as stack:  # closed last: the session of each job killed, the launcher reaped

        def start(cmd, run_dir: Path, log: Path, **env) -> Job:
            made.append(Job(stack.enter_context(started(cmd, output=log, **env)), run_dir, log))
            return made[-1]

        yield start
        for job in made:
            job.cleanup()


# ---------------------------------------------------------------------------------------------- one job per run dir
def test_a_second_job_in_a_busy_run_dir_is_refused(tmp_path, jobs, capsys):
    """While a job trains (MPI controller), a second one into its run dir (--resume in this process, then a fresh
    run on 2 ranks under Gloo: the lock is taken before the controller or the world size matters) gets one line
    naming the owner (host and rank 0's pid), its ranks exit 2 and touch nothing; the first job trains on and,
    stopped with SIGUSR1 afterwards, writes a complete checkpoint and releases the lock. The signal goes to rank 1
    alone: rank 0's line names it all the same (it used to say "stopped by another rank's signal")."""
    run_dir = tmp_path / "run"
    cfg = _config(tmp_path, checkpoint_every=5000)
    first = jobs(_horovodrun("mpi", "--config", cfg, "--run-dir", run_dir), run_dir, tmp_path / "first.log")
    first.wait_training()
    owner = json.loads((run_dir / ".hvd-dqn.lock").read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == first.ranks()[0].pid
    config_before = (run_dir / "config.json").read_bytes()
    checkpoints = run_dir / "checkpoints"

    refusal = (
        f"hvd-dqn: error: run dir {run_dir} is in use by another job (host {owner['host']}, pid {owner['pid']}, "
        "started "
    )
    resumed = main_here(capsys, "train", "--resume", run_dir)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr
    assert resumed.stderr.strip().splitlines()[-1].startswith(refusal), resumed.stderr
    assert (run_dir / "config.json").read_bytes() == config_before

    proc = run(_horovodrun("gloo", "--config", cfg, "--run-dir", run_dir), timeout=START_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    lines = [ln for ln in output.splitlines() if "is in use by another job" in ln]
    assert len(lines) == 1 and refusal in lines[0], output  # said once, by rank 0
    # both ranks of the second job exited 2 (none waited for rank 0 in a collective)
    codes = re.findall(r"(?:Exit code:|exit with status code)\s+(\d+)", output)
    assert codes and set(codes) == {"2"}, output
    assert not re.search(r"^\[[\d,]+\]<stderr>:Traceback", output, re.M), output  # none from a rank
    assert (run_dir / "config.json").read_bytes() == config_before  # the second job wrote nothing

    rows_before = len((run_dir / "metrics.jsonl").read_text().splitlines())
    first.wait_training(min_rows=rows_before + 1)  # the first job trains on
    first.ranks()[1].send_signal(signal.SIGUSR1)
    first.proc.wait(timeout=120)
    assert "Exit code:" in first.output and set(
        re.findall(r"(?:Exit code:|exit with status code)\s+(\d+)", first.output)
    ) == {"75"}, first.output
    stops = re.findall(r"^\[[\d,]+\]<stderr>:hvd-dqn: stopped by (.+) at global env step (\d+); ", first.output, re.M)
    assert len(stops) == 1 and stops[0][0] == "SIGUSR1", first.output[-3000:]
    step = int(stops[0][1])
    ckpt = checkpoints / f"ckpt-{step}"
    assert checkpoint_complete(ckpt), sorted(p.name for p in checkpoints.iterdir())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows) and len(rows) > rows_before
    assert (run_dir / "config.json").read_bytes() == config_before
    assert (run_dir / ".hvd-dqn.lock").read_text() == ""  # released at the end: no owner left to report
    first.wait_gone(30)


def checkpoint_complete(ckpt: Path) -> bool:
    return all((ckpt / name).is_file() for name in ("COMPLETE", "state.json", "replay-rank0.npz", "replay-rank1.npz"))


# ---------------------------------------------------------------------------------------------- SIGTERM to horovodrun
@pytest.mark.parametrize("how", ["mpi", "gloo", "timeout-mpi"])
def test_sigterm_to_horovodrun_stops_every_rank_with_a_checkpoint(how, tmp_path, jobs):
    """kill <horovodrun pid> (and timeout N horovodrun ..., whose expiry is the SIGTERM that timeout forwards
    when it receives one itself): within 30 s every rank has written its part of a checkpoint and no process
    of the job (horovodrun, mpirun, ranks) is left. With --mpi horovodrun has become `sh -c mpirun ...`,
    which dies alone: the ranks notice it gone. timeout also signals its process group, mpirun included, which
    SIGKILLs the ranks 1 s after its own SIGTERM unless odls_base_sigkill_timeout says otherwise: the recipe
    for timeout in docs/reliability.md, tested here. Rank 0's line names the one cause however the ranks learnt
    of it (horovodrun gone, a SIGTERM, the other rank's vote): the end of horovodrun with --mpi, even where
    timeout's SIGTERM reached the ranks too; the SIGTERM that horovodrun --gloo passes on to the ranks."""
    run_dir = tmp_path / "run"
    controller = how.split("-")[-1]
    cmd = _horovodrun(controller, "--config", _config(tmp_path), "--run-dir", run_dir)
    env = {}
    if how.startswith("timeout"):
        cmd = ["timeout", "3600", *cmd]
        env = {"OMPI_MCA_odls_base_sigkill_timeout": 10}  # measured: 5 s let mpirun end 12 s after
    job = jobs(cmd, run_dir, tmp_path / "job.log", **env)
    job.wait_training()
    assert len(job.ranks()) == 2, job.output
    horovodrun = psutil.Process(job.proc.pid).children()[0].pid if how.startswith("timeout") else job.proc.pid
    job.proc.send_signal(signal.SIGTERM)
    seconds = job.wait_gone(30)
    print(f"{how}: every process gone {seconds:.1f} s after SIGTERM")
    ckpts = sorted((run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else []
    assert ckpts, f"no checkpoint after {seconds:.0f} s:\n{job.output[-3000:]}"
    ckpt = ckpts[-1]
    assert checkpoint_complete(ckpt), sorted(p.name for p in ckpt.iterdir())
    assert not (run_dir / "summary.json").exists()  # stopped mid-run, not run to the end
    step = int(ckpt.name.split("-")[1])
    assert 1000 <= step < LONG_RUN["total_env_steps"]
    cause = f"the end of horovodrun (pid {horovodrun})" if controller == "mpi" else "SIGTERM"
    stops = re.findall(r"hvd-dqn: stopped by (.+) at global env step (\d+); checkpoint ", job.output)
    assert stops == [(cause, str(step))], job.output[-3000:]


# ---------------------------------------------------------------------------------------------- a hung rank
HANG_S = 20


@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_a_stopped_rank_ends_the_job_naming_it(controller, tmp_path, jobs):
    """SIGSTOP on rank 1: within hang_timeout_s plus a bound the job ends non-zero, one line names rank 1, and
    no process of the job is left (the launcher kills the stopped rank)."""
    run_dir = tmp_path / "run"
    cfg = _config(tmp_path, hang_timeout_s=HANG_S)
    job = jobs(_horovodrun(controller, "--config", cfg, "--run-dir", run_dir), run_dir, tmp_path / "job.log")
    job.wait_training(min_rows=3)
    ranks = job.ranks()
    assert sorted(ranks) == [0, 1], job.output
    ranks[1].send_signal(signal.SIGSTOP)
    ended_after = job.wait_ended(HANG_S + 60, "rank 1 stopped")
    print(f"{controller}: the job ended {ended_after:.1f} s after SIGSTOP (hang_timeout_s {HANG_S})")
    output = job.output
    assert job.proc.returncode != 0, output
    lines = [ln for ln in output.splitlines() if "made no progress" in ln]
    assert len(lines) == 1, output
    assert re.search(
        rf"hvd-dqn: rank 1 made no progress for \d+ s \(last heartbeat [0-9:]+ \w+, host "
        rf"{re.escape(socket.gethostname())}, pid {ranks[1].pid}\); ending the job$",
        lines[0],
    ), lines[0]
    assert HANG_S <= ended_after < HANG_S + 45, ended_after
    job.wait_gone(30)


# the bound covers every busy spell, the first XLA compilation of the update ("compiling the update") included,
# which takes more than 15 s on a loaded 2-core machine and would end the job before the evaluation blocks
BUSY_S = 60


def test_a_rank_stuck_in_long_local_work_ends_the_job_naming_it(tmp_path, jobs):
    """Rank 1's evaluation env blocks in step() for ever (HVD_DQN_HANG_IN_EVAL): a rank busy with local work is
    waited for by the others, but not past busy_timeout_s: then the job ends non-zero, one line names rank 1 and
    what it was doing, and no process of the job is left. Without the bound the job would wait for ever."""
    run_dir = tmp_path / "run"
    cfg = _config(tmp_path, hang_timeout_s=10, busy_timeout_s=BUSY_S, eval_every=2000)
    job = jobs(
        _horovodrun("gloo", "--config", cfg, "--run-dir", run_dir),
        run_dir,
        tmp_path / "job.log",
        HVD_DQN_HANG_IN_EVAL="1:2000",
    )
    beat = run_dir / HEARTBEAT_DIR / "rank-1"  # rewritten every second, with what the rank is busy with
    deadline = time.monotonic() + START_S
    while not (beat.is_file() and '"busy": "evaluating"' in beat.read_text()):
        assert job.proc.poll() is None and time.monotonic() < deadline, job.output[-3000:]
        time.sleep(0.2)
    ended_after = job.wait_ended(BUSY_S + 60, "rank 1's evaluation blocked")
    print(f"the job ended {ended_after:.1f} s after rank 1's evaluation blocked (busy_timeout_s {BUSY_S})")
    assert BUSY_S - 2 <= ended_after < BUSY_S + 45, ended_after
    output = job.output
    assert job.proc.returncode != 0, output
    assert "HVD_DQN_HANG_IN_EVAL: rank 1's evaluation env blocks in step() at global env step 2000" in output, output
    # (rank 0 may add a line of its own as Horovod shuts down under it)
    lines = [ln for ln in output.splitlines() if "busy_timeout_s" in ln]
    assert lines == [
        f"[1]<stderr>:hvd-dqn: rank 1 has been evaluating for more than busy_timeout_s ({BUSY_S} s): is "
        "it stuck?; ending the job"
    ], output
    job.wait_gone(30)


def test_a_deadlocked_rank_ends_the_job_while_another_is_busy(tmp_path, jobs):
    """Rank 0's loop deadlocks on a lock (HVD_DQN_DEADLOCK) at global env step 1,100, its heartbeat running on;
    rank 1 goes on into that step's checkpoint, marked busy writing it, and waits for rank 0 in its collective.
    A busy rank is waited for, so the job used to wait until busy_timeout_s (3600 s) and then blame rank 1. Within
    hang_timeout_s plus a bound the job ends non-zero, one line names rank 0 and where it is stuck, and no process
    of the job is left."""
    run_dir = tmp_path / "run"
    # 1,100 is no decision point (nor a log row): rank 1 makes no collective between the deadlock and the checkpoint
    cfg = _config(tmp_path, hang_timeout_s=HANG_S, checkpoint_every=1100)
    job = jobs(
        _horovodrun("mpi", "--config", cfg, "--run-dir", run_dir),
        run_dir,
        tmp_path / "job.log",
        HVD_DQN_DEADLOCK="0:1100",
    )
    beat = run_dir / HEARTBEAT_DIR / "rank-1"
    deadline = time.monotonic() + START_S
    while not (beat.is_file() and '"busy": "writing a checkpoint"' in beat.read_text()):
        assert job.proc.poll() is None and time.monotonic() < deadline, job.output[-3000:]
        time.sleep(0.2)
    rank0 = job.ranks()[0]
    ended_after = job.wait_ended(HANG_S + 60, "rank 0 deadlocked and rank 1 began its checkpoint")
    print(f"the job ended {ended_after:.1f} s after rank 1 began its checkpoint (hang_timeout_s {HANG_S})")
    output = job.output
    assert job.proc.returncode != 0, output
    assert "HVD_DQN_DEADLOCK: rank 0 deadlocks at global env step 1100" in output, output
    # (rank 1 may add a line of its own as Horovod shuts down under it)
    lines = [ln for ln in output.splitlines() if "made no progress" in ln or "busy_timeout_s" in ln]
    assert len(lines) == 1, output
    assert re.search(
        rf"<stderr>:hvd-dqn: rank 0 made no progress for \d+ s \(its process is alive: host "
        rf"{re.escape(socket.gethostname())}, pid {rank0.pid}\): stuck in deadlocked_step "
        rf"\(hvd_dqn/testing/faults\.py:\d+\), called from _collect \(hvd_dqn/trainer\.py:\d+\), outside "
        rf"any collective; ending the job$",
        lines[0],
    ), lines[0]
    job.wait_gone(30)
