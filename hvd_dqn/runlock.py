"""One job per run directory: rank 0 holds a POSIX record lock on ``RUN_DIR/.hvd-dqn.lock`` for the job's life.

``fcntl.lockf`` (not ``flock``): POSIX record locks are what NFS forwards to the server's lock manager (lockd),
so two jobs on different nodes of a shared filesystem exclude each other too. The kernel (or, over NFS, the
server once the client is gone) drops the lock of a process that has died, so a stale lock never needs breaking:
the file's previous contents then only tell whose job ended without releasing it.

POSIX locks belong to the process, not to the file descriptor: a second ``lockf`` from the same process always
succeeds, and closing ANY descriptor of the file drops the lock. Hence the in-process registry, and the owner is
read back through the locking descriptor itself, never by opening the file again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from hvd_dqn import rundir
from hvd_dqn.errors import JobRefused, UserError

LOCK_NAME = rundir.LOCK
_held: dict[Path, RunLock] = {}  # run dirs locked by this process


class RunDirInUse(JobRefused):
    """Another job holds the run directory; the message names it (host, pid, start time). ``quiet`` on the ranks
    that learnt it from rank 0, which says it once for the job."""


class RunLock:
    """``RunLock(run_dir).acquire()`` or raise ``RunDirInUse``; ``release()`` at the end of the job (or the
    process ending releases it). ``took_over`` describes the owner of a lock left behind by a job that is gone."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.took_over: str | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        key = self.run_dir.resolve()
        if key in _held:
            raise RunDirInUse(f"run dir {self.run_dir} is in use by another run of this process (pid {os.getpid()})")
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(
                f"run dir {self.run_dir}: cannot create its lock file {LOCK_NAME} ({exc.strerror})"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read(fd)
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise RunDirInUse(
                    f"run dir {self.run_dir} is in use by another job ({describe(owner)}); wait for it "
                    "to end, stop it, or train into another --run-dir"
                ) from None
            raise UserError(
                f"run dir {self.run_dir}: cannot lock {LOCK_NAME} ({exc.strerror}; on NFS the "
                "lock manager, lockd, must run)"
            ) from None
        previous = _read(fd)
        if previous:
            self.took_over = describe(previous)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as exc:  # a full disk: leave the run dir as it was, the lock file included if it was new
            if created:
                self.path.unlink(missing_ok=True)
            os.close(fd)
            raise UserError(
                f"run dir {self.run_dir}: cannot write its lock file {LOCK_NAME} ({exc.strerror}); "
                "free space or make it writable, then run again"
            ) from None
        self._fd = fd
        _held[key] = self
        return self

    def release(self) -> None:
        """Empty the file (a job that ended cleanly leaves no owner to report), then unlock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # the lock still goes with the close; the next job then reports this one as gone
        os.close(self._fd)
        self._fd = None
        _held.pop(self.run_dir.resolve(), None)


def holds(run_dir: Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return Path(run_dir).resolve() in _held


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(owner: dict) -> str:
    if not owner:
        return "owner unknown: its lock file is empty or unreadable"
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {owner.get('started', '?')}"
