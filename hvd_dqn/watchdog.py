"""A hung rank ends the job instead of freezing it: heartbeats on the shared run dir and a watchdog per rank.

A rank that stops (SIGSTOP, a dead NFS mount, a deadlock) leaves the others spinning in their next collective
with no message. Horovod's stall check does not help: it runs in the negotiation of the stopped rank too, and
Gloo has none. So each rank runs two threads:

- a heartbeat: once a second it rewrites ``RUN_DIR/.heartbeat/rank-<r>`` (host, pid, how long its loop has made
  no progress, and what local work, if any, it is busy with). A stopped or stuck process stops writing it.
- a watchdog: when this rank's own loop has made no progress for ``timeout_s`` (it waits in a collective), it
  reads the other ranks' heartbeats, prints one line naming the ranks whose heartbeat is stale (or that are
  stuck themselves) and exits non-zero with ``os._exit``, so the launcher tears the rest of the job down.

Long legitimate pauses do not count: the loop marks long work (evaluation episodes, checkpoints, the first
learning phase with its TF compile) with ``paused(...)``; the others see the rank busy in its heartbeat and
wait for it, and a busy rank's own watchdog still ends the job if another rank's heartbeat goes stale. A busy rank
whose work outlasts ``busy_timeout_s`` (a user env that never returns from an evaluation step) ends the job itself:
its heartbeat thread runs on, so the others would wait for it forever. Staleness is judged against the mtime of
this rank's own heartbeat, so both times come from the file server's clock, whatever the hosts' clocks say.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from hvd_dqn import rundir
from hvd_dqn.errors import say

HANG_EXIT_CODE = 1
HEARTBEAT_DIR = rundir.HEARTBEATS
BEAT_S = 1.0
FROZEN_S = 5.0  # a watchdog check this late means the process itself was not running
READ_TIMEOUT_S = 10.0  # reading the heartbeats may block on a hung shared filesystem: end the job anyway


class Watchdog:
    def __init__(self, run_dir: Path, rank: int, size: int, timeout_s: float, busy_timeout_s: float | None = None):
        self.dir = Path(run_dir) / HEARTBEAT_DIR
        self.rank, self.size, self.timeout_s, self.busy_timeout_s = rank, size, timeout_s, busy_timeout_s
        self._progress_at = time.monotonic()
        self._armed = False
        self._busy: str | None = None
        self._busy_since = 0.0
        self._stop = threading.Event()

    def start(self) -> "Watchdog":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._beat()
        for target, name in ((self._beat_loop, "heartbeat"), (self._watch_loop, "watchdog")):
            threading.Thread(target=target, daemon=True, name=f"hvd-dqn-{name}").start()
        return self

    def progress(self) -> None:
        """The loop moved on (called once per iteration); the first call arms the watchdog."""
        self._progress_at = time.monotonic()
        self._armed = True

    @contextlib.contextmanager
    def paused(self, what: str):
        """Local work that may legitimately take longer than the timeout (no collective inside)."""
        self._busy_since = time.monotonic()  # before _busy: the watchdog reads _busy first
        self._busy = what
        try:
            yield
        finally:
            self._busy = None
            self._progress_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._path(self.rank).unlink()

    # ------------------------------------------------------------------ the threads
    def _path(self, rank: int) -> Path:
        return self.dir / f"rank-{rank}"

    def _stalled_s(self) -> float:
        return time.monotonic() - self._progress_at if self._armed else 0.0

    def _beat(self) -> None:
        record = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "wall": time.time(),
                  "stalled_s": round(self._stalled_s(), 1), "busy": self._busy}
        rundir.atomic_write_text(self._path(self.rank), json.dumps(record), durable=False)

    def _beat_loop(self) -> None:
        while not self._stop.wait(BEAT_S):
            with contextlib.suppress(OSError):  # a full or briefly unreachable disk: try again next second
                self._beat()

    def _watch_loop(self) -> None:
        every = min(1.0, self.timeout_s / 10)
        last = time.monotonic()
        while not self._stop.wait(every):
            now = time.monotonic()
            if now - last > every + FROZEN_S:
                # this whole process was stopped (SIGSTOP, a suspended VM): the time it stood still is not a
                # stall of its loop; without this a stopped rank, continued by the launcher only to be
                # terminated, would blame itself
                self._progress_at += now - last - every
                self._busy_since += now - last - every
            last = now
            stalled, busy = self._stalled_s(), self._busy
            busy_s = now - self._busy_since
            if busy is not None and self.busy_timeout_s is not None and busy_s > self.busy_timeout_s:
                self._end(f"rank {self.rank} has been {busy} for more than busy_timeout_s "
                          f"({self.busy_timeout_s:g} s): is it stuck?")
            if stalled <= self.timeout_s:
                continue
            found: list = []
            reader = threading.Thread(target=lambda: found.append(self._culprits()), daemon=True)
            reader.start()
            reader.join(READ_TIMEOUT_S)
            last = time.monotonic()  # the read's own time is no freeze
            if self._stop.is_set():
                return
            if not found:
                self._end(f"rank {self.rank} made no progress for {stalled:.0f} s and the heartbeats in {self.dir} "
                          f"could not be read within {READ_TIMEOUT_S:g} s (is the shared filesystem hung?)")
            stale, stuck, others_busy = found[0]
            if stale:
                self._end("; ".join(stale))
            if busy is not None or others_busy:
                continue  # long local work (a checkpoint, an evaluation) here or on another rank: wait for it
            self._end("; ".join(stuck) if stuck else
                      f"no rank's heartbeat is stale, but rank {self.rank} made no progress for {stalled:.0f} s "
                      "(a deadlock?)")

    def _culprits(self) -> tuple[list[str], list[str], bool]:
        """The other ranks whose heartbeat is stale (stopped, dead, unreachable), those whose process is alive but
        whose loop is stuck, and whether one is busy with long local work."""
        try:
            now = self._path(self.rank).stat().st_mtime  # the file server's clock, like the others' mtimes
        except OSError:
            now = time.time()
        stale, stuck, busy = [], [], False
        for rank in range(self.size):
            if rank == self.rank:
                continue
            path = self._path(rank)
            try:
                age = now - path.stat().st_mtime
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                stale.append(f"rank {rank} made no progress (no readable heartbeat in {self.dir})")
                continue
            who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}"
            if age > self.timeout_s / 2:
                last = time.strftime("%H:%M:%S %Z", time.localtime(now - age))
                stale.append(f"rank {rank} made no progress for {age:.0f} s (last heartbeat {last}, {who})")
            elif record.get("busy"):
                busy = True
            elif float(record.get("stalled_s") or 0) > self.timeout_s:
                stuck.append(f"rank {rank} made no progress for {float(record['stalled_s']):.0f} s "
                             f"(its process is alive: {who})")
        return stale, stuck, busy

    def _end(self, what: str) -> None:
        say(f"hvd-dqn: {what}; ending the job")
        os._exit(HANG_EXIT_CODE)
