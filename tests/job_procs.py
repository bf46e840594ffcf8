"""The processes of a test's horovodrun job: a rank's worker, the job's tree, what outlives it; waiting on it."""

import os
import subprocess
import time
from pathlib import Path

import psutil

from conftest import run


def worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` among the launcher's descendants (never another job's process)."""
    out = run(["ps", "-ww", "-e", "-o", "pid=,ppid=,args="], timeout=60).stdout
    parent, args_of = {}, {}
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        parent[int(pid)], args_of[int(pid)] = int(ppid), args

    def descends(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == launcher_pid:
                return True
        return False

    for pid, args in args_of.items():
        if "hvd-dqn train --elastic" in args and args.split()[0].endswith("python") and descends(pid):
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if env.get("HOROVOD_RANK") == str(rank):
                return pid
    return None


def wait_until(done, job: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert job.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def job_processes(job: subprocess.Popen) -> list[psutil.Process]:
    """horovodrun and everything under it: its helpers, the shells (in sessions of their own) and the ranks."""
    root = psutil.Process(job.pid)
    return [root, *root.children(recursive=True)]


def is_rank(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return len(cmd) >= 2 and os.path.basename(cmd[0]).startswith("python") and cmd[1].endswith("hvd-dqn")


def gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def naming(run_dir: Path) -> list[int]:
    """Pids of the processes, anywhere on the machine, whose command line names ``run_dir``."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(str(run_dir) in arg for arg in (p.info["cmdline"] or [])) and p.info["pid"] != os.getpid():
            found.append(p.info["pid"])
    return found
