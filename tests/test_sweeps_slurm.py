"""A seed sweep as a SLURM array job, for real on the loopback cluster: each array task trains its own seed into
its own run dir, both named from the task id and stated in the task's first line of output; `hvd-dqn table`
then reads the sweep."""

import json
from pathlib import Path

import pytest

import slurm_jobs
from conftest import BIN
from test_launchers import LAUNCH, SHORT_RUN, local_slurm, run  # noqa: F401 (local_slurm: the session fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc]
NODE = run(["hostname", "-s"], timeout=60).stdout.strip()  # local-slurm.sh's node


def _array(tmp_path, cfg, array, *train_args) -> str:
    """Submit `cfg` as an array job of one rank per task: its job id."""
    out = tmp_path / "hvd-dqn-%A_%a.out"
    args = [f"--array={array}", "--ntasks-per-node=1", f"--output={out}", LAUNCH / "slurm.sbatch", cfg, *train_args]
    return slurm_jobs.submit(args, RUN_DIR=tmp_path / "runs", VIRTUAL_ENV=BIN.parent)


def _finished(tmp_path, job: str) -> tuple[dict[int, str], dict[int, str]]:
    """Wait for array job ``job``, every task of which must complete: ({task: its job id}, {task: its output})."""
    records = slurm_jobs.wait(job, timeout=400)
    assert [r["JobState"] for r in records] == ["COMPLETED"] * len(records), records
    assert slurm_jobs.exit_status(records) == 0, records
    outputs = {
        int(p.name.rsplit("_", 1)[1].split(".")[0]): p.read_text() for p in tmp_path.glob(f"hvd-dqn-{job}_*.out")
    }
    return {int(r["ArrayTaskId"]): r["JobId"] for r in records}, outputs


def _first_line(output: str, task_job: str, seed_note: str, run_dir: Path) -> None:
    assert output.splitlines()[0] == (
        f"hvd-dqn: job {task_job} on 1 node(s) ({NODE}), 1 ranks, {seed_note}, run dir {run_dir} (start 1)"
    ), output


def test_array_jobs_train_one_seed_per_task_or_the_seed_given_with_set(local_slurm, tmp_path):
    """Two array jobs submitted together (a --set applies to every task of its array, so one array cannot hold
    both kinds): cp-sweep 0-1, where each task trains the seed of its task id into RUN_DIR/cp-sweep-seed<task>,
    and pinned 3 with --set seed=9, which keeps that seed and names the run dir by the task (pinned-task3); each
    task's first line states its seed and run dir. Then cp-sweep's task 1 submitted again leaves its finished run
    as it is, and `hvd-dqn table` reads the sweep."""
    sweep, pinned = tmp_path / "cp-sweep.yaml", tmp_path / "pinned.yaml"
    for cfg in (sweep, pinned):
        cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SHORT_RUN.items()))
    job = _array(tmp_path, sweep, "0-1")
    pinned_job = _array(tmp_path, pinned, "3", "--set", "seed=9")
    jobs, outputs = _finished(tmp_path, job)
    assert sorted(outputs) == sorted(jobs) == [0, 1]
    for task, output in outputs.items():
        run_dir = tmp_path / "runs" / f"cp-sweep-seed{task}"
        _first_line(output, jobs[task], f"seed {task} (array task {task} of job {job})", run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["seed"], config["exp_name"], config["world_size"]) == (task, "cp-sweep", 1)
        assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == SHORT_RUN["total_env_steps"]

    jobs, outputs = _finished(tmp_path, pinned_job)
    assert list(outputs) == list(jobs) == [3]
    run_dir = tmp_path / "runs" / "pinned-task3"
    _first_line(outputs[3], jobs[3], f"seed 9 (--set), array task 3 of job {pinned_job}", run_dir)
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 9
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cp-sweep-seed0", "cp-sweep-seed1", "pinned-task3"]

    # the array submitted again: a finished task's run is left as it is
    run_dir = tmp_path / "runs" / "cp-sweep-seed1"
    summary = (run_dir / "summary.json").read_bytes()
    again = _array(tmp_path, sweep, "1")
    jobs, outputs = _finished(tmp_path, again)
    _first_line(outputs[1], jobs[1], f"seed 1 (array task 1 of job {again})", run_dir)
    assert outputs[1].splitlines()[1:] == [
        f"hvd-dqn: {run_dir} holds a finished run (summary.json): nothing to do (set RUN_DIR for a new sweep)"
    ]
    assert (run_dir / "summary.json").read_bytes() == summary
    sweep_dirs = sorted((tmp_path / "runs").glob("cp-sweep-seed*"))
    table = run([BIN / "hvd-dqn", "table", *sweep_dirs], timeout=60)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    assert table.stdout.splitlines()[2].startswith("| cp-sweep | 2 | 1 | 475 | ")
