"""Elastic training for real: `horovodrun --min-np 1 --max-np 2` with a host discovery script: a worker that joins
mid-run takes rank 0's weights; a worker killed mid-run with SIGKILL: the survivor rolls back to the last commit,
goes on alone and completes the run. Elastic runs write disk checkpoints: a job killed outright (every process,
SIGKILL) continues from its last one, with `--elastic --resume` and with a plain `--resume`; SIGTERM stops it with
a checkpoint; a worker lost while a checkpoint is being written leaves no half-written one and the checkpoint is
written after the rollback."""

import json
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from conftest import BIN, HOROVODRUN, ROOT, run, started
from hvd_dqn import checkpoint
from job_procs import gone, is_rank, job_processes, naming, wait_until, worker_of_rank
from run_schedule import expected_updates

pytestmark = pytest.mark.multiproc
TOTAL = 8000
RUN = {
    "env_id": "CartPole-v1",
    "total_env_steps": TOTAL,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "train_every": 200,
    "updates_per_train": 10,
    "target_update_every": 30,
    "eval_every": 4000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
    "policy_ema": 0.9,
}  # the policy's weight average is committed and synced too
# Two "hosts" of one slot, both this machine: the host of a failed worker is blacklisted, the other one goes on
# (with one host of two slots, the failure would blacklist the only host).
DISCOVERY = "#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n"
# The worker that joins a running job imports TensorFlow while rank 0 waits for it in Gloo's rendezvous, whose
# 30 s default a loaded machine exceeds; and a run long enough that the join comes well before its end
JOIN_TOTAL = 16000
JOIN_ENV = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "600"}


def _rows(run_dir: Path):
    metrics = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []


def _elastic_cmd(tmp_path: Path, config: dict | None, *train_args) -> list:
    """horovodrun's elastic mode on this machine as two hosts of one slot, running ``hvd-dqn train --elastic``
    with ``config`` (written to tmp_path; None: no --config) and ``train_args``."""
    discover = tmp_path / "discover.sh"
    discover.write_text(DISCOVERY)
    discover.chmod(0o755)
    args = list(train_args)
    if config is not None:
        cfg = tmp_path / "run.yaml"
        cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
        args = ["--config", cfg, *args]
    return [
        HOROVODRUN,
        "-np",
        "2",
        "--min-np",
        "1",
        "--max-np",
        "2",
        "--host-discovery-script",
        discover,
        "--network-interfaces",
        "lo",
        "--gloo",
        BIN / "hvd-dqn",
        "train",
        "--elastic",
        *args,
    ]


