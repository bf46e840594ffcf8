"""Preemption under SLURM, for real on the loopback cluster: the batch script gets USR1 (as from
`--signal=B:USR1@120` before the time limit, or a preempting scheduler), the ranks checkpoint and exit 75, the
script requeues the job, and the requeued job resumes by itself and completes; metrics.jsonl shows the gap."""

import json
import re
import time
from pathlib import Path

import pytest

from conftest import BIN
from test_launchers import LAUNCH, _job, local_slurm, run  # noqa: F401 (local_slurm: the session fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc, pytest.mark.slow]
# Long enough that the signal, sent once 3,000 steps are logged, always lands mid-run: at 20,000 steps the run
# could finish (some 3 s after step 3,000 at 6k steps/s) before the test's signal reached it, and not be requeued.
TOTAL = 200000
RUN = {
    "env_id": "CartPole-v1",
    "total_env_steps": TOTAL,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "learning_rate": 0.002,
    "train_every": 200,
    "updates_per_train": 10,
    "target_update_every": 30,
    "eval_every": 5000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
}


def _wait(predicate, timeout, what, output: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    log = output.read_text() if output.exists() else "(no job output)"
    raise AssertionError(f"timed out waiting for {what}; the job's output:\n{log[-4000:]}")


def _rows(run_dir: Path):
    metrics = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []


def test_a_signalled_job_checkpoints_requeues_and_completes(local_slurm, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in RUN.items()))
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    proc = run(
        ["sbatch", "--parsable", f"--output={out}", LAUNCH / "slurm.sbatch", cfg],
        RUN_DIR=run_dir,
        VIRTUAL_ENV=BIN.parent,
    )
    job = proc.stdout.strip().split(";")[0]
    assert job.isdigit(), proc.stdout + proc.stderr
    try:
        _wait(lambda: any(r["env_steps"] >= 3000 for r in _rows(run_dir)), 300, "training to get under way", out)
        run(["scancel", "--batch", "--signal=USR1", job], check=True)  # the time-limit warning
        _wait(lambda: _job(job).get("Restarts") == "1", 120, "the requeue", out)
        # SLURM holds a requeued job until the old job credential expires (Reason=BeginTime, 120 s by default,
        # 10 s on the test cluster: launch/local-slurm.sh sets AuthInfo=cred_expire); a job started earlier fails
        # with "Job credential revoked"
        state = _wait(
            lambda: _job(job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED") and _job(job),
            600,
            "the requeued job to end",
            out,
        )
    finally:
        if _job(job).get("JobState") in ("RUNNING", "PENDING"):
            run(["scancel", job])
    output = out.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (state, output)
    stopped = int(re.search(r"stopped by SIGUSR1 at global env step (\d+)", output).group(1))
    assert 3000 <= stopped < TOTAL
    assert "checkpointed after SIGUSR1: requeueing it" in output
    assert "(start 2)" in output and "holds a checkpoint: resuming" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == TOTAL and summary["world_size"] == 2
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    rows = _rows(run_dir)
    i = next(i for i, r in enumerate(rows) if r.get("event") == "resumed")
    resumed, before = rows[i], rows[i - 1]
    assert resumed["env_steps"] == stopped and resumed["checkpoint"] == f"ckpt-{stopped}"
    # wall_s counts from the run's first start, so the time the job spent stopped and queued shows as a jump
    assert resumed["resume_gap_s"] > 1
    assert resumed["wall_s"] - before["wall_s"] >= resumed["resume_gap_s"] - 0.5
    assert rows[-1]["env_steps"] == TOTAL and sum(r.get("event") == "resumed" for r in rows) == 1


def test_a_preempted_two_task_job_continues_as_a_one_task_job(local_slurm, tmp_path):
    """Issue 17: the job comes back with another task count (here: the 2-task job's requeue cancelled, the run
    submitted again with 1 task); slurm.sbatch passes --resume whatever the count, and the run completes on 1 rank
    from the 2 ranks' checkpoint, its replay dealt out to the one rank."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in RUN.items()))
    run_dir, out1, out2 = tmp_path / "run", tmp_path / "job1.out", tmp_path / "job2.out"
    proc = run(
        ["sbatch", "--parsable", f"--output={out1}", LAUNCH / "slurm.sbatch", cfg],
        RUN_DIR=run_dir,
        VIRTUAL_ENV=BIN.parent,
    )
    first = proc.stdout.strip().split(";")[0]
    assert first.isdigit(), proc.stdout + proc.stderr
    second = None
    try:
        _wait(lambda: any(r["env_steps"] >= 3000 for r in _rows(run_dir)), 300, "training to get under way", out1)
        run(["scancel", "--batch", "--signal=USR1", first], check=True)
        _wait(lambda: _job(first).get("Restarts") == "1", 120, "the requeue", out1)
        run(["scancel", first], check=True)  # the allocation does not come back as it was
        proc = run(
            ["sbatch", "--parsable", "--ntasks-per-node=1", f"--output={out2}", LAUNCH / "slurm.sbatch", cfg],
            RUN_DIR=run_dir,
            VIRTUAL_ENV=BIN.parent,
        )
        second = proc.stdout.strip().split(";")[0]
        assert second.isdigit(), proc.stdout + proc.stderr
        state = _wait(
            lambda: _job(second)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED") and _job(second),
            600,
            "the 1-task job to end",
            out2,
        )
    finally:
        for job in (first, second):
            if job and _job(job).get("JobState") in ("RUNNING", "PENDING"):
                run(["scancel", job])
    output = out2.read_text()
    assert state["JobState"] == "COMPLETED", (state, output)
    stopped = int(re.search(r"stopped by SIGUSR1 at global env step (\d+)", out1.read_text()).group(1))
    assert ", 1 ranks, " in output and "holds a checkpoint: resuming" in output
    assert f"ckpt-{stopped} was written by 2 ranks, this job has 1: " in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == TOTAL and summary["world_size"] == 1
    resumed = [r for r in _rows(run_dir) if r.get("event") == "resumed"]
    assert [(r["env_steps"], r["checkpoint_world_size"], r["world_size"]) for r in resumed] == [(stopped, 2, 1)]
