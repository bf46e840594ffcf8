"""Unit tests of the algorithm components against hand-computed numbers: n-step returns, the sum-tree and
prioritized replay, importance-sampling weights, Ape-X epsilons, soft target updates, the dueling head."""

import numpy as np
import pytest
import tf_keras as keras

from hvd_dqn import distributed, losses
from hvd_dqn.actor import actor_epsilons
from hvd_dqn.config import Config
from hvd_dqn.errors import UserError
from hvd_dqn.learner import Learner
from hvd_dqn.networks import build_mlp, mlp_forward, mlp_params
from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.replay import ReplayBuffer, ReplayShard, SumTree, importance_weights
from hvd_dqn.schedules import annealed_beta
from mp_data import UniformReplay
from probes import EvalQFn
from reference import nstep_trajectory

# ---------------------------------------------------------------- n-step returns


def test_nstep_trajectory_terminated_truncated_and_running_by_hand():
    rewards, g = [1.0, 2.0, 3.0, 4.0], 0.5  # powers of 2: every number below is exact in floating point
    # (t, return, discount, bootstrap index, terminated)
    terminated = [
        (0, 1 + 0.5 * 2 + 0.25 * 3, 0.125, 3, False),  # 2.75: a full 3-step window
        (1, 2 + 0.5 * 3 + 0.25 * 4, 0.125, 4, True),  # 4.5, ends exactly at the termination
        (2, 3 + 0.5 * 4, 0.25, 4, True),  # 5.0: the episode ended inside the n steps
        (3, 4.0, 0.5, 4, True),
    ]
    assert nstep_trajectory(rewards, g, 3, terminated=True) == terminated
    truncated = [(t, ret, disc, idx, False) for t, ret, disc, idx, _ in terminated]  # bootstrap kept
    assert nstep_trajectory(rewards, g, 3, terminated=False, truncated=True) == truncated
    # still running: no flags, only full windows
    assert nstep_trajectory(rewards, g, 3, terminated=False) == truncated[:2]
    # n = 1 is the one-step transition
    assert nstep_trajectory([5.0], 0.9, 1, terminated=True) == [(0, 5.0, 0.9, 1, True)]


def test_nstep_accumulator_at_episode_ends():
    """Two envs, n=3, gamma=0.5: env 0 terminates after 2 steps (inside the n steps), env 1 is truncated
    after 4. Observations are (env, step) so each transition's s and s' can be read off."""
    acc = NStepAccumulator(num_envs=2, n=3, gamma=0.5)
    obs = lambda step: np.array([[0, step], [1, step]], np.float32)  # noqa: E731
    rewards = [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]
    term = [[False, False], [True, False], [False, False], [False, False]]
    trunc = [[False, False], [False, False], [False, False], [False, True]]
    out = []
    for step in range(4):
        got = acc.push(
            obs(step),
            np.array([step, step]),
            np.array(rewards[step]),
            obs(step + 1),
            np.array(term[step]),
            np.array(trunc[step]),
        )
        out.append(got)
    assert out[0] is None
    # step 1: env 0 terminates -> both of its starts flushed, bootstrap cut, next_obs = its final obs
    b = out[1]
    np.testing.assert_array_equal(b.obs[:, 1], [0, 1])
    np.testing.assert_allclose(b.reward, [1 + 0.5 * 2, 2.0])
    np.testing.assert_allclose(b.discount, [0.25, 0.5])
    np.testing.assert_array_equal(b.next_obs, [[0, 2], [0, 2]])
    np.testing.assert_array_equal(b.terminated, [True, True])
    # step 2: env 1 has 3 rewards -> its first full window; env 0's new episode has 1 reward, nothing yet
    b = out[2]
    np.testing.assert_array_equal(b.obs, [[1, 0]])
    np.testing.assert_allclose(b.reward, [10 + 0.5 * 20 + 0.25 * 30])
    np.testing.assert_allclose(b.discount, [0.125])
    np.testing.assert_array_equal(b.next_obs, [[1, 3]])
    assert not b.terminated.any()
    # step 3: env 1 truncated -> starts 1, 2, 3 flushed, bootstrap KEPT with gamma^m
    b = out[3]
    np.testing.assert_array_equal(b.obs, [[1, 1], [1, 2], [1, 3]])
    np.testing.assert_allclose(b.reward, [20 + 15 + 10, 30 + 20, 40])
    np.testing.assert_allclose(b.discount, [0.125, 0.25, 0.5])
    np.testing.assert_array_equal(b.next_obs, [[1, 4]] * 3)
    np.testing.assert_array_equal(b.terminated, [False] * 3)
    np.testing.assert_array_equal(b.truncated, [True] * 3)


