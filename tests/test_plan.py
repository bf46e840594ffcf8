"""`hvd-dqn plan`: what a job of N ranks will do, in process through cli.main. The expected values are worked out
here from the configs' numbers (tests/run_schedule.py's arithmetic and literal figures), never through the
scaling module the plan is built on."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from hvd_dqn import cli, tasks
from hvd_dqn.config import Config
from hvd_dqn.plan import replay_bytes
from ps_config import BASE
from run_schedule import learning_phases, updates_per_phase

CONFIGS = ROOT / "configs"
FRAME = 84 * 84  # one stored Atari frame, uint8


def plan_json(capsys, config, n, *extra):
    assert cli.main(["plan", "--config", str(config), "--np", str(n), "--json", *extra]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1  # one JSON object, nothing else on stdout
    return json.loads(out)


@pytest.mark.parametrize(
    "n, updates, lr, target",
    [(1, 24_576, 0.002, 128), (2, 12_288, 0.004, 64), (8, 3_072, 0.016, 16), (16, 1_536, 0.032, 8)],
)
def test_cartpole_plan_is_the_weak_scaling_arithmetic(capsys, n, updates, lr, target):
    cfg = Config.from_yaml(CONFIGS / "cartpole.yaml")
    assert (cfg.scaling, cfg.batch_size, cfg.updates_per_train, cfg.target_update_every) == ("weak", 128, 128, 128)
    p = plan_json(capsys, CONFIGS / "cartpole.yaml", n)
    # weak: each rank the config's batch at N x its learning rate, in 1/N of the updates and target period
    assert p["world_size"] == n and p["scaling"] == "weak"
    assert p["batch_per_rank"] == 128 and p["global_batch"] == 128 * n
    assert p["learning_rate"] == pytest.approx(lr) == pytest.approx(cfg.learning_rate * n)
    assert p["learning_rate_final"] == 0.0  # lr_final_fraction 0: linear decay to 0
    assert p["updates_per_phase"] == 128 // n == updates_per_phase(cfg, n)
    assert p["target_update_every"] == target == 128 // n
    # 50,000 steps of 4 envs per rank: every phase of 256 env steps from learning_starts 1,000 on, 192 of them at
    # every N here; the updates a rank makes one after another shrink as 1/N
    assert p["learning_phases"] == len(learning_phases(cfg, n)) == 192
    assert p["updates_per_rank"] == updates == 192 * (128 // n)
    assert p["optimizer"] == "adam" and (p["adam_beta1"], p["adam_beta2"], p["adam_epsilon"]) == (0.9, 0.999, 1e-7)
    vector_step = 4 * n
    assert p["env_steps"] == -(-50_000 // vector_step) * vector_step and p["env_steps"] >= 50_000
    # the ring buffer of 4 float32 numbers per observation: obs + next_obs + action, reward, two flags, discount
    capacity = -(-100_000 // n)
    assert p["observation_shape"] == [4] and p["replay_capacity_per_rank"] == capacity
    assert p["replay_bytes_per_rank"] == capacity * (2 * 4 * 4 + 4 + 4 + 1 + 1 + 4)
    assert p["replay_bytes_per_host"] == p["ranks_per_host"] * p["replay_bytes_per_rank"] and p["replay_fits"]


IMAGE_CONFIGS = ["pong", "breakout", "roadrunner-100k", "boxing-100k", "minatar-breakout", "minatar-spaceinvaders"]
# the target period after scaling sqrt's division by N, rounded (MinAtar's 62.5 at N = 16 to even); the 100k
# configs' target_tau copies the online net after every update, a period of 1 at any N
SQRT_TARGET_EVERY = {
    "pong": {1: 250, 2: 125, 8: 31, 16: 16},
    "breakout": {1: 250, 2: 125, 8: 31, 16: 16},
    "roadrunner-100k": {1: 1, 2: 1, 8: 1, 16: 1},
    "boxing-100k": {1: 1, 2: 1, 8: 1, 16: 1},
    "minatar-breakout": {1: 1000, 2: 500, 8: 125, 16: 62},
    "minatar-spaceinvaders": {1: 1000, 2: 500, 8: 125, 16: 62},
}


def image_config(name):
    if name.startswith("minatar"):
        pytest.importorskip("minatar")
    return CONFIGS / f"{name}.yaml"


@pytest.mark.parametrize("n", [1, 2, 8, 16])
@pytest.mark.parametrize("name", IMAGE_CONFIGS)
def test_image_configs_plan_is_the_sqrt_arithmetic(capsys, name, n):
    """The image configs ship scaling sqrt: each rank samples the config's batch of 32 at sqrt(N) times its rate,
    the optimizer's decays to the power N and its epsilon / sqrt(N), and one update every N x train_every env
    steps where the config makes one every train_every: a chain of updates N times shorter."""
    path = image_config(name)
    cfg = Config.from_yaml(path)
    assert (cfg.scaling, cfg.scaling_replay_boost, cfg.scaling_lr_exponent) == ("sqrt", 1.0, 0.5)
    assert (cfg.num_envs, cfg.batch_size, cfg.updates_per_train, cfg.backward_passes_per_step) == (1, 32, 1, 1)
    p = plan_json(capsys, path, n)
    assert p["world_size"] == n and p["scaling"] == "sqrt"
    assert p["batch_per_rank"] == 32 and p["global_batch"] == 32 * n
    assert p["learning_rate"] == pytest.approx(cfg.learning_rate * math.sqrt(n), rel=1e-12)
    if cfg.optimizer == "adam":
        assert p["adam_beta1"] == pytest.approx(cfg.adam_beta1**n, rel=1e-12)
        assert p["adam_beta2"] == pytest.approx(cfg.adam_beta2**n, rel=1e-12)
        assert p["adam_epsilon"] == pytest.approx(cfg.adam_epsilon / math.sqrt(n), rel=1e-12)
    else:
        assert cfg.optimizer == "rmsprop"
        assert p["rmsprop_decay"] == pytest.approx(cfg.rmsprop_decay**n, rel=1e-12)
        assert p["rmsprop_epsilon"] == pytest.approx(cfg.rmsprop_epsilon / math.sqrt(n), rel=1e-12)
    period = cfg.train_every * n  # global env steps from one update to the next
    assert p["updates_per_phase"] == 1 and p["env_steps_per_phase"] == period
    # a phase at every multiple of the period from learning_starts to the end of the last vector step of N env steps
    end = -(-cfg.total_env_steps // n) * n
    phases = end // period - -(-cfg.learning_starts // period) + 1
    assert p["env_steps"] == end and p["learning_phases"] == phases and p["updates_per_rank"] == phases
    assert p["target_update_every"] == SQRT_TARGET_EVERY[name][n] and p["target_tau"] == cfg.target_tau
    assert p["samples_per_env_step"] == pytest.approx(phases * 32 * n / end, rel=1e-12)
    assert p["replay_capacity_per_rank"] == -(-cfg.replay_capacity // n)


@pytest.mark.parametrize(
    "name, updates_at_1, updates_at_8",
    [
        # an update every 4 env steps from 80k to 10M; at N = 8 one every 32
        ("pong", (10**7 - 80_000) // 4 + 1, (10**7 - 80_000) // 32 + 1),
        # an update every env step from 1,600 to 100k; at N = 8 one every 8
        ("roadrunner-100k", 100_000 - 1_600 + 1, (100_000 - 1_600) // 8 + 1),
        # an update every env step from 5,000 to 150k; at N = 8 one every 8
        ("minatar-breakout", 150_000 - 5_000 + 1, (150_000 - 5_000) // 8 + 1),
    ],
)
def test_sqrt_makes_the_chain_of_updates_8_times_shorter_at_8_ranks(capsys, name, updates_at_1, updates_at_8):
    path = image_config(name)
    assert plan_json(capsys, path, 1)["updates_per_rank"] == updates_at_1
    assert plan_json(capsys, path, 8)["updates_per_rank"] == updates_at_8
    assert updates_at_1 // 8 <= updates_at_8 <= updates_at_1 // 8 + 1


@pytest.mark.parametrize("name", IMAGE_CONFIGS)
def test_image_configs_at_one_rank_are_the_published_experiment(capsys, name):
    """At N = 1 scaling sqrt is the config as written: the same per-rank quantities as scaling strong, to the
    bit (tools/checksums.py's pong-np1 checks the training itself)."""
    path = image_config(name)
    sqrt, strong = Config.from_yaml(path), Config.from_yaml(path, ["scaling=strong"])
    assert sqrt.per_rank(1) == strong.per_rank(1)
    volatile = {"scaling", "available_memory_bytes"}  # the rule's name, and this host's free memory now
    plans = [plan_json(capsys, path, 1), plan_json(capsys, path, 1, "--set", "scaling=strong")]
    assert [p["scaling"] for p in plans] == ["sqrt", "strong"]
    assert [{k: v for k, v in p.items() if k not in volatile} for p in plans] == [
        {k: v for k, v in plans[1].items() if k not in volatile}
    ] * 2


@pytest.mark.parametrize("name", ["pong", "breakout"])
def test_atari_plan_at_8_ranks_under_strong(capsys, name):
    """pong.yaml and breakout.yaml under --set scaling=strong, the published experiment split over 8 ranks: 10M
    steps, an update every 4 env steps of the global batch of 32."""
    p = plan_json(capsys, CONFIGS / f"{name}.yaml", 8, "--ranks-per-host", "4", "--set", "scaling=strong")
    assert p["batch_per_rank"] == 32 // 8 and p["global_batch"] == 32 and p["learning_rate"] == 0.0001
    # 8 ranks step 8 envs a vector step, two train_every periods of 4: a phase of 2 updates each vector step,
    # from vector step 80,000 / 8 = 10,000 to 10M / 8 = 1,250,000
    assert p["updates_per_phase"] == 2 and p["env_steps_per_phase"] == 8
    assert p["learning_phases"] == 1_250_000 - 10_000 + 1
    assert p["updates_per_rank"] == 2 * 1_240_001 == 2_480_002
    assert p["target_update_every"] == 250 and p["target_tau"] is None
    assert p["adam_epsilon"] == 1e-8 and p["max_grad_norm"] is None
    # the frame replay: 1M / 8 slots of one 84x84 frame and 14 bytes of columns, plus the shard's discount
    assert p["observation_shape"] == [4, 84, 84] and p["replay_capacity_per_rank"] == 125_000
    assert p["replay_bytes_per_rank"] == 125_000 * (FRAME + 14 + 4) == 884_250_000
    assert p["ranks_per_host"] == 4 and p["replay_bytes_per_host"] == 4 * 884_250_000


def test_roadrunner_100k_plan_at_8_ranks_under_strong(capsys):
    p = plan_json(capsys, CONFIGS / "roadrunner-100k.yaml", 8, "--set", "scaling=strong")
    # an update per env step: 8 per vector step of 8 ranks, from step 1,600 (vector step 200) to 100k (12,500)
    assert p["batch_per_rank"] == 4 and p["global_batch"] == 32
    assert p["updates_per_phase"] == 8 and p["learning_phases"] == 12_500 - 200 + 1
    assert p["updates_per_rank"] == 8 * 12_301 == 98_408
    assert p["target_tau"] == 1.0
    assert p["replay_capacity_per_rank"] == 12_500 and p["replay_bytes_per_rank"] == 12_500 * (FRAME + 14 + 4)


@pytest.mark.parametrize("name, n", [("minatar-breakout", 2), ("minatar-spaceinvaders", 4)])
def test_minatar_plan_counts_uint8_frames(capsys, name, n):
    pytest.importorskip("minatar")
    p = plan_json(capsys, CONFIGS / f"{name}.yaml", n)
    channels = p["observation_shape"][2]
    assert p["observation_shape"] == [10, 10, channels]
    # obs and next_obs as one byte per cell, not four
    capacity = 100_000 // n
    assert p["replay_capacity_per_rank"] == capacity
    assert p["replay_bytes_per_rank"] == capacity * (2 * 100 * channels + 10 + 4)


@pytest.mark.parametrize(
    "env_id, extra",
    [
        ("CartPole-v1", {}),
        ("CartPole-v1", {"prioritized_replay": True, "n_step": 3}),
        ("ALE/Pong-v5", {"num_envs": 3, "n_step": 2}),
        ("ALE/Pong-v5", {"prioritized_replay": True}),
        ("MinAtar/Breakout-v1", {}),
    ],
)
def test_replay_bytes_are_what_the_trainer_allocates(env_id, extra):
    if env_id.startswith("MinAtar/"):
        pytest.importorskip("minatar")
    cfg = Config(env_id=env_id, replay_capacity=1000, batch_size=32, **extra)
    shape = {"CartPole-v1": (4,), "ALE/Pong-v5": (4, 84, 84), "MinAtar/Breakout-v1": (10, 10, 4)}[env_id]
    shard = tasks.for_config(cfg).make_replay(1000, shape, 1)
    allocated = shard.buffer.nbytes + shard.discount.nbytes + (shard.tree._tree.nbytes if shard.tree else 0)
    assert replay_bytes(cfg, 1000, shape) == (shard.capacity, shard.buffer.nbytes, allocated)
    if env_id.startswith("MinAtar/"):
        assert shard.buffer._data["obs"].dtype == np.uint8 and shard.buffer.nbytes == 1000 * (2 * 400 + 10)


def test_table_and_memory_verdict(capsys):
    assert cli.main(["plan", "--config", str(CONFIGS / "cartpole.yaml"), "--np", "2", "--ranks-per-host", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch per rank          128 (global batch 256)" in out
    assert "updates per rank        12,288 one after another, in 192 phases" in out
    assert out.rstrip().endswith("available here: fits")
    p = plan_json(capsys, CONFIGS / "cartpole.yaml", 2, "--set", "replay_capacity=1000000000000")
    assert p["replay_bytes_per_rank"] == 500_000_000_000 * 46 and p["replay_fits"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--np", "0"], "hvd-dqn: error: --np must be at least 1, got 0"),
        (["--np", "3"], "hvd-dqn: error: config: updates_per_train 128 is not divisible by the 3 ranks"),
        (["--np", "2", "--set", "batch_sizee=3"], "batch_sizee: unknown key"),
        (["--np", "2", "--ranks-per-host", "3"], "hvd-dqn: error: --ranks-per-host must be 1 to --np (2), got 3"),
        (["--np", "2", "--set", "learning_starts=49999"], "no learning phase falls due"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert cli.main(["plan", "--config", str(CONFIGS / "cartpole.yaml"), *args, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


def test_missing_config_is_one_line(capsys, tmp_path):
    assert cli.main(["plan", "--config", str(tmp_path / "nope.yaml"), "--np", "2"]) == 2
    assert capsys.readouterr().err.strip() == f"hvd-dqn: error: config file not found: {Path(tmp_path / 'nope.yaml')}"


@pytest.mark.parametrize("n, mode", [(3, "sync"), (5, "sync"), (5, "async")])
def test_parameter_server_plan_splits_over_the_workers(capsys, n, mode):
    """Rank 0 serves and takes no env steps: the schedule is weak scaling's over the N - 1 workers (pstrainer's
    ``config.per_rank(N - 1)``), which is why 3 ranks plan where allreduce refuses them (128 / 3)."""
    cfg = Config.from_yaml(CONFIGS / "cartpole.yaml")
    workers = n - 1
    p = plan_json(capsys, CONFIGS / "cartpole.yaml", n, "--set", f"parameter_server={mode}")
    assert (p["world_size"], p["workers"], p["parameter_server"]) == (n, workers, mode)
    assert p["ps_max_staleness"] == (cfg.ps_max_staleness if mode == "async" else None)
    assert p["batch_per_rank"] == 128 and p["learning_rate"] == pytest.approx(0.002 * workers)
    # sync: one optimizer step takes a minibatch from every worker; async: one worker's
    assert p["global_batch"] == (128 * workers if mode == "sync" else 128)
    assert p["updates_per_phase"] == 128 // workers == updates_per_phase(cfg, workers)
    assert p["target_update_every"] == 128 // workers
    assert p["learning_phases"] == len(learning_phases(cfg, workers)) == 192
    assert p["updates_per_rank"] == 192 * (128 // workers)
    assert p["gradients_per_worker"] == (192 * (128 // workers) if mode == "sync" else None)
    assert p["env_steps"] == 50_000 and p["env_steps_per_rank"] == 50_000 // workers
    assert p["replay_capacity_per_rank"] == -(-100_000 // workers)
    assert p["samples_per_env_step"] == pytest.approx(p["updates_per_rank"] * p["global_batch"] / 50_000)


def test_parameter_server_plan_is_what_the_3_rank_launch_does(capsys, tmp_path):
    """tests/mp_paramserver.py's training config at -np 3: the 260 updates its sync run's summary reports
    (test_paramserver_multiproc.py), 20 a phase in 13 phases."""
    config = tmp_path / "ps.yaml"
    config.write_text(json.dumps(BASE))
    p = plan_json(capsys, config, 3, "--set", "parameter_server=sync")
    assert (p["updates_per_phase"], p["learning_phases"], p["updates_per_rank"]) == (20, 13, 260)
    # scaling strong (the default): the config's batch 32 split over the 2 workers
    assert p["batch_per_rank"] == 16 and p["global_batch"] == 32 and p["gradients_per_worker"] == 260
    assert p["env_steps"] == 3000 and p["env_steps_per_rank"] == 1500
    assert cli.main(["plan", "--config", str(config), "--np", "3", "--set", "parameter_server=sync"]) == 0
    out = capsys.readouterr().out
    assert "ranks              3 (scaling strong): the server and 2 workers" in out
    assert "batch per worker   16 (global batch 32)" in out
    assert "server updates     260 one after another, in 13 phases" in out and "computes 260 gradients" in out


def test_parameter_server_plan_refuses_one_rank(capsys):
    args = ["plan", "--config", str(CONFIGS / "cartpole.yaml"), "--np", "1", "--set", "parameter_server=async"]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "parameter_server: async needs at least 2 ranks" in captured.err
