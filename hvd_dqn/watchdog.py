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

The heartbeat also says where the loop's thread is (its innermost frames) and whether it waits in a collective
(``distributed.in_collective``). A rank whose loop has made no progress for ``timeout_s`` outside collectives and
outside marked work waits for no other rank: it is stuck on its own (a deadlock on a lock, a hung read), whoever
else is busy, and it ends the job naming itself and where it is stuck. Without that, a rank busy writing a
checkpoint, waiting in its collective for a deadlocked one, kept the job waiting until busy_timeout_s, then blamed
itself. (The allreduce inside the learner's compiled update is no such collective: the learning phase that
compiles it is marked work, and later ones run in lockstep on every rank.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from hvd_dqn import distributed, rundir
from hvd_dqn.errors import say

HANG_EXIT_CODE = 1
HEARTBEAT_DIR = rundir.HEARTBEATS
BEAT_S = 1.0
FROZEN_S = 5.0  # a watchdog check this late means the process itself was not running
READ_TIMEOUT_S = 10.0  # reading the heartbeats may block on a hung shared filesystem: end the job anyway
# a rank stuck on its own ends the job itself; the others step in only if it has not done so this much later
DEFER_S = READ_TIMEOUT_S + 5.0
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Watchdog:
    def __init__(self, run_dir: Path, rank: int, size: int, timeout_s: float, busy_timeout_s: float | None = None):
        self.dir = Path(run_dir) / HEARTBEAT_DIR
        self.rank, self.size, self.timeout_s, self.busy_timeout_s = rank, size, timeout_s, busy_timeout_s
        self._progress_at = time.monotonic()
        self._armed = False
        self._busy: str | None = None
        self._busy_since = 0.0
        self._stop = threading.Event()

    @classmethod
    def for_config(cls, config, run_dir: Path, world) -> Watchdog | None:
        """A started watchdog of this rank when the config sets ``hang_timeout_s``, else None."""
        if config.hang_timeout_s is None:
            return None
        return cls(run_dir, world.rank, world.size, config.hang_timeout_s, config.busy_timeout_s).start()

    def start(self) -> Watchdog:
        """Called from the thread that runs the loop: the one whose progress, whereabouts and work are watched."""
        self._loop_thread = threading.get_ident()
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
        waiting, where = self._whereabouts()
        record = {
            "rank": self.rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "wall": time.time(),
            "stalled_s": round(self._stalled_s(), 1),
            "busy": self._busy,
            "waiting": waiting,
            "where": where,
        }
        rundir.atomic_write_text(self._path(self.rank), json.dumps(record), durable=False)

    def _whereabouts(self) -> tuple[bool, str]:
        """(whether the loop's thread waits in a collective, where it is)."""
        return (distributed.in_collective(self._loop_thread), whereabouts(sys._current_frames().get(self._loop_thread)))

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
                self._end(
                    f"rank {self.rank} has been {busy} for more than busy_timeout_s "
                    f"({self.busy_timeout_s:g} s): is it stuck?"
                )
            if stalled <= self.timeout_s:
                continue
            found: list = []
            # bound now: a read that outlasts READ_TIMEOUT_S must not land in a later round's list
            reader = threading.Thread(target=lambda out=found: out.append(self._others()), daemon=True)
            reader.start()
            reader.join(READ_TIMEOUT_S)
            last = time.monotonic()  # the read's own time is no freeze
            if self._stop.is_set():
                return
            if not found:
                self._end(
                    f"rank {self.rank} made no progress for {stalled:.0f} s and the heartbeats in {self.dir} "
                    f"could not be read within {READ_TIMEOUT_S:g} s (is the shared filesystem hung?)"
                )
            waiting, where = self._whereabouts()
            me = RankView(
                self.rank, None, busy, waiting, stalled, where, f"host {socket.gethostname()}, pid {os.getpid()}"
            )
            line = verdict(self.rank, sorted([me, *found[0]]), self.timeout_s)
            if line is not None:
                self._end(line)

    def _others(self) -> list[RankView]:
        """The other ranks as their heartbeats show them; stale: stopped, dead or unreachable."""
        try:
            now = self._path(self.rank).stat().st_mtime  # the file server's clock, like the others' mtimes
        except OSError:
            now = time.time()
        views = []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            path = self._path(rank)
            try:
                age = now - path.stat().st_mtime
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                views.append(RankView(rank, f"rank {rank} made no progress (no readable heartbeat in {self.dir})"))
                continue
            who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}"
            stale = None
            if age > self.timeout_s / 2:
                last = time.strftime("%H:%M:%S %Z", time.localtime(now - age))
                stale = f"rank {rank} made no progress for {age:.0f} s (last heartbeat {last}, {who})"
            views.append(
                RankView(
                    rank,
                    stale,
                    record.get("busy"),
                    bool(record.get("waiting")),
                    float(record.get("stalled_s") or 0),
                    record.get("where") or "?",
                    who,
                )
            )
        return views

    def _end(self, what: str) -> None:
        say(f"hvd-dqn: {what}; ending the job")
        os._exit(HANG_EXIT_CODE)


