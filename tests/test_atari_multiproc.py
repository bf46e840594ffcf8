"""Atari on 2 ranks under `horovodrun -np 2 --gloo`, for real: Pong through the CLI, with gradient updates; then
the trained model's evaluation episodes recorded as videos (`hvd-dqn evaluate` through cli.main in this process)."""

import json

import pytest

from conftest import BIN, HOROVODRUN, main_here, run

pytestmark = pytest.mark.multiproc


def test_two_rank_pong_smoke_run_updates_in_lockstep(tmp_path, capsys):
    cfg = tmp_path / "pong-tiny.yaml"
    cfg.write_text(
        "\n".join(
            [
                "env_id: ALE/Pong-v5",
                "total_env_steps: 400",
                "num_envs: 2",
                "learning_rate: 0.0001",
                "batch_size: 32",
                "replay_capacity: 400",
                "learning_starts: 200",
                "train_every: 8",
                "updates_per_train: 1",
                "target_update_every: 10",
                "eval_every: 100000",
                "eval_episodes: 2",
                "eval_epsilon: 0.05",
                "max_episode_frames: 300",
                "log_every: 200",
                "terminal_on_life_loss: true",
                "prioritized_replay: true",
                "n_step: 3",
            ]
        )
        + "\n"
    )
    run_dir = tmp_path / "run"
    proc = run(
        [HOROVODRUN, "-np", "2", "--gloo", BIN / "hvd-dqn", "train", "--config", cfg, "--run-dir", run_dir],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["env_steps"] == 400
    assert summary["updates"] == (400 - 200) // 8 + 1  # one update at each of env steps 200, 208, ..., 400
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["env_steps"], r["updates"]) for r in rows] == [(200, 1), (400, 26)]
    # The job is deterministic (two runs: the same replica checksums, losses and returns), so for this config the
    # values are exact. 26 updates teach Pong little: in 75 agent steps the opponent scores once in one episode and
    # not in the other. (-1.0 in both before prioritized replay let slots enter the sum-tree only once complete.)
    assert (rows[-1]["eval_episodes"], rows[-1]["eval_return_mean"], rows[-1]["eval_return_std"]) == (2, -0.5, 0.5)
    # The loss is exact for one CPU model only: prioritized replay draws its slots by priorities that are TD errors,
    # so a difference in a last bit (TensorFlow's kernels differ between CPUs, even with oneDNN capped at AVX2, see
    # docs/cluster.md) draws other slots, and the loss after 26 updates moves by a factor, not a digit (0.0037432 on the
    # AVX2 CPU that recorded it, 0.0072381 on an AVX-512 AMD EPYC, each the same in every run). So its range.
    assert 1e-3 < rows[-1]["losses/td_loss"] < 2e-2
    assert rows[-1]["charts/episodic_return"] == -0.5
    # 100 steps per env; episodes end at the 300-frame cap (< 75 steps), so each of the 4 envs finished one
    assert sum(r["charts/episodes"] for r in rows) == 4

    # evaluate the run with videos (`hvd-dqn evaluate`, in this process): the run's preprocessing and 300-frame cap,
    # epsilon 0.05 as in the literature
    videos = tmp_path / "videos"
    proc = main_here(capsys, "evaluate", run_dir, "--episodes", "2", "--epsilon", "0.05", "--video", videos)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALE/Pong-v5: 2 episodes, mean" in proc.stdout
    assert sorted(p.name for p in videos.glob("*.mp4")) == ["seed-12345-episode-0.mp4", "seed-12346-episode-0.mp4"]
    assert all(p.stat().st_size > 1000 for p in videos.glob("*.mp4"))
