"""No two jobs in one run dir, no rank outliving its launcher, no silent hang: each for real under
``horovodrun -np 2`` with both controllers (docs/reliability.md). Every test kills what it started, even when
it fails: each process whose command line names the test's run dir, and every descendant seen. Nothing here times
the machine: a job is waited for with a generous guard, and what ended it is read from its output."""

import contextlib
import dataclasses
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

from conftest import BIN, HOROVODRUN, main_here, run, started
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
END_S = 300  # a job still running this long after it should have ended: a hang, not a slow machine


def _config(tmp_path, **overrides) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**LONG_RUN, **overrides}.items()))
    return cfg


def _horovodrun(controller: str, *train_args) -> list[str]:
    return [
        str(HOROVODRUN),
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

    def wait_gone(self) -> None:
        """Until none of the job's processes is left; fails after END_S (a guard: a rank that outlives its
        launcher trains on for ever)."""
        deadline = time.monotonic() + END_S
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the launcher
            if not self.alive():
                return
            time.sleep(0.5)
        left = [(p.pid, " ".join(p.cmdline())[:80]) for p in self.alive()]
        pytest.fail(f"processes still alive {END_S} s after: {left}\n{self.output[-3000:]}")

    def cleanup(self) -> None:
        for p in self.alive():
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass


def _start(stack: contextlib.ExitStack, cmd, run_dir: Path, log: Path, **env) -> Job:
    """A Job whose end is in ``stack``: killed with all it left, then its session killed and its launcher reaped."""
    job = Job(stack.enter_context(started(cmd, output=log, **env)), run_dir, log)
    stack.callback(job.cleanup)  # (callbacks unwind first: before the session is killed)
    return job


def _start_in(stack: contextlib.ExitStack, root: Path, controller: str, env: dict, prefix=(), **overrides) -> Job:
    """A LONG_RUN job (with ``overrides``) under ``prefix`` horovodrun, its config, run dir and output in ``root``."""
    root.mkdir()
    cmd = [*prefix, *_horovodrun(controller, "--config", _config(root, **overrides), "--run-dir", root / "run")]
    return _start(stack, cmd, root / "run", root / "job.log", **env)


@pytest.fixture
def jobs():
    """``jobs(cmd, run_dir, log, **env)`` starts a Job; at the end each is killed with all it left."""
    with contextlib.ExitStack() as stack:
        yield lambda cmd, run_dir, log, **env: _start(stack, cmd, run_dir, log, **env)


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
    first.wait_gone()


def checkpoint_complete(ckpt: Path) -> bool:
    return all((ckpt / name).is_file() for name in ("COMPLETE", "state.json", "replay-rank0.npz", "replay-rank1.npz"))


# ---------------------------------------------------------------------------------------------- SIGTERM to horovodrun
@pytest.fixture(scope="module")
def sigtermed(tmp_path_factory):
    """horovodrun (--mpi, --gloo, and --mpi under `timeout 3600`) SIGTERMed once rank 0 has logged a row, then
    waited for until none of its processes is left: how -> (the job, horovodrun's pid). The three start together,
    so that their start-ups overlap; the two under mpirun are signalled first, and the Gloo job only once they
    are gone, since its horovodrun SIGKILLs the ranks 5 s after passing SIGTERM on: its ranks checkpoint with the
    machine shared as in a job of their own."""
    root = tmp_path_factory.mktemp("sigterm")
    with contextlib.ExitStack() as stack:
        timeout = ["timeout", "3600"], {"OMPI_MCA_odls_base_sigkill_timeout": 10}  # 5 s: mpirun ended 12 s after
        plans = {"mpi": ([], {}), "timeout-mpi": timeout, "gloo": ([], {})}
        jobs = {
            how: _start_in(stack, root / how, how.split("-")[-1], env, prefix) for how, (prefix, env) in plans.items()
        }
        signalled = {}
        for batch in (("mpi", "timeout-mpi"), ("gloo",)):
            for how in batch:
                job = jobs[how]
                job.wait_training(min_rows=1)
                assert len(job.ranks()) == 2, job.output
                launcher = psutil.Process(job.proc.pid).children()[0] if plans[how][0] else job.proc  # not timeout
                signalled[how] = (job, launcher.pid)
                job.proc.send_signal(signal.SIGTERM)
            for how in batch:
                jobs[how].wait_gone()
        yield signalled


@pytest.mark.parametrize("how", ["mpi", "gloo", "timeout-mpi"])
def test_sigterm_to_horovodrun_stops_every_rank_with_a_checkpoint(how, sigtermed):
    """kill <horovodrun pid> (and timeout N horovodrun ..., whose expiry is the SIGTERM that timeout forwards
    when it receives one itself): every rank writes its part of a checkpoint and no process of the job
    (horovodrun, mpirun, ranks) is left. Each variant is its own path: with --mpi horovodrun has become
    `sh -c mpirun ...`, which dies alone, and only the ranks' watch of it (hvd_dqn.launcherwatch) stops them;
    with --gloo horovodrun gives the ranks SIGTERM and SIGKILLs them 5 s later, so the checkpoint must be written
    before that. timeout also signals its process group, mpirun included, which SIGKILLs the ranks 1 s after its
    own SIGTERM unless odls_base_sigkill_timeout says otherwise: the recipe for timeout in docs/reliability.md,
    tested here. Rank 0's line names the one cause however the ranks learnt of it (horovodrun gone, a SIGTERM,
    the other rank's vote): the end of horovodrun with --mpi, even where timeout's SIGTERM reached the ranks too;
    the SIGTERM that horovodrun --gloo passes on to the ranks."""
    job, horovodrun = sigtermed[how]
    run_dir = job.run_dir
    ckpts = sorted((run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else []
    assert ckpts, f"no checkpoint:\n{job.output[-3000:]}"
    ckpt = ckpts[-1]
    assert checkpoint_complete(ckpt), sorted(p.name for p in ckpt.iterdir())
    assert not (run_dir / "summary.json").exists()  # stopped mid-run, not run to the end
    step = int(ckpt.name.split("-")[1])
    assert 1000 <= step < LONG_RUN["total_env_steps"]
    cause = f"the end of horovodrun (pid {horovodrun})" if how.endswith("mpi") else "SIGTERM"
    stops = re.findall(r"hvd-dqn: stopped by (.+) at global env step (\d+); checkpoint ", job.output)
    assert stops == [(cause, str(step))], job.output[-3000:]


# ---------------------------------------------------------------------------------------------- a hung rank
# the smallest hang_timeout_s the config takes: what is asserted is which rank the watchdog names and how, not
# how long it waits
HANG_S = 10
# no learning before the evaluation that blocks, so no first compile (marked work too) before it: the bound only
# has to exceed rank 0's own evaluation of 2 untrained CartPole episodes (on a machine shared with the other two
# jobs) and hang_timeout_s, to show that a busy rank is waited for past that
BUSY_S = 20
HANG_IN_EVAL_AT = 2000
# 1,100 is no decision point (nor a log row): rank 1 makes no collective between the deadlock and the checkpoint
DEADLOCK_AT = 1100


@dataclasses.dataclass
class Hung:
    """A job made to hang, after the watchdog ended it, and what was seen of it while it ran."""

    job: Job
    pids: dict[int, int] = dataclasses.field(default_factory=dict)  # rank -> pid
    busy: set[str | None] = dataclasses.field(default_factory=set)  # the marked work in rank 1's heartbeat
    sigstopped: int | None = None  # the pid that the test stopped


@pytest.fixture(scope="module")
def hung(tmp_path_factory):
    """Three jobs started together, so that their start-ups and the watchdogs' waits overlap, each ended by the
    watchdog, with no process of any left: "stopped" (Gloo), SIGSTOP on rank 1 once rank 0 has logged 3 rows;
    "stuck" (Gloo), rank 1's evaluation env blocks in step() for ever (HVD_DQN_HANG_IN_EVAL); "deadlocked"
    (MPI), rank 0's loop deadlocks on a lock (HVD_DQN_DEADLOCK), its heartbeat running on, while rank 1 goes on
    into that step's checkpoint. Waited for with a generous guard, not timed."""
    root = tmp_path_factory.mktemp("hung")
    stuck = {"busy_timeout_s": BUSY_S, "eval_every": HANG_IN_EVAL_AT, "learning_starts": 2 * HANG_IN_EVAL_AT}
    plans = {
        "stopped": ("gloo", {}, {}),
        # rank 0, waiting in its collective, ends on horovodrun's SIGTERM after its stop grace, not 5 s later
        "stuck": ("gloo", stuck, {"HVD_DQN_HANG_IN_EVAL": f"1:{HANG_IN_EVAL_AT}", "HVD_DQN_TERM_GRACE_S": 1}),
        "deadlocked": ("mpi", {"checkpoint_every": DEADLOCK_AT}, {"HVD_DQN_DEADLOCK": f"0:{DEADLOCK_AT}"}),
    }
    with contextlib.ExitStack() as stack:
        hung = {
            name: Hung(_start_in(stack, root / name, controller, env, hang_timeout_s=HANG_S, **overrides))
            for name, (controller, overrides, env) in plans.items()
        }
        stopped, deadline = hung["stopped"], time.monotonic() + START_S + END_S
        while any(h.job.proc.poll() is None for h in hung.values()):
            for h in hung.values():
                if h.job.proc.poll() is None:
                    if len(h.pids) < 2:
                        h.pids = {rank: p.pid for rank, p in h.job.ranks().items()}
                    with contextlib.suppress(OSError, ValueError):  # (caught mid-write)
                        h.busy.add(json.loads((h.job.run_dir / HEARTBEAT_DIR / "rank-1").read_text()).get("busy"))
            metrics = stopped.job.run_dir / "metrics.jsonl"
            if stopped.sigstopped is None and len(stopped.pids) == 2 and metrics.is_file():
                if len(metrics.read_text().splitlines()) >= 3:
                    os.kill(stopped.pids[1], signal.SIGSTOP)
                    stopped.sigstopped = stopped.pids[1]
            if time.monotonic() > deadline:
                running = [name for name, h in hung.items() if h.job.proc.poll() is None]
                pytest.fail(f"still running after {START_S + END_S} s: {running}")
            time.sleep(0.2)
        for h in hung.values():
            h.job.wait_gone()
        yield hung


def test_a_stopped_rank_ends_the_job_naming_it(hung):
    """SIGSTOP on rank 1: the job ends non-zero, one line names rank 1 (its stale heartbeat), and no process of
    the job is left (the launcher kills the stopped rank). Under Gloo alone, the riskier controller here: the
    watchdog reads heartbeat files, the same under either, but horovodrun --gloo starts each rank's shell in a
    session of its own and must itself reach a rank that its SIGTERM cannot move, where mpirun SIGKILLs every
    rank 1 s after its SIGTERM, stopped or not (the deadlocked job ends under mpirun)."""
    job, pids = hung["stopped"].job, hung["stopped"].pids
    assert sorted(pids) == [0, 1] and hung["stopped"].sigstopped == pids[1], job.output[-3000:]
    output = job.output
    assert job.proc.returncode != 0, output
    lines = [ln for ln in output.splitlines() if "made no progress" in ln]
    assert len(lines) == 1, output
    assert re.search(
        rf"hvd-dqn: rank 1 made no progress for \d+ s \(last heartbeat [0-9:]+ \w+, host "
        rf"{re.escape(socket.gethostname())}, pid {pids[1]}\); ending the job$",
        lines[0],
    ), lines[0]


def test_a_rank_stuck_in_long_local_work_ends_the_job_naming_it(hung):
    """Rank 1's evaluation env blocks in step() for ever: a rank busy with local work is waited for by the others
    past hang_timeout_s, but not past busy_timeout_s: then the job ends non-zero, one line names rank 1 and what
    it was doing, and no process of the job is left. Without the bound the job would wait for ever."""
    job = hung["stuck"].job
    assert "evaluating" in hung["stuck"].busy, (hung["stuck"].busy, job.output[-3000:])
    output = job.output
    assert job.proc.returncode != 0, output
    hook = f"HVD_DQN_HANG_IN_EVAL: rank 1's evaluation env blocks in step() at global env step {HANG_IN_EVAL_AT}"
    assert hook in output, output
    # (rank 0 may add a line of its own as Horovod shuts down under it)
    lines = [ln for ln in output.splitlines() if "busy_timeout_s" in ln]
    assert lines == [
        f"[1]<stderr>:hvd-dqn: rank 1 has been evaluating for more than busy_timeout_s ({BUSY_S} s): is "
        "it stuck?; ending the job"
    ], output


def test_a_deadlocked_rank_ends_the_job_while_another_is_busy(hung):
    """Rank 0's loop deadlocks at global env step 1,100; rank 1 goes on into that step's checkpoint, marked busy
    writing it, and waits for rank 0 in its collective. A busy rank is waited for, but not on behalf of a rank
    stuck outside any collective: the job ends non-zero with one line naming rank 0, where it is stuck and a
    stall of at least hang_timeout_s (the watchdog does not fire early), not a busy_timeout_s line blaming rank 1
    (3600 s by default); no process of the job is left."""
    job, pids = hung["deadlocked"].job, hung["deadlocked"].pids
    assert "writing a checkpoint" in hung["deadlocked"].busy, (hung["deadlocked"].busy, job.output[-3000:])
    output = job.output
    assert job.proc.returncode != 0, output
    assert f"HVD_DQN_DEADLOCK: rank 0 deadlocks at global env step {DEADLOCK_AT}" in output, output
    # (rank 1 may add a line of its own as Horovod shuts down under it)
    lines = [ln for ln in output.splitlines() if "made no progress" in ln or "busy_timeout_s" in ln]
    assert len(lines) == 1, output
    found = re.search(
        rf"<stderr>:hvd-dqn: rank 0 made no progress for (\d+) s \(its process is alive: host "
        rf"{re.escape(socket.gethostname())}, pid {pids[0]}\): stuck in deadlocked_step "
        rf"\(hvd_dqn/testing/faults\.py:\d+\), called from _collect \(hvd_dqn/trainer\.py:\d+\), outside "
        rf"any collective; ending the job$",
        lines[0],
    )
    assert found, lines[0]
    assert int(found.group(1)) >= HANG_S, lines[0]  # the stall the watchdog measured, not the test's clock
