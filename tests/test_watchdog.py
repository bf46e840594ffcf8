"""The watchdog's judgement in process: who ends the job, naming whom, and when it waits on (the real thing under
horovodrun -np 2 is in test_job_safety.py)."""

import os
import re
import sys
import threading
import time

from hvd_dqn import distributed
from hvd_dqn.watchdog import DEFER_S, RankView, verdict, whereabouts

T = 20.0  # hang_timeout_s
WHO = {0: "host h, pid 100", 1: "host h, pid 101"}


def view(rank, **kw) -> RankView:
    return RankView(rank, who=WHO[rank], **kw)


def test_a_rank_stuck_outside_collectives_ends_the_job_although_another_is_busy():
    """Rank 1 is busy writing a checkpoint but waits in its collective for rank 0, whose loop is stuck on a lock:
    rank 0 says so itself; rank 1 leaves it to rank 0, unless rank 0 has not done it DEFER_S later."""
    stuck = view(0, stalled_s=T + 1, where="deadlocked_step (hvd_dqn/testing/faults.py:9)")
    waiting = view(1, busy="writing a checkpoint", waiting=True, stalled_s=T + 2, where="allgather_object (x.py:1)")
    line = (
        "rank 0 made no progress for 21 s (its process is alive: host h, pid 100): stuck in deadlocked_step "
        "(hvd_dqn/testing/faults.py:9), outside any collective"
    )
    assert verdict(0, [stuck, waiting], T) == line
    assert verdict(1, [stuck, waiting], T) is None
    late = stuck._replace(stalled_s=T + DEFER_S + 1)
    assert verdict(1, [late, waiting], T) == line.replace("21 s", f"{T + DEFER_S + 1:.0f} s")


def test_a_rank_waiting_in_a_collective_for_a_busy_one_waits_on():
    """The legitimate wait: rank 1 evaluates (local work) for longer than hang_timeout_s, rank 0 waits for it in
    the gather of the returns. Neither ends the job."""
    views = [view(0, waiting=True, stalled_s=T * 5, where="allgather"), view(1, busy="evaluating", stalled_s=T * 5)]
    assert verdict(0, views, T) is None
    assert verdict(1, views, T) is None


def test_ranks_busy_with_long_work_wait_on_also_in_its_collectives():
    """The first learning phase (marked work) ends in a broadcast of the optimizer's slots, slow on a loaded machine:
    both ranks in that collective, stalled for longer than hang_timeout_s since before the compile, wait on (seen
    in a run when a rank in a collective stopped counting as busy)."""
    views = [
        view(r, busy="compiling the update", waiting=True, stalled_s=T + 5, where="broadcast_variables") for r in (0, 1)
    ]
    assert verdict(0, views, T) is None
    assert verdict(1, views, T) is None


def test_a_stale_heartbeat_comes_first():
    views = [view(0, waiting=True, stalled_s=T + 1), view(1, stale="rank 1 made no progress for 25 s (...)")]
    assert verdict(0, views, T) == "rank 1 made no progress for 25 s (...)"


def test_ranks_waiting_in_collectives_that_do_not_match_are_a_deadlock():
    views = [
        view(0, waiting=True, stalled_s=T + 1, where="allreduce_sum (a.py:1)"),
        view(1, waiting=True, stalled_s=T + 3, where="allgather (a.py:2)"),
    ]
    assert verdict(0, views, T) == (
        "rank 1 made no progress for 23 s (its process is alive: host h, pid 101): waiting in allgather (a.py:2)"
    )


def test_two_stuck_ranks_are_named_by_the_lower_one():
    views = [view(0, stalled_s=T + 1, where="a"), view(1, stalled_s=T + 2, where="b")]
    assert verdict(0, views, T) == (
        "rank 0 made no progress for 21 s (its process is alive: host h, pid 100): stuck "
        "in a, outside any collective; rank 1 made no progress for 22 s (its process is "
        "alive: host h, pid 101): stuck in b, outside any collective"
    )
    assert verdict(1, views, T) is None


def _blocked_thread(target):
    """A thread blocked in ``target(event)`` until ``event`` is set; returns (thread, event)."""
    event, entered = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: entered.set() or target(event), daemon=True)
    thread.start()
    entered.wait()
    time.sleep(0.2)  # into event.wait()
    return thread, event


def test_whereabouts_of_a_thread_blocked_in_our_code_and_in_a_collective():
    """Where a thread is: its innermost frame and the first frames of two of our modules; and whether it is inside a
    collective of hvd_dqn.distributed (whose marking each collective there carries)."""
    namespace = {}
    ours = os.path.join(os.path.dirname(distributed.__file__), "testing", "blocked.py")
    exec(compile("def wait_here(event):\n    event.wait()\n", ours, "exec"), namespace)
    waiting = distributed._collective(namespace["wait_here"])  # as allgather_object is marked
    for target, inside in ((namespace["wait_here"], False), (waiting, True)):
        thread, event = _blocked_thread(target)
        try:
            where = whereabouts(sys._current_frames()[thread.ident])
            assert distributed.in_collective(thread.ident) is inside
        finally:
            event.set()
            thread.join()
        assert not distributed.in_collective(thread.ident)
        # the innermost frame, Condition.wait's in threading.py (Event.wait's is skipped: not ours), then ours (the
        # marking's frame too, here: a collective of distributed.py itself is the same module, and is skipped)
        marked = r", called from marked \(hvd_dqn/distributed\.py:\d+\)" if inside else ""
        assert re.fullmatch(
            r"wait \(python3\.\d+/threading\.py:\d+\), called from wait_here "
            r"\(hvd_dqn/testing/blocked\.py:2\)" + marked,
            where,
        ), where
