"""MinAtar (the optional, GPL-3 ``minatar`` extra): its envs as hvd-dqn makes them, the MinAtar network, its
configs, centred RMSProp as the reference runs it, and one short 2-rank run whose replicas must stay identical."""

import json
import sys

import gymnasium as gym
import numpy as np
import pytest

from conftest import BIN, HOROVODRUN, ROOT, run
from hvd_dqn.config import Config
from hvd_dqn.envids import MINATAR_MAX_EPISODE_STEPS
from hvd_dqn.envs import make_env, make_vector_env
from hvd_dqn.errors import UserError
from hvd_dqn.seeds import env_seeds
from run_schedule import learning_phases

pytest.importorskip("minatar", reason="the optional minatar extra: pip install '.[minatar]'")

CONFIGS = ROOT / "configs"
# game: (channels, minimal actions) of minatar 1.0.15
GAMES = {"Breakout": (4, 3), "SpaceInvaders": (6, 4), "Asterix": (4, 5), "Seaquest": (10, 6), "Freeway": (7, 3)}


@pytest.mark.parametrize("game", sorted(GAMES))
def test_env_gives_uint8_frames_of_0_and_1(game):
    channels, actions = GAMES[game]
    env = make_env(f"MinAtar/{game}-v1")
    assert env.observation_space == gym.spaces.Box(0, 1, (10, 10, channels), np.uint8)
    assert env.action_space == gym.spaces.Discrete(actions)
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        assert obs.dtype == np.uint8 and obs.shape == (10, 10, channels) and set(np.unique(obs)) <= {0, 1}
        obs, *_ = env.step(0)
    assert make_env(f"MinAtar/{game}-v0").action_space == gym.spaces.Discrete(6)  # -v0: all six actions
    # videos (evaluate --video): uint8 RGB, 16x16 pixels a cell, black where no channel is set
    env = make_env(f"MinAtar/{game}-v1", render_mode="rgb_array")
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame[::16, ::16].any(axis=2), obs.any(axis=2))


def trajectory(env, seed, steps=60):
    """Frames and rewards of ``steps`` steps of fixed actions from a reset with ``seed`` (sticky actions and the
    games' own randomness drawn from the env's seeded generator)."""
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step(t % env.action_space.n)
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            frames.append(obs)
    return np.stack(frames), rewards


def test_seeding_is_reproducible_and_ranks_differ():
    a, b = make_env("MinAtar/SpaceInvaders-v1"), make_env("MinAtar/SpaceInvaders-v1")
    frames_a, rewards_a = trajectory(a, 7)
    frames_b, rewards_b = trajectory(b, 7)
    assert np.array_equal(frames_a, frames_b) and rewards_a == rewards_b
    # each rank's envs get seeds of their own (env_seeds, as for every env): rank 1's episodes are not rank 0's
    seeds = [env_seeds(0, rank, 1)[0] for rank in (0, 1)]
    assert seeds[0] != seeds[1]
    assert not np.array_equal(trajectory(a, seeds[0])[0], trajectory(b, seeds[1])[0])
    envs = make_vector_env("MinAtar/SpaceInvaders-v1", 2)
    obs, _ = envs.reset(seed=env_seeds(0, 1, 2))
    assert obs.dtype == np.uint8 and obs.shape == (2, 10, 10, 6)


def test_episodes_are_capped_unless_the_config_says_otherwise():
    assert make_env("MinAtar/Breakout-v1").spec.max_episode_steps == MINATAR_MAX_EPISODE_STEPS == 27_000
    env = make_env("MinAtar/Breakout-v1", max_episode_steps=3)
    env.reset(seed=0)
    assert [env.step(0)[2:4] for _ in range(3)] == [(False, False), (False, False), (False, True)]
    assert make_env("MinAtar/Breakout-v1", max_episode_steps=None).spec.max_episode_steps is None
    # the package's own keywords pass through env_kwargs
    assert make_env("MinAtar/Breakout-v1", sticky_action_prob=0.0).unwrapped.game.sticky_action_prob == 0.0


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(gym, "registry", {})  # as if never registered ...
    monkeypatch.setitem(sys.modules, "minatar.gym", None)  # ... and not installed
    with pytest.raises(
        UserError,
        match=r"env_id: MinAtar ids need the optional minatar package \(GPL-3\): "
        r"pip install 'hvd-dqn\[minatar\]'",
    ):
        Config.from_dict({"env_id": "MinAtar/Breakout-v1"})


