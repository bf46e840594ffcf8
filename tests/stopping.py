"""Stopping a training job mid-run for the preemption tests, whatever the machine's speed: the ranks are found
by their command line, held with SIGSTOP while the stop signal travels to them through the real path (the
launcher, SLURM), and let go with SIGCONT once it is pending in each. So the stop lands at the step the test saw,
a few env steps on, and a run needs no length to spare for a slow signal."""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil


def rank_pids(marker: str) -> list[int]:
    """The hvd-dqn training processes (the Python running the hvd-dqn script, not the shells, srun, horovodrun or
    hvd_dqn.launchout that name it too) whose command line holds ``marker`` (a run dir or config path)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if (
            len(argv) > 2
            and "python" in Path(argv[0]).name
            and Path(argv[1]).name == "hvd-dqn"
            and argv[2] == "train"
            and any(marker in arg for arg in argv)
        ):
            found.append(proc.info["pid"])
    return found


def logged_step(run_dir: Path) -> int:
    """The largest env step of rank 0's metrics.jsonl so far (-1: no row yet)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    rows = metrics.read_text().splitlines() if metrics.exists() else []
    return max((json.loads(ln)["env_steps"] for ln in rows if ln.endswith("}")), default=-1)


def wait_for_step(run_dir: Path, env_steps: int, alive, timeout: float = 300) -> None:
    """Until rank 0 has logged a row at ``env_steps`` or later; ``alive()`` false (the job ended) fails."""
    start = checked = time.monotonic()
    while logged_step(run_dir) < env_steps:
        now = time.monotonic()
        if now - checked > 1:  # alive() may ask slurmctld: once a second
            assert alive(), "the job ended before it could be signalled"
            checked = now
        assert now - start < timeout, f"no metrics row at env step {env_steps} in {timeout} s"
        time.sleep(0.05)


def _pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits for delivery to process ``pid`` (the process's or its main thread's pending set)."""
    fields = dict(ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in ln)
    bit = 1 << (sig - 1)
    return any(int(fields[name], 16) & bit for name in ("SigPnd", "ShdPnd"))


def signal_held(pids: list[int], send, sig: int = signal.SIGUSR1, timeout: float = 60) -> None:
    """Hold the ranks ``pids`` (SIGSTOP), ``send()`` the stop through the launcher, wait until ``sig`` is pending
    in every rank, let them go (SIGCONT): each handles it before it takes another step of its own."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # SIGSTOP takes effect when the kernel next delivers to the process, and a SIGUSR1 sent before that is
        # delivered first (the lower number) and handled: held means stopped, so the stop signal stays pending
        deadline = time.monotonic() + timeout
        while not all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids):
            assert time.monotonic() < deadline, f"the ranks {pids} did not stop in {timeout} s"
            time.sleep(0.01)
        send()
        while not all(_pending(pid, sig) for pid in pids):
            assert time.monotonic() < deadline, f"signal {sig} did not reach the ranks {pids} in {timeout} s"
            time.sleep(0.05)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
