"""The CLI end to end on one rank: a short CartPole run (a real hvd-dqn process) that must reach gradient updates
and write its outputs; the refusals and a second short run through cli.main in this process. Whether the default
config learns is a benchmark's question (benchmarks/cartpole.py), not a test's."""

import json

from conftest import BIN, main_here, run
from hvd_dqn.config import Config
from run_schedule import expected_updates, points


def test_train_smoke_runs_updates_and_writes_outputs(tiny_cartpole, tmp_path, capsys):
    """A real `hvd-dqn train` process at np=1: exit code 0, its summary, metrics rows, progress lines and saved
    config; then a second run into the same dir refused in one line (cli.main here). That the saved q_network.keras
    loads where Horovod cannot be imported is test_user_surface.test_export_loads_and_serves_without_horovod's."""
    run_dir = tmp_path / "run"
    proc = run([BIN / "hvd-dqn", "train", "--config", tiny_cartpole, "--run-dir", run_dir, "--set", "seed=3"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = Config.from_yaml(tiny_cartpole)
    assert summary["world_size"] == 1 and summary["env_steps"] == cfg.total_env_steps == 3000
    # learning_starts 500, a phase of 20 updates every 200 steps: phases at 600, 800, ..., 3000, 13 of them
    assert summary["updates"] == expected_updates(cfg) == 20 * 13
    assert len(summary["replica_checksums"]) == 1
    # 260 updates do not teach CartPole: the greedy policy falls within about 10 steps (a random one lasts about
    # 22), so this is no learning check (benchmarks/cartpole.py is). A run at np=1
    # is deterministic (two runs: the same replica checksum), so for seed 3 the evaluation's mean is exact; it
    # changes when the learner's arithmetic, the evaluation seeds or the env change.
    assert summary["final_eval_return_mean"] == 9.5
    assert summary["reward_threshold"] == 475.0 and summary["solved_env_steps"] is None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all({"env_steps", "wall_s"} <= row.keys() for row in rows)
    # a row every log_every (1000) steps and at each evaluation (every 1500 steps and at the end)
    assert (
        [r["env_steps"] for r in rows]
        == sorted(set(points(cfg, cfg.log_every) + points(cfg, cfg.eval_every)))
        == [1000, 1500, 2000, 3000]
    )
    assert [r["env_steps"] for r in rows if "eval_return_mean" in r] == points(cfg, cfg.eval_every) == [1500, 3000]
    assert (
        [r["updates"] for r in rows]
        == [expected_updates(cfg, until=r["env_steps"]) for r in rows]
        == [60, 100, 160, 260]
    )
    assert rows[-1]["eval_return_mean"] == summary["final_eval_return_mean"] and rows[-1]["eval_episodes"] == 10
    assert "hvd-dqn summary:" in proc.stdout
    # stdout is a pipe, not a terminal: one plain progress line per log point, no tqdm bar redrawn with \r
    progress = [line for line in proc.stdout.splitlines() if line.startswith("hvd-dqn | steps")]
    assert len(progress) == len(rows) and "\r" not in proc.stdout
    assert json.loads((run_dir / "config.json").read_text())["env_id"] == "CartPole-v1"

    # a new run into the same dir would mix with this one's files: refused, nothing touched
    before = (run_dir / "metrics.jsonl").read_text()
    again = main_here(capsys, "train", "--config", tiny_cartpole, "--run-dir", run_dir)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        f"hvd-dqn: error: run dir {run_dir} holds the checkpoints of an earlier run: continue it with "
        f"--resume {run_dir}, or train into another --run-dir"
    )
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_a_new_run_starts_its_own_metrics_file(tiny_cartpole, tmp_path, capsys):
    """A run dir without checkpoints (say, of a run that failed early) is trained into afresh: its old
    metrics.jsonl rows do not stay in front of the new run's."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"env_steps": 99999, "wall_s": 1.0}) + "\n")
    proc = main_here(
        capsys,
        "train",
        "--config",
        tiny_cartpole,
        "--run-dir",
        run_dir,
        "--set",
        "total_env_steps=1000",
        "--set",
        "eval_every=1000",
    )
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line)["env_steps"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1000]


def test_run_dir_that_cannot_be_created_is_a_one_line_error(tiny_cartpole, tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    proc = main_here(capsys, "train", "--config", tiny_cartpole, "--run-dir", blocked / "run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("hvd-dqn: error: run dir")
    assert "Traceback" not in proc.stderr