def test_network_is_the_papers_with_exact_parameter_count():
    from hvd_dqn.networks import build_q_network

    cfg = Config(env_id="MinAtar/Breakout-v1", seed=3)
    model = build_q_network((10, 10, 4), 3, cfg)
    assert model.input.dtype == "uint8" and model.input_shape == (None, 10, 10, 4) and model.output_shape == (None, 3)
    conv = model.get_layer("conv_0")
    assert (conv.filters, conv.kernel_size, conv.strides, conv.padding) == (16, (3, 3), (1, 1), "valid")
    # conv 3x3x4 -> 16 with biases; 8x8x16 = 1,024 features -> dense 128; 128 -> 3 Q-values
    assert model.count_params() == (3 * 3 * 4 * 16 + 16) + (8 * 8 * 16 * 128 + 128) + (128 * 3 + 3) == 132_179
    # PyTorch's default init, as the reference starts from: weights and biases within +-1/sqrt(fan_in)
    for name, fan_in in (("conv_0", 36), ("hidden_0", 1024), ("q_values", 128)):
        kernel, bias = model.get_layer(name).get_weights()
        assert np.abs(kernel).max() <= fan_in**-0.5 and np.abs(bias).max() <= fan_in**-0.5
        assert np.count_nonzero(bias) == bias.size  # drawn, not zeros
    # the forward pass in NumPy: the 0/1 frames enter as they are (cast, not scaled)
    obs = np.random.default_rng(0).integers(0, 2, (5, 10, 10, 4)).astype(np.uint8)
    kernel, bias = conv.get_weights()
    patches = np.stack([obs[:, i : i + 8, j : j + 8, :] for i in range(3) for j in range(3)], axis=3)  # (5,8,8,9,4)
    x = np.maximum(np.einsum("bhwkc,kcf->bhwf", patches.astype(np.float32), kernel.reshape(9, 4, 16)) + bias, 0)
    w1, b1 = model.get_layer("hidden_0").get_weights()
    w2, b2 = model.get_layer("q_values").get_weights()
    q = np.maximum(x.reshape(5, -1) @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(model(obs).numpy(), q, rtol=1e-5, atol=1e-6)
    # other envs keep their networks: Atari's frame stacks the Nature CNN
    assert "conv_2" in [layer.name for layer in build_q_network((4, 84, 84), 6, Config(env_id="ALE/Pong-v5")).layers]


@pytest.mark.parametrize(
    "name, env_id", [("minatar-breakout", "MinAtar/Breakout-v1"), ("minatar-spaceinvaders", "MinAtar/SpaceInvaders-v1")]
)
def test_configs_are_the_reference_settings(name, env_id):
    cfg = Config.from_yaml(CONFIGS / f"{name}.yaml")
    assert cfg.env_id == env_id and cfg.scaling == "sqrt" and cfg.num_envs == 1
    assert (cfg.optimizer, cfg.learning_rate, cfg.rmsprop_decay, cfg.rmsprop_epsilon) == ("rmsprop", 2.5e-4, 0.95, 0.01)
    assert (cfg.batch_size, cfg.replay_capacity, cfg.learning_starts, cfg.gamma) == (32, 100_000, 5_000, 0.99)
    assert (cfg.train_every, cfg.updates_per_train, cfg.target_update_every) == (1, 1, 1_000)
    assert (cfg.double_dqn, cfg.dueling, cfg.n_step, cfg.max_grad_norm, cfg.huber_delta) == (False, False, 1, None, 1.0)
    assert (cfg.eps_start, cfg.eps_end) == (1.0, 0.1)
    assert cfg.eps_decay_fraction * cfg.total_env_steps == pytest.approx(105_000)  # 5k random + 100k annealed
    assert cfg.env_kwargs == {"sticky_action_prob": 0.1, "difficulty_ramping": True, "max_episode_steps": 27_000}


def test_centred_rmsprop_steps_as_pytorch():
    from hvd_dqn.optimizers import build

    cfg = Config(env_id="MinAtar/Breakout-v1", optimizer="rmsprop", learning_rate=0.1, max_grad_norm=None)
    import tensorflow as tf

    optimizer = build(cfg, cfg.per_rank(1), allreduce=False)
    w = tf.Variable([1.0, -2.0, 0.5, 0.0])
    start = w.numpy().astype(np.float64)
    ref, under_root, mean_square, mean = start.copy(), start.copy(), np.zeros(4), np.zeros(4)
    for step in range(6):
        g = np.array([0.3, -1.0, 2.0, 1e-4]) * (step + 1) * (-1) ** step
        optimizer.apply_gradients([(tf.constant(g, tf.float32), w)])
        # torch.optim.RMSprop(alpha=0.95, eps=0.01, centered=True), momentum 0
        mean_square = 0.95 * mean_square + 0.05 * g * g
        mean = 0.95 * mean + 0.05 * g
        ref -= 0.1 * g / (np.sqrt(mean_square - mean**2) + 0.01)
        under_root -= 0.1 * g / np.sqrt(mean_square - mean**2 + 0.01)  # tf_keras' own RMSprop
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-5)
    # the tiny gradient's weight: epsilon under the root would have moved it about 10x less
    assert abs(w.numpy()[3]) > 5 * abs(under_root[3])
    with pytest.raises(UserError, match="scaling: adam_sqrt scales Adam's constants; optimizer rmsprop"):
        Config.from_dict({"env_id": "CartPole-v1", "optimizer": "rmsprop", "scaling": "adam_sqrt"})


