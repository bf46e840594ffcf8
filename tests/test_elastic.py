"""Elastic training for real: `horovodrun --min-np 1 --max-np 2` with a host discovery script, a worker killed
mid-run with SIGKILL; the survivor rolls back to the last commit, goes on alone and completes the run."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, run_env
from run_schedule import expected_updates

pytestmark = pytest.mark.multiproc
TOTAL = 16000
RUN = {"env_id": "CartPole-v1", "total_env_steps": TOTAL, "hidden_sizes": [32, 32], "learning_starts": 500,
       "train_every": 200, "updates_per_train": 10, "target_update_every": 30, "eval_every": 4000,
       "eval_episodes": 2, "log_every": 1000, "batch_size": 32, "replay_capacity": 5000,
       "policy_ema": 0.9}  # the policy's weight average is committed and synced too
# Two "hosts" of one slot, both this machine: the host of a failed worker is blacklisted, the other one goes on
# (with one host of two slots, the failure would blacklist the only host).
DISCOVERY = "#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n"


def _rows(run_dir: Path):
    metrics = run_dir / "metrics.jsonl"
    return [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` among the launcher's descendants (never another job's process)."""
    out = subprocess.run(["ps", "-ww", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    parent, args_of = {}, {}
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        parent[int(pid)], args_of[int(pid)] = int(ppid), args

    def descends(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == launcher_pid:
                return True
        return False

    for pid, args in args_of.items():
        if "hvd-dqn train --elastic" in args and args.split()[0].endswith("python") and descends(pid):
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if env.get("HOROVOD_RANK") == str(rank):
                return pid
    return None


def test_an_elastic_run_survives_a_killed_worker(tmp_path):
    cfg, discover, run_dir = tmp_path / "run.yaml", tmp_path / "discover.sh", tmp_path / "run"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in RUN.items()))
    discover.write_text(DISCOVERY)
    discover.chmod(0o755)
    cmd = [BIN / "horovodrun", "-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script", discover,
           "--network-interfaces", "lo", "--gloo", BIN / "hvd-dqn", "train", "--elastic", "--config", cfg,
           "--run-dir", run_dir]
    job = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=run_env(), cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(r["env_steps"] >= 4000 for r in _rows(run_dir)):
            assert job.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
            time.sleep(0.2)
        victim = _worker_of_rank(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    assert "elastic reset: now rank 0 of 1" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    # alone at the end, the survivor counts 1 env step per vector step: it stops at TOTAL exactly
    assert summary["world_size"] == 1 and summary["env_steps"] == TOTAL
    # the updates do not depend on where the kill fell: whatever commit the survivor rolled back to (any phase of
    # the 2-rank part, vector steps 300 to 8000), 78 phases of 10 updates, as in a run without a kill
    expected = expected_updates(RUN)
    assert expected == 780 and {_elastic_updates(c) for c in range(300, TOTAL // 2 + 1, 100)} == {expected}
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

    cfg = Config.from_yaml(ROOT / "configs" / "pong.yaml", ["replay_capacity=2000", "eval_episodes=3",
                                                            "max_episode_frames=5000", "noop_max=7"])
    trainer = ElasticTrainer(cfg, run_dir=tmp_path / "run")
    trainer.world = distributed.init()
    trainer._setup()
    try:
        trainer.evaluator.load_state_dict({"count": 5})
        trainer._on_reset()
        envs = trainer.evaluator.envs
        assert len(envs) == 3 and trainer.evaluator.state_dict() == {"count": 5}
        for env in envs:
            ale = env.unwrapped.ale
            assert env.env.env.prob == 0.0  # StickyActions, below AtariPreprocessing
            assert ale.getInt("max_num_frames_per_episode") == 5000
            assert env.env.noop_max == 7 and env.observation_space.shape == (4, 84, 84)
    finally:
        trainer._release()
        trainer._close()
