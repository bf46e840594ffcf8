"""Horovod's timeline and autotuner through our launchers (TIMELINE=FILE, AUTOTUNE_LOG=FILE): a file of the
user's is never overwritten. The recording itself: test_launchers' horovodrun job, which records a timeline and
runs the autotuner as it trains."""

import os

import pytest

from conftest import BIN, ROOT, run

LAUNCH = ROOT / "launch"


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh", "slurm.sbatch"])
@pytest.mark.parametrize("var", ["TIMELINE", "AUTOTUNE_LOG"])
def test_an_existing_file_is_never_overwritten(script, var, tiny_cartpole, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("precious")
    proc = run(["bash", LAUNCH / script, tiny_cartpole], timeout=60, VIRTUAL_ENV=BIN.parent, **{var: mine})
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"hvd-dqn launcher: error: {var} file {mine} exists (Horovod would overwrite "
        "it): give a new path"
    )
    assert mine.read_text() == "precious"


def test_a_missing_directory_is_a_one_line_error(tiny_cartpole, tmp_path):
    proc = run(["bash", LAUNCH / "mpirun.sh", tiny_cartpole], timeout=60, TIMELINE=tmp_path / "no" / "t.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hvd-dqn launcher: error: TIMELINE: no directory {tmp_path / 'no'}"


def test_the_autotuner_gets_the_cycle_time_to_tune(monkeypatch):
    from hvd_dqn import distributed

    monkeypatch.delenv("HOROVOD_CYCLE_TIME", raising=False)
    monkeypatch.setenv("HOROVOD_AUTOTUNE", "1")
    distributed._latency_defaults()
    assert "HOROVOD_CYCLE_TIME" not in os.environ  # set, Horovod would hold it fixed while tuning the rest
    monkeypatch.setenv("HOROVOD_AUTOTUNE", "0")
    distributed._latency_defaults()
    assert os.environ["HOROVOD_CYCLE_TIME"] == distributed.LATENCY_DEFAULTS["HOROVOD_CYCLE_TIME"]