def test_td_target_with_nstep_discount_by_hand():
    next_q = [[1.0, 8.0], [8.0, 1.0], [2.0, 0.0]]
    got = losses.td_target([2.75, 2.75, 5.0], [False, True, False], next_q, np.array([0.125, 0.125, 0.25])).numpy()
    np.testing.assert_allclose(got, [2.75 + 1.0, 2.75, 5.0 + 0.5], rtol=1e-6)


def test_weighted_huber_loss_by_hand():
    error = np.array([0.5, 3.0], np.float32)  # huber: 0.125, 2.5
    assert float(losses.weighted_huber_loss(error, [1.0, 1.0])) == pytest.approx((0.125 + 2.5) / 2)
    assert float(losses.weighted_huber_loss(error, [1.0, 0.2])) == pytest.approx((0.125 + 0.5) / 2)


# ---------------------------------------------------------------- sum-tree and prioritized replay


def test_sum_tree_sampling_frequencies_match_priorities():
    tree = SumTree(6)  # not a power of two: padded leaves must never be drawn
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    tree.set(np.arange(6), priorities)
    assert tree.total == pytest.approx(20.0)
    rng = np.random.default_rng(0)
    idx = tree.sample(rng, (2000, 100)).ravel()
    freq = np.bincount(idx, minlength=6) / idx.size
    expected = priorities / priorities.sum()
    # 200k draws: a binomial sd is < 0.0012, so 0.005 is > 4 sd; a zero priority is never drawn
    np.testing.assert_allclose(freq, expected, atol=0.005)
    assert freq[4] == 0.0


