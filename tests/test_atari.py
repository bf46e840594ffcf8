"""The Atari pipeline: preprocessing, the frame-once replay against real env stacks, the Nature CNN, seeding."""

import gymnasium as gym
import numpy as np
import pytest

from conftest import BIN, ROOT, run
from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.envs import make_env, make_vector_env
from hvd_dqn.errors import UserError
from hvd_dqn.replay import FrameReplayBuffer, ReplayShard, available_memory
from hvd_dqn.seeds import env_seeds
from probes import q_values


def test_preprocessing_shape_dtype_and_frame_skip():
    env = make_env("ALE/Pong-v5", sticky_action_prob=0.0)
    obs, info = env.reset(seed=1)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert not obs[:3].any() and obs[3].any()  # an episode's first stack: zero padding, then the first frame
    frames = [info["episode_frame_number"]]
    for _ in range(5):
        next_obs, _, _, _, info = env.step(env.action_space.sample())
        frames.append(info["episode_frame_number"])
        np.testing.assert_array_equal(next_obs[:3], obs[1:])  # the stack shifts by one frame per step
        obs = next_obs
    assert np.diff(frames).tolist() == [4] * 5  # frame skip 4: four emulator frames per agent step
    assert 1 <= frames[0] <= 30  # the no-op start (up to noop_max frames) happened before the first frame
    env.close()


def test_episode_is_truncated_at_max_episode_frames():
    env = make_env("ALE/Pong-v5", max_episode_frames=200)
    env.reset(seed=0)
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
    assert truncated and not terminated and info["episode_frame_number"] <= 200 and steps <= 50


def test_both_vector_envs_give_the_same_frames():
    """ale-py's C++ vector env and gymnasium's wrappers (used for evaluation and videos): the same frames, bit
    for bit, and the same rewards, for the same actions (no random no-ops or sticky actions to draw apart)."""
    options = {"noop_max": 0, "sticky_action_prob": 0.0}
    ale = make_vector_env("ALE/Breakout-v5", 1, backend="ale", **options)
    gym_env = make_env("ALE/Breakout-v5", **options)
    obs, _ = ale.reset(seed=[0])
    single, _ = gym_env.reset(seed=0)
    np.testing.assert_array_equal(obs[0], single)
    rng = np.random.default_rng(0)
    for _ in range(150):
        action = int(rng.integers(0, 4))
        obs, reward, terminated, _, _ = ale.step(np.array([action]))
        single, single_reward, single_terminated, _, _ = gym_env.step(action)
        np.testing.assert_array_equal(obs[0], single)
        assert (reward[0], terminated[0]) == (single_reward, single_terminated)
    ale.close()
    gym_env.close()


def _step_alike(a, b, actions):
    """Step vector envs ``a`` and ``b`` with ``actions``, asserting every output equal; the steps' flags."""
    ended, lost = 0, 0
    lives = None
    for action in actions:
        out_a, out_b = a.step(action), b.step(action)
        for x, y in zip(out_a[:4], out_b[:4]):
            np.testing.assert_array_equal(x, y)
        assert out_a[4].keys() == out_b[4].keys()
        for key in out_a[4]:
            np.testing.assert_array_equal(out_a[4][key], out_b[4][key])
        ended += int((out_a[2] | out_a[3]).sum())
        lost += 0 if lives is None else int((out_a[4]["lives"] < lives).sum())
        lives = out_a[4]["lives"]
    return ended, lost


def test_captured_atari_env_state_goes_on_with_the_same_frames():
    """The gymnasium Atari vector env's state (emulators with their RNG, sticky actions, no-op draws, frame stacks,
    which env resets at its next step), through JSON into another such env that played other games: both then
    give the same frames, rewards, flags and infos, through lost lives and episode ends (a 300-frame cap), from
    captures mid-episode and while an env waits for its reset."""
    import json

    from hvd_dqn import envstate

    def make():
        return make_vector_env(
            "ALE/Breakout-v5", 2, backend="gymnasium", max_episode_frames=300, sticky_action_prob=0.25
        )

    envs, other = make(), make()
    envs.reset(seed=[1, 2])
    other.reset(seed=[7, 8])
    rng = np.random.default_rng(0)
    totals = np.zeros(2, int)
    for k in range(24):  # many captures: one in five or so lands where a sticky action shows
        for _ in range(rng.integers(3, 15)):  # the two drift apart
            envs.step(rng.integers(0, 4, size=2))
            other.step(rng.integers(0, 4, size=2))
        while k % 2 and not envs._autoreset_envs.any():  # every other capture: an episode has just ended
            envs.step(rng.integers(0, 4, size=2))
        envstate.restore(other, json.loads(json.dumps(envstate.capture(envs))))
        totals += _step_alike(envs, other, rng.integers(0, 4, size=(20, 2)))
    envs.close()
    other.close()
    assert totals[0] >= 3 and totals[1] >= 5, totals  # episode ends and lost lives after the captures


