"""Multi-process behaviour under `horovodrun -np 2`, for real: `hvd-dqn train` on two ranks. (The replicas' check
on different data, under both controllers, is a step of test_horovod_options.py's jobs.)"""

import json

import pytest

from conftest import BIN, HOROVODRUN, run
from hvd_dqn.config import Config
from run_schedule import expected_updates, points

pytestmark = pytest.mark.multiproc


def test_cli_two_ranks_trains_in_lockstep(tiny_cartpole, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(
        [HOROVODRUN, "-np", "2", "--gloo", BIN / "hvd-dqn", "train", "--config", tiny_cartpole, "--run-dir", run_dir],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = Config.from_yaml(tiny_cartpole)
    assert summary["world_size"] == 2
    # 2 ranks: a phase of 20 updates every 100 vector steps (200 env steps), from 600 to 3000: 13 phases
    assert summary["env_steps"] == 3000 and summary["updates"] == expected_updates(cfg, 2) == 20 * 13
    assert len(summary["replica_checksums"]) == 2
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = sorted(set(points(cfg, cfg.log_every, 2) + points(cfg, cfg.eval_every, 2)))
    assert [r["env_steps"] for r in rows] == logged == [1000, 1500, 2000, 3000]
    assert [r["updates"] for r in rows] == [expected_updates(cfg, 2, until=r["env_steps"]) for r in rows]
    evals = [r for r in rows if "eval_return_mean" in r]
    assert [r["env_steps"] for r in evals] == [1500, 3000] and all(r["eval_episodes"] == 10 for r in evals)
    # best/: the first evaluation with the highest mean, decided alike on both ranks and written by rank 0 alone
    top = max(r["eval_return_mean"] for r in evals)
    chosen = next(r for r in evals if r["eval_return_mean"] == top)
    meta = json.loads((run_dir / "best" / "eval.json").read_text())
    assert (meta["env_steps"], meta["eval_return_mean"], meta["eval_episodes"]) == (chosen["env_steps"], top, 10)
    assert (summary["best_env_steps"], summary["best_eval_return_mean"]) == (chosen["env_steps"], top)
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["config.json", "eval.json", "q_network.keras"]
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
