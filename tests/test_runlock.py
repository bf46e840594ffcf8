"""The run dir's lock across processes, and checkpoint pruning that never deletes another job's write."""

import json
import os
import signal
import socket
import sys

import pytest

from conftest import started
from hvd_dqn import checkpoint

LOCK_NAME = ".hvd-dqn.lock"
# another job's rank 0, by the lock's protocol: a POSIX lock on the file, its owner written into it
HOLD = (
    "import fcntl, json, os, socket, sys, time\n"
    "fd = os.open(os.path.join(sys.argv[1], '.hvd-dqn.lock'), os.O_RDWR | os.O_CREAT)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'started': 'then'}).encode())\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run (killed at the end)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with started([sys.executable, "-c", HOLD, run_dir], stderr=None) as proc:
        assert proc.stdout.readline().strip() == "locked"
        yield run_dir, proc


def test_a_held_run_dir_is_refused_naming_its_owner(holder):
    from hvd_dqn.runlock import RunDirInUse, RunLock

    run_dir, proc = holder
    with pytest.raises(RunDirInUse) as err:
        RunLock(run_dir).acquire()
    assert str(err.value).startswith(
        f"run dir {run_dir} is in use by another job (host {socket.gethostname()}, pid {proc.pid}, started then)"
    )
    assert str(err.value).endswith("; wait for it to end, stop it, or train into another --run-dir")
    assert "\n" not in str(err.value)


def test_the_lock_of_a_dead_owner_is_taken_over_and_says_whose(holder):
    from hvd_dqn.runlock import RunLock

    run_dir, proc = holder
    proc.send_signal(signal.SIGKILL)  # no release: its host and pid stay in the file
    proc.wait()
    lock = RunLock(run_dir).acquire()
    try:
        assert lock.took_over == f"host {socket.gethostname()}, pid {proc.pid}, started then"
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert (run_dir / LOCK_NAME).read_text() == ""  # a clean end leaves no owner behind
    again = RunLock(run_dir).acquire()
    assert again.took_over is None
    again.release()


def test_the_same_process_cannot_lock_a_run_dir_twice(tmp_path):
    from hvd_dqn.runlock import RunDirInUse, RunLock

    lock = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunDirInUse, match="in use by another run of this process"):
            RunLock(tmp_path).acquire()
    finally:
        lock.release()


def _tmp_write(run_dir, step):
    tmp = checkpoint.tmp_path(run_dir, step)
    tmp.mkdir(parents=True)
    (tmp / "replay-rank0.npz").write_bytes(b"in progress")
    return tmp


def test_pruning_leaves_another_jobs_write_in_progress_alone(holder):
    """A process without the lock (a second job) prunes: the lock holder's ckpt-*.tmp survives."""
    run_dir, _ = holder
    theirs = _tmp_write(run_dir, 5000)
    current = checkpoint.final_path(run_dir, 4000)
    current.mkdir(parents=True)
    checkpoint.prune(run_dir, keep=2, current=current)
    assert (theirs / "replay-rank0.npz").read_bytes() == b"in progress"


def test_the_lock_holder_removes_a_dead_jobs_tmp_write(tmp_path):
    from hvd_dqn.runlock import RunLock

    stale = _tmp_write(tmp_path, 5000)
    current = checkpoint.final_path(tmp_path, 6000)
    current.mkdir(parents=True)
    lock = RunLock(tmp_path).acquire()
    try:
        checkpoint.prune(tmp_path, keep=2, current=current)
    finally:
        lock.release()
    assert not stale.exists() and current.is_dir()