def test_env_state_is_not_captured_where_it_cannot_be_restored():
    """The C++ vector env exposes no state; an emulator making its own sticky actions would not go on exactly."""
    from hvd_dqn import envstate

    ale = make_vector_env("ALE/Pong-v5", 1, backend="ale")
    assert envstate.capture(ale) is None and "atari_vector_env: gymnasium" in envstate.why_not(ale)
    ale.close()
    own_sticky = gym.vector.SyncVectorEnv([lambda: gym.make("ALE/Pong-v5", repeat_action_probability=0.25)])
    assert envstate.capture(own_sticky) is None and "sticky actions" in envstate.why_not(own_sticky)
    own_sticky.close()


@pytest.mark.parametrize("backend", ["gymnasium", "ale"])
def test_a_resumed_actor_goes_on_with_its_episodes_or_says_why_not(backend):
    """An Atari Actor's state (and its task's lives) through JSON into a fresh Actor: on the gymnasium vector env
    both go on alike; ale-py's C++ vector env cannot be saved, so its episodes restart, with the reason."""
    import json

    from hvd_dqn import tasks
    from hvd_dqn.actor import Actor

    cfg = Config(
        env_id="ALE/Breakout-v5",
        num_envs=2,
        atari_vector_env=backend,
        terminal_on_life_loss=True,
        max_episode_frames=300,
    )

    def make(seeds):
        task = tasks.for_config(cfg)
        envs = make_vector_env(cfg.env_id, 2, backend=backend, **task.env_options)
        return Actor(envs, task, task.make_replay(200, (4, 84, 84), 1), np.random.default_rng(0), seeds)

    def q_fn(obs):
        return obs.reshape(len(obs), 4, -1).mean(axis=-1)  # some policy of the frames

    actors = [make([1, 2]), make([3, 4])]
    for _ in range(40):
        actors[0].step(q_fn, np.full(2, 0.5))
    actors[1].task.load_state_dict(actors[0].task.state_dict())
    actors[1].load_state_dict(json.loads(json.dumps(actors[0].state_dict())), restart_seeds=[5, 6])
    if backend == "ale":
        assert "atari_vector_env: gymnasium" in actors[1].restart_reason
        assert not np.array_equal(actors[1].obs, actors[0].obs)
        return
    assert actors[1].restart_reason is None
    for _ in range(60):
        for actor in actors:
            actor.step(q_fn, np.full(2, 0.5))
        np.testing.assert_array_equal(actors[0].obs, actors[1].obs)
        np.testing.assert_array_equal(actors[0].task.lives, actors[1].task.lives)
    assert actors[0].take_finished_returns() == actors[1].take_finished_returns() != []