@pytest.mark.multiproc
def test_two_ranks_train_with_identical_replicas(tmp_path):
    """One short run of minatar-breakout.yaml under horovodrun -np 2: RMSProp's updates allreduced through
    Horovod's optimizer, the replicas' weights bit-identical at the end."""
    run_dir = tmp_path / "run"
    overrides = [
        "total_env_steps=600",
        "learning_starts=400",
        "train_every=50",
        "updates_per_train=2",
        "target_update_every=4",
        "replay_capacity=1000",
        "eval_every=100000",
        "eval_episodes=2",
        "log_every=300",
        "eps_decay_fraction=0.5",
    ]
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            "--gloo",
            BIN / "hvd-dqn",
            "train",
            "--config",
            CONFIGS / "minatar-breakout.yaml",
            "--run-dir",
            run_dir,
            *sets,
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = Config.from_yaml(CONFIGS / "minatar-breakout.yaml", overrides)
    # 2 ranks, one env each: a phase every 25 vector steps from vector step 200 to 300, 5 phases; the config's
    # scaling sqrt makes each phase's 2 updates of 32 one of 32 per rank (global 64), RMSProp's constants to match
    assert summary["world_size"] == 2 and summary["env_steps"] == 600
    assert len(learning_phases(cfg, 2)) == 5 and summary["updates"] == 5
    assert len(summary["replica_checksums"]) == 2
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["scaling"] == "sqrt" and recorded["optimizer"] == "rmsprop"
    per_rank = recorded["per_rank"]
    assert (per_rank["batch_size"], per_rank["updates_per_phase"], per_rank["target_update_every"]) == (32, 1, 2)
    assert per_rank["learning_rate"] == pytest.approx(0.00025 * 2**0.5, rel=1e-12)
    assert per_rank["rmsprop_decay"] == pytest.approx(0.95**2, rel=1e-12)
    assert per_rank["rmsprop_epsilon"] == pytest.approx(0.01 / 2**0.5, rel=1e-12)