def test_sum_tree_updates_and_repeated_slots():
    tree = SumTree(5)
    tree.set([0, 1, 2, 3, 4], 1.0)
    tree.set([2, 2, 4], [7.0, 9.0, 0.0])  # repeated slot: the last value wins
    np.testing.assert_allclose(tree.get(np.arange(5)), [1, 1, 9, 1, 0])
    assert tree.total == pytest.approx(12.0)
    idx = tree.sample(np.random.default_rng(1), (500, 64)).ravel()
    freq = np.bincount(idx, minlength=5) / idx.size
    np.testing.assert_allclose(freq, np.array([1, 1, 9, 1, 0]) / 12, atol=0.01)
    # the mass -> slot mapping at the interval edges
    np.testing.assert_array_equal(tree.find([0.0, 0.999, 1.0, 2.0, 10.999, 11.0, 11.999]), [0, 0, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError):
        tree.set([1], [-1.0])
    with pytest.raises(IndexError):
        tree.set([5], [1.0])


def _shard(capacity, prioritized=True):
    return ReplayShard(ReplayBuffer(capacity, (1,)), 0.9, prioritized=prioritized, alpha=1.0, epsilon=0.0)


def _add(shard, values, discount=None):
    v = np.asarray(values, np.float32)
    shard.add(
        v[:, None], np.zeros(len(v), np.int32), v, v[:, None], np.zeros(len(v), bool), np.zeros(len(v), bool), discount
    )


def test_prioritized_replay_wraps_at_capacity():
    shard = _shard(4)
    _add(shard, [0, 1, 2])
    shard.update_priorities([0, 1, 2], [1.0, 1.0, 1.0])
    _add(shard, [3, 4, 5])  # slots 3, 0, 1: the newest overwrite the oldest and get the max priority
    assert len(shard) == 4
    np.testing.assert_allclose(shard.tree.get(np.arange(4)), [1, 1, 1, 1])
    shard.update_priorities([0, 2], [5.0, 0.5])  # slot 0 holds reward 4 now
    assert shard.tree.total == pytest.approx(5 + 1 + 0.5 + 1)
    assert shard.max_priority == 5.0
    batch, discount, weights, idx = shard.sample(np.random.default_rng(0), (400, 50))
    np.testing.assert_array_equal(batch.reward, np.choose(idx, [4, 5, 2, 3]))  # slot -> the wrapped content
    freq = np.bincount(idx.ravel(), minlength=4) / idx.size
    np.testing.assert_allclose(freq, np.array([5, 1, 0.5, 1]) / 7.5, atol=0.01)
    # IS weights follow the sampled slots' probabilities: (N P)^-beta / max, beta = 1 here
    w = (4 * shard.tree.get(idx) / 7.5) ** -1.0
    np.testing.assert_allclose(weights, w / w.max(axis=-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(discount, 0.9)


def test_a_buffer_restored_behind_the_shard_is_sampled():
    """A checkpoint restore that fills the plain buffer directly must not leave its slots at priority 0."""
    plain = _shard(8).buffer
    _add(ReplayShard(plain, 0.9), [1, 2, 3])
    shard = ReplayShard(ReplayBuffer(8, (1,)), 0.9, prioritized=True, alpha=1.0)
    shard.buffer.load_state_dict(plain.state_dict())
    batch, *_ = shard.sample(np.random.default_rng(0), (50, 8))
    assert set(batch.reward.ravel().tolist()) == {1.0, 2.0, 3.0}


def test_nstep_discount_stored_per_slot_and_uniform_weights():
    shard = _shard(8, prioritized=False)
    _add(shard, [1, 2, 3], discount=np.array([0.729, 0.81, 0.9], np.float32))
    batch, discount, weights, _ = shard.sample(np.random.default_rng(0), (4, 16))
    np.testing.assert_allclose(discount, np.choose(batch.reward.astype(int) - 1, [0.729, 0.81, 0.9]), rtol=1e-6)
    assert (weights == 1.0).all()
    shard.update_priorities(np.zeros(3, int), np.ones(3))  # a no-op without prioritization


def test_importance_weights_by_hand_and_beta_annealing():
    probs = np.array([[0.1, 0.4]])
    # size 4: (0.4)^-0.5 = 1.581, (1.6)^-0.5 = 0.791 -> normalised by the largest: [1, 0.5]
    np.testing.assert_allclose(importance_weights(probs, 4, 0.5), [[1.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(importance_weights(probs, 4, 1.0), [[1.0, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(importance_weights(probs, 4, 0.0), [[1.0, 1.0]])
    assert annealed_beta(0, 1000, 0.4) == pytest.approx(0.4)
    assert annealed_beta(500, 1000, 0.4) == pytest.approx(0.7)
    assert annealed_beta(1000, 1000, 0.4) == pytest.approx(1.0)
    assert annealed_beta(5000, 1000, 0.4) == pytest.approx(1.0)


# ---------------------------------------------------------------- exploration


def test_apex_epsilons_distinct_and_as_configured():
    # 2 ranks x 2 envs = 4 actors, eps 0.4, spread 7: actor i gets 0.4^(1 + 7 i / 3)
    all_eps = np.concatenate([actor_epsilons(0.4, r, 2, 2, 7.0) for r in range(2)])
    np.testing.assert_allclose(all_eps, [0.4, 0.4 ** (1 + 7 / 3), 0.4 ** (1 + 14 / 3), 0.4**8], rtol=1e-12)
    assert len(np.unique(all_eps)) == 4 and np.all(np.diff(all_eps) < 0)
    np.testing.assert_array_equal(actor_epsilons(0.3, 1, 4, 3, 0.0), [0.3] * 3)  # no spread: all the same
    np.testing.assert_array_equal(actor_epsilons(0.3, 0, 1, 1, 7.0), [0.3])  # one actor: the schedule's eps


# ---------------------------------------------------------------- learner: soft targets, IS weights, dueling


@pytest.fixture(scope="module")
def replay():
    distributed.init()
    rng = np.random.default_rng(0)
    rb = UniformReplay(200, (4,))
    rb.add(
        rng.normal(size=(200, 4)).astype(np.float32),
        rng.integers(0, 2, 200),
        rng.normal(size=200),
        rng.normal(size=(200, 4)).astype(np.float32),
        rng.random(200) < 0.1,
        np.zeros(200, bool),
    )
    return rb


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_soft_target_update_matches_the_formula(replay):
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,), target_tau=0.1), 4, 2, 1)
    learner.online.variables[0].assign(learner.online.variables[0] + 0.5)  # target != online at the start
    rng = np.random.default_rng(1)
    for _ in range(2):
        target_before = _values(learner.target.trainable_variables)
        learner.run_updates(replay.sample(rng, (1, 16)), 1e-2)
        for t, t0, o in zip(learner.target.trainable_variables, target_before, learner.online.trainable_variables):
            np.testing.assert_allclose(t.numpy(), 0.1 * o.numpy() + 0.9 * t0, rtol=1e-5, atol=1e-7)
        assert (
            max(float(np.abs(t.numpy() - t0).max()) for t, t0 in zip(learner.target.trainable_variables, target_before))
            > 1e-4
        )


def test_policy_weight_average_matches_the_formula_and_is_what_evaluation_uses(replay):
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,), policy_ema=0.75), 4, 2, 1)
    learner.broadcast_initial_weights()
    assert learner.policy is learner.averaged
    for a, o in zip(learner.averaged.variables, learner.online.variables):  # the average starts at the online net
        np.testing.assert_array_equal(a.numpy(), o.numpy())
    rng = np.random.default_rng(3)
    for _ in range(2):
        before = _values(learner.averaged.variables)
        learner.run_updates(replay.sample(rng, (4, 16)), 1e-2)
        learner.update_average()
        for a, a0, o in zip(learner.averaged.variables, before, learner.online.variables):
            np.testing.assert_allclose(a.numpy(), 0.75 * a0 + 0.25 * o.numpy(), rtol=1e-5, atol=1e-7)
    gap = max(
        float(np.abs(a.numpy() - o.numpy()).max()) for a, o in zip(learner.averaged.variables, learner.online.variables)
    )
    assert gap > 1e-4  # the average lags the online net
    obs = replay.sample(rng, (1, 5)).obs[0]
    np.testing.assert_allclose(learner.q_fn(learner.policy)(obs), learner.averaged(obs).numpy(), rtol=1e-5, atol=1e-6)
    plain = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    assert plain.policy is plain.online and plain.averaged is None
    plain.update_average()  # a no-op without policy_ema


def test_a_run_with_policy_ema_saves_and_evaluates_the_average(tmp_path):
    from hvd_dqn import Trainer

    cfg = Config(
        env_id="CartPole-v1",
        seed=4,
        total_env_steps=1500,
        hidden_sizes=(16,),
        learning_starts=300,
        train_every=100,
        updates_per_train=10,
        target_update_every=20,
        eval_every=1500,
        eval_episodes=2,
        log_every=1500,
        batch_size=32,
        replay_capacity=2000,
        policy_ema=0.5,
    )
    evaluated = EvalQFn()
    trainer = Trainer(cfg, run_dir=tmp_path / "run", callbacks=[evaluated])
    trainer.train()
    assert trainer.policy_network is trainer.learner.averaged and trainer.q_network is trainer.learner.online
    saved = keras.models.load_model(tmp_path / "run" / "q_network.keras")
    for s, a in zip(saved.get_weights(), trainer.policy_network.get_weights()):
        np.testing.assert_array_equal(s, a)
    assert any(np.abs(s - o).max() > 1e-6 for s, o in zip(saved.get_weights(), trainer.q_network.get_weights()))
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(evaluated.q_fn(obs), saved(obs).numpy(), rtol=1e-5, atol=1e-6)


def test_importance_weights_scale_the_update_and_td_errors_come_back(replay):
    rng = np.random.default_rng(2)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,), double_dqn=False), 4, 2, 1)
    batch = replay.sample(rng, (1, 16))
    # |TD| by hand from the networks: |Q(s, a) - (r + gamma^m (1 - term) max Q_target(s'))|
    discount = np.full((1, 16), 0.5, np.float32)
    q = learner.online(batch.obs[0]).numpy()[np.arange(16), batch.action[0]]
    target = batch.reward[0] + 0.5 * (1 - batch.terminated[0]) * learner.target(batch.next_obs[0]).numpy().max(1)
    before = _values(learner.online.variables)
    result = learner.run_updates(batch, 1e-2, discount, np.zeros((1, 16), np.float32))
    np.testing.assert_allclose(result.td_abs, np.abs(q - target)[None], rtol=1e-5, atol=1e-6)
    for a, b in zip(before, learner.online.variables):  # weight 0 on every sample: no gradient, no step
        np.testing.assert_array_equal(a, b.numpy())
    learner.run_updates(batch, 1e-2, discount, np.ones((1, 16), np.float32))
    assert any(np.abs(a - b.numpy()).max() > 1e-4 for a, b in zip(before, learner.online.variables))


def test_dueling_head_numpy_forward_centring_and_plain_load(tmp_path):
    model = build_mlp(5, 3, (16, 8), seed=3, dueling=True)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    q = model(x).numpy()
    np.testing.assert_allclose(mlp_forward(mlp_params(model), x), q, rtol=1e-5, atol=1e-5)
    value = keras.Model(model.input, model.get_layer("value").output)(x).numpy()
    np.testing.assert_allclose(q.mean(axis=1, keepdims=True), value, rtol=1e-5, atol=1e-5)  # mean_a A = 0
    assert len(model.trainable_variables) == 2 * 2 + 2 * 2  # hidden, value, advantage; the centring is fixed
    model.save(tmp_path / "q.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "q.keras")(x).numpy(), q, rtol=1e-6)


def test_federated_config_checks():
    with pytest.raises(UserError, match="target_update_every must be a multiple of federated_every"):
        Config.from_dict({"env_id": "CartPole-v1", "federated_every": 3, "target_update_every": 128})
    Config.from_dict({"env_id": "CartPole-v1", "federated_every": 3, "target_update_every": 128, "target_tau": 0.01})
    with pytest.raises(UserError, match="n_step"):
        Config.from_dict({"env_id": "CartPole-v1", "n_step": 0})
