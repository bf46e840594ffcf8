"""Horovod's timeline and autotuner through our launchers (TIMELINE=FILE, AUTOTUNE_LOG=FILE)."""

import json
import os

import pytest

from conftest import BIN, ROOT, run
from hvd_dqn.config import Config
from run_schedule import expected_updates
from test_horovod_options import learner_allreduces

LAUNCH = ROOT / "launch"


@pytest.mark.multiproc
def test_horovodrun_launcher_records_a_timeline_and_runs_the_autotuner(tiny_cartpole, tmp_path):
    timeline, autotune, run_dir = tmp_path / "timeline.json", tmp_path / "autotune.csv", tmp_path / "run"
    proc = run(
        [LAUNCH / "horovodrun.sh", tiny_cartpole],
        timeout=850,
        NP=2,
        RUN_DIR=run_dir,
        VIRTUAL_ENV=BIN.parent,
        TIMELINE=timeline,
        AUTOTUNE_LOG=autotune,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    events = json.loads(timeline.read_text())  # Horovod keeps the file valid JSON as it goes
    assert {"NEGOTIATE_ALLREDUCE", "ALLREDUCE"} <= {e.get("name") for e in events}
    per_tensor = learner_allreduces(timeline)
    # the MLP's 3 kernels and 3 biases, each allreduced once per gradient update of the run: 13 phases of 20
    assert len(per_tensor) == 6 and summary["updates"] == expected_updates(Config.from_yaml(tiny_cartpole), 2) == 260
    assert all(len(dtypes) == summary["updates"] for dtypes in per_tensor.values())
    assert autotune.read_text().splitlines()[0].startswith("hierarchical_allreduce,")  # the autotuner's log


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
