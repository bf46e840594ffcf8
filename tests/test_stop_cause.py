"""The one cause of a stop that every rank names (rank 0's line says it), whichever rank noticed what first; the
real thing, SIGTERM to horovodrun -np 2, is in test_job_safety.py."""

import psutil

from conftest import started
from hvd_dqn import launcherwatch
from hvd_dqn.preemption import LAUNCHER_ENDED, REQUESTED, StopRequest, root_cause

ENDED = (LAUNCHER_ENDED, "the end of horovodrun (pid 7)")


def test_a_rank_that_noticed_nothing_names_the_others_cause():
    assert root_cause([None, (REQUESTED, "SIGTERM")]) == "SIGTERM"  # was "another rank's signal"
    assert root_cause([(REQUESTED, "SIGUSR1"), (REQUESTED, "SIGTERM")]) == "SIGUSR1"  # the first rank's own
    assert root_cause([None, None]) is None


def test_the_end_of_the_launcher_comes_before_the_signals_it_brought():
    assert root_cause([(REQUESTED, "SIGTERM"), ENDED]) == "the end of horovodrun (pid 7)"
    assert root_cause([None, ENDED, (REQUESTED, "SIGTERM")]) == "the end of horovodrun (pid 7)"


def test_a_rank_asks_its_launcher_at_the_decision_and_takes_the_agreed_cause():
    """A rank that got SIGTERM before its watch saw the launcher end still says the launcher ended: it asks it
    at the decision, not at the next poll. And every rank takes the agreed cause as its own."""
    stop = StopRequest(0)
    assert stop.cause() is None
    stop.agreed([None, ENDED])
    assert stop.signame == "the end of horovodrun (pid 7)"

    with started(["sleep", "60"]) as proc:
        stop = StopRequest(0)
        stop.launcher = launcherwatch.Watch(psutil.Process(proc.pid), stop.request, poll_s=3600)
        try:
            stop.request("SIGTERM", deadline=False)  # as the handler does, without its grace timer
            assert stop.cause() == (REQUESTED, "SIGTERM")
            proc.kill()
            proc.wait()
            assert stop.cause() == (LAUNCHER_ENDED, f"the end of horovodrun (pid {proc.pid})")
            assert stop.signame == "SIGTERM"  # the watch has not polled yet
        finally:
            stop.launcher.cancel()