def test_an_elastic_run_survives_a_killed_worker(tmp_path):
    # lamb: Keras 3's optimizer, whose state must be committed and rolled back too; Adam's (Horovod's
    # DistributedOptimizer) is rolled back after a lost worker in test_a_worker_lost_while_writing_a_checkpoint
    run_dir = tmp_path / "run"
    cmd = _elastic_cmd(tmp_path, {**RUN, "optimizer": "lamb"}, "--run-dir", run_dir)
    with started(cmd) as job:
        deadline = time.monotonic() + 600
        while not any(r["env_steps"] >= 1000 for r in _rows(run_dir)):
            assert job.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
            time.sleep(0.2)
        victim = worker_of_rank(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output
    assert "elastic reset: now rank 0 of 1" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    # alone at the end, the survivor counts 1 env step per vector step: it stops at TOTAL exactly
    assert summary["world_size"] == 1 and summary["env_steps"] == TOTAL
    # the updates do not depend on where the kill fell: whatever commit the survivor rolled back to (any phase of
    # the 2-rank part, vector steps 300 to 4000), 38 phases of 10 updates, as in a run without a kill
    expected = expected_updates(RUN)
    assert expected == 380 and {_elastic_updates(c) for c in range(300, TOTAL // 2 + 1, 100)} == {expected}
    assert summary["updates"] == expected
    rows = _rows(run_dir)
    sizes = [r["world_size"] for r in rows if "world_size" in r]
    assert sizes[0] == 2 and sizes[-1] == 1 and sorted(sizes, reverse=True) == sizes, sizes
    assert rows[-1]["env_steps"] == TOTAL and rows[-1]["updates"] == summary["updates"]


def _elastic_updates(commit: int) -> int:
    """The updates of a run that goes on alone from the commit at vector step ``commit`` of its 2-rank part (a
    phase boundary). The vector step counter goes on from the 2-rank count, so the 1-rank phases (every 200
    vector steps) may fall 100 env steps off the 2-rank rhythm: one phase comes early, and one is missing at the end."""
    vector_steps_per_phase = {2: RUN["train_every"] // 2, 1: RUN["train_every"]}
    two = [v for v in range(1, commit + 1) if v % vector_steps_per_phase[2] == 0 and 2 * v >= RUN["learning_starts"]]
    # vector step v > commit of the survivor ends global env step 2 * commit + (v - commit), the last TOTAL
    one = [v for v in range(commit + 1, TOTAL - commit + 1) if v % vector_steps_per_phase[1] == 0]
    return RUN["updates_per_train"] * (len(two) + len(one))


def test_an_elastic_reset_on_an_atari_config_keeps_the_runs_evaluation_options(tmp_path):
    """After a reset the evaluator is rebuilt for the new rank and world size, with the run's Atari options
    (pong.yaml: no sticky actions), not make_env's defaults (sticky actions 0.25)."""
    from hvd_dqn import distributed
    from hvd_dqn.config import Config
    from hvd_dqn.elastic import ElasticTrainer

    cfg = Config.from_yaml(
        ROOT / "configs" / "pong.yaml",
        ["replay_capacity=2000", "eval_episodes=3", "max_episode_frames=5000", "noop_max=7"],
    )
    trainer = ElasticTrainer(cfg, run_dir=tmp_path / "run")
    trainer.world = distributed.init()
    trainer._setup()
    try:
        trainer.state.evaluations = 5
        trainer._on_reset()
        envs = trainer.evaluator.envs
        assert len(envs) == 3 and trainer.state.evaluations == 5
        for env in envs:
            ale = env.unwrapped.ale
            assert env.env.env.prob == 0.0  # StickyActions, below AtariPreprocessing
            assert ale.getInt("max_num_frames_per_episode") == 5000
            assert env.env.noop_max == 7 and env.observation_space.shape == (4, 84, 84)
    finally:
        trainer._release()
        trainer._close()


# ---------------------------------------------------------------------------------------------- disk checkpoints
CKPT_TOTAL = 8000
CKPT_RUN = {**RUN, "total_env_steps": CKPT_TOTAL, "checkpoint_every": 2000, "keep_checkpoints": 20}


def _checkpoints(run_dir: Path, killed: bool = False) -> dict[int, int]:
    """Every checkpoint of the run: its global env step -> the world size that wrote it, each verified (every
    file's sha256 against the manifest); and no half-written ``.tmp`` left (unless the job was ``killed``)."""
    ckpts = checkpoint.listed(run_dir)
    assert killed or not list(checkpoint.checkpoints_dir(run_dir).glob("ckpt-*.tmp"))
    found = {}
    for ckpt in ckpts:
        state = checkpoint.verify(ckpt)
        replay = sorted(p.name for p in ckpt.glob("replay-rank*.npz"))
        assert replay == [f"replay-rank{r}.npz" for r in range(state["world_size"])], (ckpt, replay)
        found[state["env_steps"]] = state["world_size"]
    return found


def _summary(run_dir: Path, world_size: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == CKPT_TOTAL and summary["world_size"] == world_size
    checksums = summary["replica_checksums"]
    assert len(checksums) == world_size and len(set(checksums)) == 1, checksums
    return summary


@pytest.fixture(scope="module")
def killed_job(tmp_path_factory):
    """CKPT_RUN, checkpoints every 2,000 env steps; SIGKILL to every process of the job once ckpt-4000 is there;
    then the run dir continued with `--elastic --resume`, where rank 1 ends its process while writing the final
    checkpoint (HVD_DQN_DIE_IN_CHECKPOINT=1:CKPT_TOTAL), and a copy of it taken after the kill continued with a
    plain `--resume` at the same world size. Its run dirs, the processes of the killed job, what was left after
    the kill and the two resumes' outputs."""
    tmp_path = tmp_path_factory.mktemp("killed")
    run_dir = tmp_path / "run"
    # the job's output to a file: nobody reads a pipe while the test waits
    with started(_elastic_cmd(tmp_path, CKPT_RUN, "--run-dir", run_dir), output=tmp_path / "job.out") as job:
        wait_until(lambda: checkpoint.is_complete(checkpoint.final_path(run_dir, 4000)), job, "ckpt-4000")
        procs = job_processes(job)
        ranks = [p for p in procs if is_rank(p)]
        assert len(ranks) == 2
        for p in ranks + [p for p in procs if p not in ranks]:  # the ranks first: none gets to react
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        survivors = gone(procs) + naming(run_dir)
    killed = SimpleNamespace(
        run_dir=run_dir,
        plain_dir=tmp_path / "plain",
        survivors=survivors,
        summary_after_kill=(run_dir / "summary.json").exists(),
        written=_checkpoints(run_dir, killed=True),
    )
    shutil.copytree(run_dir, killed.plain_dir)
    die = f"1:{CKPT_TOTAL}"
    killed.elastic = run(_elastic_cmd(tmp_path, None, "--resume", run_dir), timeout=600, HVD_DQN_DIE_IN_CHECKPOINT=die)
    plain_cmd = [HOROVODRUN, "-np", "2", "--gloo", BIN / "hvd-dqn", "train", "--resume", killed.plain_dir]
    killed.plain = run(plain_cmd, timeout=600)
    return killed


def test_an_elastic_job_killed_outright_leaves_its_periodic_checkpoints(killed_job):
    """SIGKILL to every process of the job (no process reacts): none is left, no summary, and the checkpoints
    written before it are complete and verified, each at a learning-phase boundary by both ranks."""
    assert not killed_job.survivors, "a process of the killed job survived"
    assert not killed_job.summary_after_kill
    written = killed_job.written
    assert 4000 in written and all(ws == 2 for ws in written.values()), written
    assert all(step % 2000 == 0 for step in written), written  # each at a learning-phase boundary


def test_an_elastic_run_killed_outright_resumes_from_its_last_checkpoint(killed_job):
    """`--elastic --resume` of the killed run continues from its newest checkpoint to the end (rows past it
    dropped), and a plain `--resume` of the same checkpoint at the same world size ends with the same weights and
    updates (the elastic resume's survivor after its rollback: test_a_worker_lost_while_writing_the_final_checkpoint)
    and its own final checkpoint."""
    proc = killed_job.elastic
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = max(killed_job.written)
    elastic = _summary(killed_job.run_dir, 1)
    rows = _rows(killed_job.run_dir)
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert [(r["env_steps"], r["checkpoint"]) for r in resumed] == [(last, f"ckpt-{last}")]
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)  # rows after `last` were dropped

    proc = killed_job.plain
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = _summary(killed_job.plain_dir, 2)
    assert plain["replica_checksums"] == elastic["replica_checksums"] * 2
    assert plain["updates"] == elastic["updates"] == expected_updates(CKPT_RUN, 2)
    assert _checkpoints(killed_job.plain_dir)[CKPT_TOTAL] == 2


def test_a_worker_lost_while_writing_the_final_checkpoint(killed_job):
    """Rank 1's process ends in the middle of writing the final checkpoint of the elastic resume: the loop has
    nothing left to run after the rollback, the half-written ckpt-N.tmp is never renamed into place and is removed,
    and the survivor alone writes the final checkpoint again, with no file of the dead rank's attempt in it, and
    the run's outputs at world size 1."""
    output = killed_job.elastic.stdout + killed_job.elastic.stderr
    assert killed_job.elastic.returncode == 0, output
    assert f"rank 1 ends its process while writing the checkpoint of global env step {CKPT_TOTAL}" in output
    assert "elastic reset: now rank 0 of 1" in output
    _summary(killed_job.run_dir, 1)
    written = _checkpoints(killed_job.run_dir)
    # the killed job's (4,000 and maybe 6,000), the resume's own up to 6,000, the final one by the survivor
    assert written == {2000: 2, 4000: 2, 6000: 2, CKPT_TOTAL: 1}, written


@pytest.mark.parametrize("to", ["ranks", "horovodrun"])
def test_sigterm_stops_an_elastic_run_with_a_checkpoint(to, tmp_path):
    """SIGTERM to the ranks: every rank checkpoints at the same step and exits 75 (horovodrun exits 1 and reports
    their 75). SIGTERM to horovodrun: Horovod's elastic driver SIGTERMs each worker's shell's children and then the
    shell, and reports the shell's 143 (or 137) as exit 1, never the worker's own code (or, in a race of its own,
    exits 0); the checkpoint is written all the same, and no process of the job is left."""
    run_dir = tmp_path / "run"
    config = {k: v for k, v in CKPT_RUN.items() if k != "checkpoint_every"}  # the stop's checkpoint, only
    with started(_elastic_cmd(tmp_path, config, "--run-dir", run_dir), output=tmp_path / "job.out") as job:
        wait_until(lambda: any(r["env_steps"] >= 1000 for r in _rows(run_dir)), job, "the row at 1000")
        procs = job_processes(job)
        ranks = [p for p in procs if is_rank(p)]
        assert len(ranks) == 2
        for p in ranks if to == "ranks" else [psutil.Process(job.pid)]:
            p.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
        left = gone(procs) or naming(run_dir)  # before leaving the block, which kills what is left
    output = (tmp_path / "job.out").read_text()
    if to == "ranks":
        assert job.returncode == 1, output
        assert "Process 0 exit with status code 75." in output and "Process 1 exit with status code 75." in output
        assert "Exit code: 75" in output, output
    else:  # Horovod's elastic driver records an exit only after its shutdown began: workers faster than that leave
        # it no failure to report, and it exits 0 (docs/reliability.md). The job did stop, as the checks below show.
        assert job.returncode in (0, 1), output
    assert not left, "a process of the stopped job is left"
    assert output.count("hvd-dqn: stopped by SIGTERM at global env step") == 1, output  # rank 0 says it
    step = int(output.split("at global env step ")[1].split(";")[0])
    assert f"continue with: hvd-dqn train --elastic --resume {run_dir}" in output
    assert 1000 <= step < CKPT_TOTAL and step % 200 == 0  # a learning-phase boundary (100 vector steps of 2 ranks)
    assert _checkpoints(run_dir) == {step: 2}
    assert not (run_dir / "summary.json").exists()


def test_a_worker_lost_while_writing_a_checkpoint(tmp_path):
    """Rank 0's process ends in the middle of writing the checkpoint at 4,000: the survivor becomes rank 0 and
    takes over the run dir's lock; the half-written ckpt-4000.tmp is never renamed into place and is removed; the
    checkpoint still owed is written by the survivor at the next phase boundary, and the run completes alone. (A
    worker lost in the final checkpoint: test_a_worker_lost_while_writing_the_final_checkpoint.)"""
    run_dir = tmp_path / "run"
    proc = run(_elastic_cmd(tmp_path, CKPT_RUN, "--run-dir", run_dir), timeout=600, HVD_DQN_DIE_IN_CHECKPOINT="0:4000")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "rank 0 ends its process while writing the checkpoint of global env step 4000" in output
    assert "elastic reset: now rank 0 of 1" in output
    _summary(run_dir, 1)
    # 2 ranks to 4,000, where ckpt-4000 was cut short; alone from the commit at 4,000, whose next phase boundary is
    # 4,200 (200 vector steps of 1 rank): the owed checkpoint, then every 2,000 again
    assert _checkpoints(run_dir) == {2000: 2, 4200: 1, 6000: 1, CKPT_TOTAL: 1}


def test_a_worker_that_joins_mid_run_starts_from_rank_0s_weights(tmp_path):
    """A job of one worker, then a second host appears: the worker that joins must take rank 0's committed networks
    and optimizer slots (Horovod's TensorFlowState.sync broadcasts them only in a TF1 session), so the replicas are
    equal at the end, and both write the final checkpoint."""
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:1\n")
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {hosts}\n")
    discover.chmod(0o755)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**RUN, "total_env_steps": JOIN_TOTAL}.items()))
    run_dir = tmp_path / "run"
    cmd = [
        HOROVODRUN,
        "-np",
        "1",
        "--min-np",
        "1",
        "--max-np",
        "2",
        "--host-discovery-script",
        discover,
        "--network-interfaces",
        "lo",
        "--gloo",
        BIN / "hvd-dqn",
        "train",
        "--elastic",
        "--config",
        cfg,
        "--run-dir",
        run_dir,
    ]
    out = tmp_path / "job.out"
    with started(cmd, output=out, **JOIN_ENV) as job:
        wait_until(lambda: any(r["env_steps"] >= 3000 for r in _rows(run_dir)), job, "3000 env steps")
        hosts.write_text("localhost:1\n127.0.0.1:1\n")
        job.wait(timeout=600)
    output = out.read_text()
    assert job.returncode == 0, output
    summary = json.loads((run_dir / "summary.json").read_text())
    # after the join every vector step brings 2 env steps: the run ends at JOIN_TOTAL or one past it
    assert summary["world_size"] == 2 and summary["env_steps"] in (JOIN_TOTAL, JOIN_TOTAL + 1), summary
    assert len(summary["replica_checksums"]) == 2
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1], output[-3000:]
    sizes = [r["world_size"] for r in _rows(run_dir) if "world_size" in r]
    assert sizes[0] == 1 and sizes[-1] == 2 and sorted(sizes) == sizes, sizes
    assert _checkpoints(run_dir) == {summary["env_steps"]: 2}  # the joined worker's replay shard is in it