class RankView(NamedTuple):
    """A rank as the watchdog sees it: ``stale`` says why its heartbeat cannot be trusted (None: fresh)."""

    rank: int
    stale: str | None = None
    busy: str | None = None  # the marked local work it is in
    waiting: bool = False  # in a collective (a Horovod call)
    stalled_s: float = 0.0  # since its loop last made progress
    where: str = "?"
    who: str = ""


def verdict(me: int, views: list[RankView], timeout_s: float) -> str | None:
    """What rank ``me``, whose own loop has made no progress for ``timeout_s``, ends the job with (None: wait on).
    ``views``: every rank, ``me`` included, in rank order."""
    stale = [v.stale for v in views if v.stale is not None]
    if stale:
        return "; ".join(stale)
    stuck = [v for v in views if v.stalled_s > timeout_s and v.busy is None and not v.waiting]
    if stuck:
        # outside Horovod and marked work, such a rank waits for nobody. It ends the job itself (its watchdog runs,
        # since its heartbeat does): one line, from the rank that knows best; the others only if it has not
        if stuck[0].rank == me or stuck[0].stalled_s > timeout_s + DEFER_S:
            return "; ".join(
                f"rank {v.rank} made no progress for {v.stalled_s:.0f} s (its process is alive: "
                f"{v.who}): stuck in {v.where}, outside any collective"
                for v in stuck
            )
        return None
    if any(v.busy is not None for v in views):
        # long work (a checkpoint, an evaluation, the first compile) here or on another rank: wait for it, also
        # where it has reached its collectives, which may take long too (broadcasting the optimizer's slots)
        return None
    # every rank waits in a collective (or has just made progress): collectives that do not match, a deadlock
    others = [
        f"rank {v.rank} made no progress for {v.stalled_s:.0f} s (its process is alive: {v.who}): waiting in {v.where}"
        for v in views
        if v.rank != me and v.stalled_s > timeout_s
    ]
    mine = next(v for v in views if v.rank == me)
    return (
        "; ".join(others)
        if others
        else (
            f"no rank's heartbeat is stale, but rank {me} made no progress for {mine.stalled_s:.0f} s, waiting in "
            f"{mine.where} (a deadlock?)"
        )
    )


def whereabouts(frame) -> str:
    """Where the thread of innermost ``frame`` is: that frame, then the first frames of two of hvd_dqn's modules,
    e.g. ``quick_execute (eager/execute.py:53), called from allgather_object (hvd_dqn/distributed.py:250), called
    from save (hvd_dqn/trainstate.py:78)``."""
    places, modules = [], []
    while frame is not None and len(modules) < 2:
        name = frame.f_code.co_filename
        path = name if name.startswith("<") else os.path.abspath(name)  # "<string>": code made at run time
        mine = path.startswith(PACKAGE_DIR)
        if not places or (mine and path not in modules):
            shown = os.path.join("hvd_dqn", path[len(PACKAGE_DIR) :]) if mine else os.path.join(*Path(path).parts[-2:])
            places.append(f"{frame.f_code.co_name} ({shown}:{frame.f_lineno})")
            modules += [path] if mine else []
        frame = frame.f_back
    return ", called from ".join(places) or "?"