@pytest.mark.parametrize(
    "backend, padding, n_step",
    [("ale", "zero", 1), ("ale", "zero", 3), ("gymnasium", "zero", 1), ("gymnasium", "reset", 3)],
)
def test_replay_stacks_equal_the_env_stacks(backend, padding, n_step):
    """A real 2-env Breakout vector env (random play: episodes end by game over and by the frame cap; lives are
    lost), every step into a 40-slot frame replay that wraps around many times. After every step: exactly the
    transitions that are complete (n steps written, or fewer before an episode end) and whose frames are still
    in the ring are sampleable, and each one, rebuilt from single frames, equals what the env returned: stacks,
    n-step reward, flags and discount."""
    gamma = 0.9
    envs = make_vector_env(
        "ALE/Breakout-v5", 2, backend=backend, max_episode_frames=1000, sticky_action_prob=0.0, frame_padding=padding
    )
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    replay = FrameReplayBuffer(40, 2, (84, 84), stack=4, padding=padding, n_step=n_step, gamma=gamma)
    rng = np.random.default_rng(0)
    obs, info = envs.reset(seed=[11, 12])
    replay.start(obs)
    lives, ended, ep_index = info["lives"], np.zeros(2, bool), np.zeros(2, int)  # start(): frames at ep 0
    steps = [[], []]  # each env's transitions in order: (obs, action, reward, next_obs, terminated, truncated)
    stored = {}  # slot -> (env, index in steps[env], row written, steps of its episode up to it)
    kinds = {"terminated": 0, "truncated": 0, "life_loss": 0, "checked": 0, "short": 0}
    for _ in range(700):
        action = rng.integers(0, 4, size=2)
        next_obs, reward, terminated, truncated, info = envs.step(action)
        life_loss = info["lives"] < lives
        lives = info["lives"]
        stored_terminated = terminated | life_loss  # terminal_on_life_loss: the stack must still go on
        slots = replay.add(
            obs, action, reward, next_obs, stored_terminated, truncated, episode_end=terminated | truncated
        )
        for j, slot in enumerate(slots):
            stored.pop(slot, None)
            ep_index[j] = 0 if ended[j] else ep_index[j] + 1
            if not ended[j]:  # the step after an episode's end is the reset: no transition
                steps[j].append((obs[j], action[j], reward[j], next_obs[j], stored_terminated[j], truncated[j]))
                stored[slot] = (j, len(steps[j]) - 1, replay.rows_written - 1, ep_index[j])
                kinds["terminated"] += bool(terminated[j])
                kinds["truncated"] += bool(truncated[j])
                kinds["life_loss"] += bool(life_loss[j] and not terminated[j])
        ended = terminated | truncated
        expected = {}
        for slot, (j, i, row, ep) in stored.items():
            chain = []
            for k in range(n_step):
                if i + k == len(steps[j]):
                    break  # the n-step transition is not complete yet
                chain.append(steps[j][i + k])
                if chain[-1][4] or chain[-1][5]:
                    break  # the episode ended, or a lost life cut the bootstrap
            complete = len(chain) == n_step or chain[-1][4] or chain[-1][5]
            if complete and row - min(ep, 4) >= replay.rows_written - replay.rows:  # its frames still stored
                expected[slot] = chain
        sampleable = np.flatnonzero(replay.sampleable(np.arange(len(replay))))
        assert sorted(expected) == sampleable.tolist()
        batch, discount = replay.gather_with_discount(sampleable)
        for k, slot in enumerate(sampleable):
            chain = expected[slot]
            np.testing.assert_array_equal(batch.obs[k], chain[0][0])
            np.testing.assert_array_equal(batch.next_obs[k], chain[-1][3])
            assert batch.action[k] == chain[0][1]
            assert batch.reward[k] == pytest.approx(sum(gamma**m * c[2] for m, c in enumerate(chain)))
            assert (batch.terminated[k], batch.truncated[k]) == (chain[-1][4], chain[-1][5])
            assert discount[k] == pytest.approx(gamma ** len(chain))
            kinds["checked"] += 1
            kinds["short"] += len(chain) < n_step
        obs = next_obs
    envs.close()
    assert replay.rows_written > 10 * replay.rows  # wrapped around many times
    assert kinds["terminated"] >= 2 and kinds["truncated"] >= 1 and kinds["life_loss"] >= 4, kinds
    assert kinds["checked"] > 10_000 and (n_step == 1 or kinds["short"] > 100), kinds
    assert batch.obs.dtype == np.uint8 and batch.obs.shape[1:] == (4, 84, 84)


def _synthetic_replay(capacity=30, num_envs=3, steps=50, episode=7, **kwargs):
    """Tiny 2x2 frames; env j's episodes end at steps t with (t + j) % episode == 0."""
    replay = FrameReplayBuffer(capacity, num_envs, (2, 2), stack=4, **kwargs)
    stack = np.zeros((num_envs, 4, 2, 2), np.uint8)
    replay.start(stack + 1)
    for t in range(steps):
        ended = np.array([(t + j) % episode == 0 for j in range(num_envs)])
        replay.add(
            stack, np.zeros(num_envs, np.int32), np.ones(num_envs), stack + t % 200, ended, np.zeros(num_envs, bool)
        )
    return replay


def test_shard_samples_only_complete_transitions_uniform_and_prioritized():
    for prioritized in (False, True):
        replay = _synthetic_replay()
        shard = ReplayShard(replay, 0.99, prioritized=prioritized)
        rng = np.random.default_rng(0)
        for _ in range(20):
            _, discount, weights, idx = shard.sample(rng, (2, 16))
            assert replay.sampleable(idx).all() and np.isfinite(weights).all()
            shard.update_priorities(idx, rng.random(idx.shape))
        assert not replay.sampleable(np.arange(len(replay))).all()  # there were slots to avoid


