"""Checkpoint integrity across two ranks, for real under ``horovodrun -np 2`` with both controllers: the
manifest rank 0 writes (under Gloo) holds every rank's files with their sha256 (gathered from the ranks that wrote
them), and a same-size edit of rank 1's own file, which only rank 1 reads and hashes, stops the resume (under MPI)
on every rank with a line naming the file and the checkpoint to fall back to. A checkpoint does not depend on the
controller that wrote it, so one launch of each controller covers both: the hashes gathered to rank 0 under Gloo,
the verdict of rank 1's check reaching rank 0 under MPI."""

import hashlib
import json

import pytest

from conftest import BIN, run

CONFIG = {
    "env_id": "CartPole-v1",
    "total_env_steps": 2000,
    "hidden_sizes": [16],
    "learning_starts": 400,
    "train_every": 200,
    "updates_per_train": 5,
    "target_update_every": 10,
    "eval_every": 2000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 2000,
    "checkpoint_every": 1000,
    "seed": 4,
}


@pytest.mark.multiproc
def test_two_ranks_write_and_verify_sha256_manifests(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in CONFIG.items()))
    run_dir = tmp_path / "run"

    def horovodrun(controller):
        return [BIN / "horovodrun", "-np", "2", f"--{controller}", BIN / "hvd-dqn", "train"]

    proc = run([*horovodrun("gloo"), "--config", cfg, "--run-dir", run_dir], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = run_dir / "checkpoints" / "ckpt-2000"
    files = json.loads((ckpt / "COMPLETE").read_text())["files"]
    assert {"replay-rank0.npz", "replay-rank1.npz", "rank0.json", "rank1.json", "state.json"} <= files.keys()
    for name, entry in files.items():
        data = (ckpt / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name

    text = (ckpt / "rank1.json").read_text()
    assert text.count('"rank": 1') == 1
    (ckpt / "rank1.json").write_text(text.replace('"rank": 1', '"rank": 3'))  # same size
    proc = run([*horovodrun("mpi"), "--resume", run_dir], timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "hvd_dqn/" not in out, out  # no traceback of ours (horovodrun prints its own when a rank fails)
    assert (
        f"checkpoint {ckpt}: rank1.json is altered or damaged (its sha256 differs from the manifest's); "
        f"delete it to resume from ckpt-1000, the next older complete checkpoint"
    ) in out, out
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 2000  # the finished run's, untouched
