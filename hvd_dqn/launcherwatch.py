"""A rank notices that the horovodrun that started it has gone, and asks the job to stop as if it were SIGTERM.

Why: with the MPI controller horovodrun replaces itself by ``/bin/sh -c "mpirun ..."``, so SIGTERM to the
horovodrun pid (``kill``, ``timeout N horovodrun ...``) ends only that shell; mpirun and every rank trained on
to the end, into a run dir the user believed free. Each rank therefore finds its launcher among its ancestors at
start (horovodrun itself, or the shell that horovodrun became) and a thread polls it; when it is gone the rank
raises the stop flag of ``StopRequest``, so the ranks agree on the stop at their next decision point, write a
checkpoint and exit, and mpirun ends with them. Ranks on other hosts (under orted, no launcher among their
ancestors) learn of the stop through that agreement.
"""

from __future__ import annotations

import os
import threading

import psutil

POLL_S = 1.0


def _is_launcher(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    names = [os.path.basename(c) for c in cmd[:2]]
    if "horovodrun" in names:  # python .../horovodrun ..., or the script run directly
        return True
    # horovodrun --mpi after its execve: /bin/sh -c "mpirun --allow-run-as-root --tag-output ..."
    return len(cmd) >= 3 and names[0] in ("sh", "bash", "dash") and cmd[1] == "-c" and cmd[2].startswith("mpirun ")


def find_launcher(proc: psutil.Process | None = None) -> psutil.Process | None:
    """The outermost horovodrun (or the shell it became) among the ancestors of ``proc`` (default: this process):
    under Gloo horovodrun's forked helpers carry its command line too, and the user signals the outermost."""
    try:
        ancestors = (proc or psutil.Process()).parents()
    except psutil.Error:
        return None
    found = [p for p in ancestors if _is_launcher(p)]
    return found[-1] if found else None


def _gone(proc: psutil.Process) -> bool:
    try:
        # is_running() also compares the start time, so a recycled pid does not count as the launcher
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class Watch:
    """The thread polling ``launcher``; ``cancel()`` when the job is over."""

    def __init__(self, launcher: psutil.Process, on_gone, poll_s: float):
        self.launcher = launcher
        self._cancelled = threading.Event()
        self._on_gone, self._poll_s = on_gone, poll_s
        threading.Thread(target=self._poll, daemon=True, name="hvd-dqn-launcher-watch").start()

    @property
    def reason(self) -> str:
        return f"the end of horovodrun (pid {self.launcher.pid})"

    def ended(self) -> bool:
        """Whether the launcher has ended by now (asked directly, not at the next poll)."""
        return _gone(self.launcher)

    def cancel(self) -> None:
        self._cancelled.set()

    def _poll(self) -> None:
        while not self._cancelled.wait(self._poll_s):
            if _gone(self.launcher):
                self._on_gone(self.reason)
                return


def watch(on_gone, launcher: psutil.Process | None = None, poll_s: float = POLL_S) -> Watch | None:
    """Call ``on_gone(reason)`` once, from a daemon thread, when this rank's launcher ends. None where there is
    no launcher to watch (a plain process, mpirun or srun without horovodrun, a rank on a remote host)."""
    launcher = launcher or find_launcher()
    return None if launcher is None else Watch(launcher, on_gone, poll_s)
