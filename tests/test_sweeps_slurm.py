"""A seed sweep as a SLURM array job, for real on the loopback cluster: each array task trains its own seed into
its own run dir, both named from the task id and stated in the task's first line of output; `hvd-dqn table`
then reads the sweep."""

import json
import re
from pathlib import Path

import pytest

from conftest import BIN
from test_launchers import LAUNCH, SHORT_RUN, local_slurm, run  # noqa: F401 (local_slurm: the session fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc]
NODE = run(["hostname", "-s"], timeout=60).stdout.strip()  # local-slurm.sh's node


def _array(tmp_path, cfg, array, *train_args):
    """Submit `cfg` as an array job of one rank per task and wait for it; returns (array job id, {task: output})."""
    out = tmp_path / "hvd-dqn-%A_%a.out"
    proc = run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            f"--array={array}",
            "--ntasks-per-node=1",
            f"--output={out}",
            LAUNCH / "slurm.sbatch",
            cfg,
            *train_args,
        ],
        timeout=400,
        RUN_DIR=tmp_path / "runs",
        VIRTUAL_ENV=BIN.parent,
    )
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job.isdigit(), proc.stdout + proc.stderr
    outputs = {
        int(p.name.rsplit("_", 1)[1].split(".")[0]): p.read_text() for p in tmp_path.glob(f"hvd-dqn-{job}_*.out")
    }
    return job, outputs


def _task_jobs(job: str) -> dict[int, str]:
    """The job id of each task of array job ``job`` (scontrol shows the whole array, one record per task)."""
    text = run(["scontrol", "show", "job", "-o", job], timeout=60).stdout
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines()]
    return {int(r["ArrayTaskId"]): r["JobId"] for r in records}


def _first_line(output: str, task_job: str, seed_note: str, run_dir: Path) -> None:
    assert output.splitlines()[0] == (
        f"hvd-dqn: job {task_job} on 1 node(s) ({NODE}), 1 ranks, {seed_note}, run dir {run_dir} (start 1)"
    ), output


def test_an_array_job_trains_one_seed_per_task(local_slurm, tmp_path):
    cfg = tmp_path / "cp-sweep.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SHORT_RUN.items()))
    job, outputs = _array(tmp_path, cfg, "0-1")
    assert sorted(outputs) == [0, 1]
    jobs = _task_jobs(job)
    for task, output in outputs.items():
        run_dir = tmp_path / "runs" / f"cp-sweep-seed{task}"
        _first_line(output, jobs[task], f"seed {task} (array task {task} of job {job})", run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["seed"], config["exp_name"], config["world_size"]) == (task, "cp-sweep", 1)
        assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == SHORT_RUN["total_env_steps"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cp-sweep-seed0", "cp-sweep-seed1"]
    # the array submitted again: a finished task's run is left as it is
    summary = (tmp_path / "runs" / "cp-sweep-seed1" / "summary.json").read_bytes()
    again, outputs = _array(tmp_path, cfg, "1")
    run_dir = tmp_path / "runs" / "cp-sweep-seed1"
    _first_line(outputs[1], _task_jobs(again)[1], f"seed 1 (array task 1 of job {again})", run_dir)
    assert outputs[1].splitlines()[1:] == [
        f"hvd-dqn: {run_dir} holds a finished run (summary.json): nothing to do (set RUN_DIR for a new sweep)"
    ]
    assert (run_dir / "summary.json").read_bytes() == summary
    table = run([BIN / "hvd-dqn", "table", *sorted((tmp_path / "runs").iterdir())], timeout=60)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    assert table.stdout.splitlines()[2].startswith("| cp-sweep | 2 | 1 | 475 | ")


def test_a_seed_given_with_set_is_kept_and_the_run_dir_names_the_task(local_slurm, tmp_path):
    cfg = tmp_path / "pinned.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SHORT_RUN.items()))
    job, outputs = _array(tmp_path, cfg, "3", "--set", "seed=9")
    assert list(outputs) == [3]
    run_dir = tmp_path / "runs" / "pinned-task3"
    _first_line(outputs[3], _task_jobs(job)[3], f"seed 9 (--set), array task 3 of job {job}", run_dir)
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 9