def test_frame_replay_checkpoint_round_trip_samples_the_same_and_goes_on_the_same():
    for steps in (20, 50):  # before and after the ring wrapped
        replay = _synthetic_replay(steps=steps, n_step=3, gamma=0.9)
        state = {k: np.array(v) for k, v in replay.state_dict().items()}
        copy = FrameReplayBuffer(30, 3, (2, 2), stack=4, n_step=3, gamma=0.9)
        copy.load_state_dict(state)
        assert len(copy) == len(replay) and copy.pos == replay.pos
        idx = np.arange(len(replay))[replay.sampleable(np.arange(len(replay)))]
        assert len(idx) > 0 and (copy.sampleable(idx)).all()
        (a, da), (b, db) = replay.gather_with_discount(idx), copy.gather_with_discount(idx)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) and np.array_equal(da, db)
        stack = np.full((3, 4, 2, 2), 9, np.uint8)  # both go on identically after the restore
        for buf in (replay, copy):
            buf.add(stack, np.ones(3, np.int32), np.ones(3), stack, np.array([True, False, False]), np.zeros(3, bool))
        assert all(np.array_equal(replay._data[k], copy._data[k]) for k in replay._data)


def test_replay_memory_per_transition_and_refusal():
    replay = FrameReplayBuffer(1000, 4)
    shard = ReplayShard(replay, 0.99)
    per_transition = (replay.nbytes + shard.discount.nbytes) / replay.capacity
    assert per_transition <= 7200, per_transition  # 1M transitions in <= 7.2 GB (7.5 GB with the process)
    with pytest.raises(UserError, match="replay_capacity"):
        FrameReplayBuffer(10**9, 4)
    fits_once = int(0.5 * available_memory() / per_transition)  # one such shard fits, 8 on one host do not
    with pytest.raises(UserError, match="x 8 ranks on this host"):
        FrameReplayBuffer(fits_once, 4, ranks_per_host=8)


@pytest.mark.parametrize("backend", ["ale", "gymnasium"])
def test_seeding_gives_every_rank_and_env_its_own_games(backend):
    def trajectory(rank):
        envs = make_vector_env("ALE/Pong-v5", 2, backend=backend)
        obs, _ = envs.reset(seed=env_seeds(0, rank, 2))
        frames = [obs]
        for t in range(40):
            obs, *_ = envs.step(np.array([t % 6, (t * 5) % 6]))
            frames.append(obs)
        envs.close()
        return np.stack(frames)  # (steps, env, 4, 84, 84)

    rank0, rank1, rank0_again = trajectory(0), trajectory(1), trajectory(0)
    np.testing.assert_array_equal(rank0, rank0_again)  # same seeds, same actions: the same games
    for a, b in ((rank0[:, 0], rank1[:, 0]), (rank0[:, 1], rank1[:, 1]), (rank0[:, 0], rank0[:, 1])):
        assert not np.array_equal(a, b)  # ranks differ, and the envs of one rank differ


def test_config_fields_and_limits():
    cfg = Config(env_id="ALE/Pong-v5")
    assert cfg.is_atari and (cfg.frame_stack, cfg.noop_max, cfg.max_episode_frames) == (4, 30, 108_000)
    pong = Config.from_yaml(ROOT / "configs" / "pong.yaml")
    assert (pong.replay_capacity, pong.batch_size, pong.train_every, pong.total_env_steps) == (10**6, 32, 4, 10**7)
    strong = Config.from_yaml(ROOT / "configs" / "pong.yaml", ["scaling=strong"])
    for world_size in (1, 2, 4, 8, 16):
        # the samples replayed per env step stay 32 / 4 on any number of ranks: under the config's scaling sqrt one
        # update of N x 32 every 4N env steps, under strong one of 32 every 4
        per, per_strong = pong.per_rank(world_size), strong.per_rank(world_size)
        steps_per_phase = per.vector_steps_per_train * per.global_steps_per_vector_step
        assert (per.updates_per_phase, steps_per_phase) == (1, 4 * world_size)
        assert world_size * per.batch_size * per.updates_per_phase / steps_per_phase == 32 / 4
        steps_per_phase = per_strong.vector_steps_per_train * per_strong.global_steps_per_vector_step
        assert per_strong.updates_per_phase / steps_per_phase == 1 / 4, world_size
    assert not Config(env_id="CartPole-v1").is_atari
    with pytest.raises(UserError, match="frame_stack"):
        Config.from_dict({"env_id": "ALE/Pong-v5", "frame_stack": 0})


