"""The suite itself under SIGTERM (a cancelled CI job, `kill`): it stops as on Ctrl-C, so session fixtures (the
loopback SLURM, the network namespaces) are torn down and a running test's command is ended with all it started."""

import shutil
import signal
import sys
import time
from pathlib import Path

import psutil

from conftest import ROOT, started

INNER = """
import os, sys
from pathlib import Path
import pytest
from conftest import run

MARK = Path(os.environ["MARK"])


@pytest.fixture(scope="session")
def daemon():
    yield
    (MARK / "torn-down").write_text("yes")


def test_waits(daemon):
    # a command that starts a grandchild, as a launcher starts horovodrun and its ranks
    run(["bash", "-c", f"sleep 300 & echo $! > {MARK}/grandchild.pid; echo $$ > {MARK}/child.pid; wait"])
"""


def _pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path.name} never written"
        time.sleep(0.1)
    return int(path.read_text())


def test_sigterm_stops_the_suite_with_teardown_and_ends_the_running_command(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", inner / "conftest.py")
    (inner / "test_inner.py").write_text(INNER)
    with started(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"], cwd=inner, MARK=tmp_path
    ) as proc:
        child, grandchild = _pid(tmp_path / "child.pid", 60), _pid(tmp_path / "grandchild.pid", 60)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output  # pytest's "interrupted", as after Ctrl-C
    assert (tmp_path / "torn-down").read_text() == "yes", output
    for pid in (child, grandchild):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, output
