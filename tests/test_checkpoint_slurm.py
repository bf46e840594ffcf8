"""Preemption under SLURM, for real on the loopback cluster, as one job's story read by several tests: the batch
script gets USR1 (as from `--signal=B:USR1@120` before the time limit, or a preempting scheduler), the ranks
checkpoint and exit 75, the script requeues the job, and the requeued job resumes by itself on its 2 tasks and
completes; metrics.jsonl shows the gap. The stopped run also comes back as a 1-task job (issue 17): a copy of its
run dir, taken while the requeued job waits to start (as if the requeue were cancelled and the run submitted
again with 1 task), resumes and completes on 1 rank from the 2 ranks' checkpoint, its replay dealt out to the one
rank."""

import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BIN
from stopping import rank_pids, signal_held, wait_for_step
from test_launchers import LAUNCH, _job, local_slurm, run  # noqa: F401 (local_slurm: the session fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc, pytest.mark.slow]
STOP_AT = 3000  # the job is signalled once rank 0 has logged this step (stopping holds the ranks meanwhile)
TOTAL = 8000
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
ENDED = ("COMPLETED", "FAILED", "CANCELLED")


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


def _submit(cfg, run_dir, out, *sbatch_args):
    proc = run(
        ["sbatch", "--parsable", *sbatch_args, f"--output={out}", LAUNCH / "slurm.sbatch", cfg],
        RUN_DIR=run_dir,
        VIRTUAL_ENV=BIN.parent,
    )
    job = proc.stdout.strip().split(";")[0]
    assert job.isdigit(), proc.stdout + proc.stderr
    return job


@pytest.fixture(scope="module")
def story(local_slurm, tmp_path_factory):
    """The 2-task job signalled at STOP_AT, requeued and run to its end; the 1-task job on the stopped run's copy."""
    tmp = tmp_path_factory.mktemp("slurm-preempt")
    cfg = tmp / "job.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in RUN.items()))
    run_dir, out, one_dir, one_out = tmp / "run", tmp / "job.out", tmp / "one-task", tmp / "one-task.out"
    job = _submit(cfg, run_dir, out)
    one = None
    try:
        alive = lambda: _job(job)["JobState"] in ("PENDING", "RUNNING")  # noqa: E731
        wait_for_step(run_dir, 0, alive)
        pids = rank_pids(str(run_dir))
        assert len(pids) == 2, pids
        wait_for_step(run_dir, STOP_AT, alive)
        # the time-limit warning, to the batch script
        signal_held(pids, lambda: run(["scancel", "--batch", "--signal=USR1", job], check=True))
        _wait(lambda: _job(job).get("Restarts") == "1", 120, "the requeue", out)
        # SLURM holds a requeued job until the old job credential expires (Reason=BeginTime, 120 s by default,
        # 10 s on the test cluster: launch/local-slurm.sh sets AuthInfo=cred_expire); a job started earlier fails
        # with "Job credential revoked". The stopped ranks have exited: the run dir holds their checkpoint.
        shutil.copytree(run_dir, one_dir)
        one = _submit(cfg, one_dir, one_out, "--ntasks-per-node=1")
        state = _wait(lambda: _job(job)["JobState"] in ENDED and _job(job), 600, "the requeued job to end", out)
        one_state = _wait(lambda: _job(one)["JobState"] in ENDED and _job(one), 600, "the 1-task job", one_out)
    finally:
        for j in (job, one):
            if j and _job(j).get("JobState") in ("RUNNING", "PENDING"):
                run(["scancel", j])
    return SimpleNamespace(
        state=state,
        output=out.read_text(),
        run_dir=run_dir,
        one_state=one_state,
        one_output=one_out.read_text(),
        one_dir=one_dir,
    )


def _stopped(story):
    return int(re.search(r"stopped by SIGUSR1 at global env step (\d+)", story.output).group(1))


def test_a_signalled_job_checkpoints_and_requeues_itself(story):
    assert STOP_AT <= _stopped(story) < TOTAL, story.output
    assert "checkpointed after SIGUSR1: requeueing it" in story.output
    assert story.output.count("stopped by SIGUSR1 at global env step") == 1


def test_the_requeued_job_resumes_by_itself_and_completes(story):
    assert story.state["JobState"] == "COMPLETED" and story.state["Restarts"] == "1", (story.state, story.output)
    assert "(start 2)" in story.output and "holds a checkpoint: resuming" in story.output
    summary = json.loads((story.run_dir / "summary.json").read_text())
    assert summary["env_steps"] == TOTAL and summary["world_size"] == 2
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    rows = _rows(story.run_dir)
    i = next(i for i, r in enumerate(rows) if r.get("event") == "resumed")
    resumed, before = rows[i], rows[i - 1]
    stopped = _stopped(story)
    assert resumed["env_steps"] == stopped and resumed["checkpoint"] == f"ckpt-{stopped}"
    # wall_s counts from the run's first start, so the time the job spent stopped and queued shows as a jump
    assert resumed["resume_gap_s"] > 1
    assert resumed["wall_s"] - before["wall_s"] >= resumed["resume_gap_s"] - 0.5
    assert rows[-1]["env_steps"] == TOTAL and sum(r.get("event") == "resumed" for r in rows) == 1


def test_a_preempted_two_task_job_continues_as_a_one_task_job(story):
    """Issue 17: the job comes back with another task count; slurm.sbatch passes --resume whatever the count,
    and the run completes on 1 rank from the 2 ranks' checkpoint."""
    output = story.one_output
    assert story.one_state["JobState"] == "COMPLETED", (story.one_state, output)
    stopped = _stopped(story)
    assert ", 1 ranks, " in output and "holds a checkpoint: resuming" in output
    assert f"ckpt-{stopped} was written by 2 ranks, this job has 1: " in output
    summary = json.loads((story.one_dir / "summary.json").read_text())
    assert summary["env_steps"] == TOTAL and summary["world_size"] == 1
    resumed = [r for r in _rows(story.one_dir) if r.get("event") == "resumed"]
    assert [(r["env_steps"], r["checkpoint_world_size"], r["world_size"]) for r in resumed] == [(stopped, 2, 1)]