@pytest.mark.parametrize("name", ["roadrunner-100k", "boxing-100k"])
def test_atari_100k_configs_load_and_validate(name):
    """The Atari-100k configs (Dopamine's DrQ_eps.gin, cited line by line in the files) load, split on 1 and 2 ranks
    into phases that make updates, and say what the protocol says."""
    from hvd_dqn.actor import scheduled_epsilon

    cfg = Config.from_yaml(ROOT / "configs" / f"{name}.yaml")
    assert cfg.is_atari and cfg.exp_name == name
    assert (cfg.total_env_steps, cfg.max_episode_frames, cfg.sticky_action_prob, cfg.noop_max) == (
        100_000,
        108_000,
        0,
        0,
    )
    assert (cfg.n_step, cfg.learning_starts, cfg.batch_size, cfg.learning_rate, cfg.adam_epsilon) == (
        10,
        1600,
        32,
        1e-4,
        1.5e-4,
    )
    assert cfg.dueling and cfg.double_dqn and not cfg.prioritized_replay and cfg.terminal_on_life_loss
    assert (cfg.target_tau, cfg.eval_epsilon, cfg.precision) == (1.0, 0.001, "float32")
    assert scheduled_epsilon(cfg, 0) == 1.0 and scheduled_epsilon(cfg, 6600) == pytest.approx(0.01)
    assert scheduled_epsilon(cfg, 3300) == pytest.approx(0.505)
    for world_size in (1, 2):  # one update of N x 32 per N global env steps: 32 samples per env step, as published
        per = cfg.per_rank(world_size)
        cfg.check_schedule(per)
        assert (per.updates_per_phase, per.vector_steps_per_train * per.global_steps_per_vector_step) == (1, world_size)
        assert per.batch_size == 32  # each rank samples the whole batch


@pytest.mark.parametrize("dueling", [False, True])
def test_nature_cnn_learns_from_uint8_replay_batches(dueling):
    from hvd_dqn.learner import Learner

    distributed.init()
    cfg = Config(env_id="ALE/Pong-v5", dueling=dueling, batch_size=8)
    learner = Learner(cfg, (4, 84, 84), 6, 1)
    model = learner.online
    assert model.input.dtype == "uint8" and model.output_shape == (None, 6)
    conv = 4 * 8 * 8 * 32 + 32 + 32 * 4 * 4 * 64 + 64 + 64 * 3 * 3 * 64 + 64
    dense = 7 * 7 * 64 * 512 + 512
    head = 512 * 6 + 6 if not dueling else 512 * 7 + 7 + 36  # + dueling's fixed centring matrix
    assert model.count_params() == conv + dense + head
    big = FrameReplayBuffer(40, 2, (84, 84), stack=4)
    rng = np.random.default_rng(1)
    stacks = rng.integers(0, 256, size=(2, 4, 84, 84), dtype=np.uint8)
    big.start(stacks)
    for t in range(30):
        stacks = rng.integers(0, 256, size=(2, 4, 84, 84), dtype=np.uint8)
        big.add(
            stacks, rng.integers(0, 6, 2), rng.normal(size=2), stacks, np.array([t % 9 == 0, False]), np.zeros(2, bool)
        )
    batch = ReplayShard(big, cfg.gamma).sample(rng, (3, 8))[0]
    assert batch.obs.dtype == np.uint8  # no float copy of the frames outside the graph
    before = [v.numpy().copy() for v in model.trainable_variables]
    stats = learner.run_updates(batch, 1e-3)
    assert learner.updates == 3 and np.isfinite(stats.td_loss)
    assert any(np.abs(a - v.numpy()).max() > 0 for a, v in zip(before, model.trainable_variables))
    q = learner.q_fn()(batch.obs[0])
    assert q.shape == (8, 6)
    np.testing.assert_allclose(q, q_values(learner, batch.obs[0]), rtol=1e-5, atol=1e-5)


def test_trainer_refuses_a_replay_that_does_not_fit(tmp_path):
    proc = run(
        [
            BIN / "hvd-dqn",
            "train",
            "--config",
            ROOT / "configs" / "pong.yaml",
            "--run-dir",
            tmp_path / "r",
            "--set",
            "replay_capacity=100000000",
        ],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hvd-dqn: error:")]
    assert len(errors) == 1 and "100000000 transitions need 658." in errors[0] and "replay_capacity" in errors[0]
    assert "Traceback" not in proc.stderr
