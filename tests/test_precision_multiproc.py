"""Mixed precision under `horovodrun -np 2 --gloo`, for real: the replicas stay bit-identical with different data
on each rank (the MLP in bf16, and in fp16 with loss scaling around Horovod's optimizer), and a 2-rank Atari run in
mixed_bfloat16, with several CNN updates per TF call, is preempted, checkpointed and resumed in lockstep."""

import json
import sys

import pytest

from conftest import BIN, ROOT, run

pytestmark = pytest.mark.multiproc
HOROVODRUN = [BIN / "horovodrun", "-np", "2", "--gloo"]


def test_mixed_precision_replicas_stay_bit_identical_with_different_data():
    proc = run([*HOROVODRUN, sys.executable, ROOT / "tests" / "mp_precision.py"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    for name, res in result.items():
        assert res["updates"] == 6, name
        for key in ("start", "end", "target", "optimizer"):
            assert len(res[key]) == 2 and res[key][0] == res[key][1], (name, key, res)
        assert res["start"] != res["end"], name  # the updates did change the weights
    # Adam's iterations, m and v of each weight (17 for the dueling MLP); fp16 adds the loss scale and its counter
    assert result["mlp_bf16"]["optimizer_variables"] == 1 + 2 * 8
    assert result["mlp_fp16"]["optimizer_variables"] == 1 + 2 * 8 + 2
    assert result["mlp_fp16"]["loss_scale"] == 2.0**15  # no overflow in 6 updates: the initial scale


ATARI = {  # the gymnasium vector env (its emulators are checkpointed, so the resume is exact); 4 CNN updates per
    # learning phase, one TF call each
    "env_id": "ALE/Breakout-v5",
    "atari_vector_env": "gymnasium",
    "precision": "mixed_bfloat16",
    "total_env_steps": 400,
    "num_envs": 2,
    "max_episode_frames": 300,
    "terminal_on_life_loss": True,
    "batch_size": 16,
    "replay_capacity": 400,
    "learning_starts": 200,
    "train_every": 16,
    "updates_per_train": 4,
    "target_update_every": 8,
    "eval_every": 100000,
    "eval_episodes": 2,
    "log_every": 100,
    "seed": 2,
    "checkpoint_every_minutes": None,
}


def test_a_bf16_atari_run_is_preempted_and_resumes_in_lockstep(tmp_path):
    cfg = tmp_path / "bf16.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in ATARI.items()))
    run_dir = tmp_path / "run"
    train = [*HOROVODRUN, BIN / "hvd-dqn", "train"]
    proc = run([*train, "--config", cfg, "--run-dir", run_dir], timeout=600, HVD_DQN_PREEMPT_AT="0:300")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Exit code: 75" in out, out[-3000:]  # horovodrun reports the ranks' 75
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    step = int(ckpts[-1].split("-")[1])
    assert 300 <= step < 400 and not (run_dir / "summary.json").exists()

    proc = run([*train, "--resume", run_dir], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "start afresh" not in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 400 and summary["world_size"] == 2
    # a phase of 4 updates every 16 env steps from 208 to 400: 13 phases, however the run was split
    assert summary["updates"] == 4 * 13
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["precision"] == "mixed_bfloat16"
