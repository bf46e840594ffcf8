import numpy as np
import pytest

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from hvd_dqn.replay import ReplayBuffer


@pytest.fixture(scope="module")
def replay():
    distributed.init()
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(200, (4,))
    rb.add(rng.normal(size=(200, 4)).astype(np.float32), rng.integers(0, 2, 200), rng.normal(size=200),
           rng.normal(size=(200, 4)).astype(np.float32), rng.random(200) < 0.1, np.zeros(200, bool))
    return rb


def _weights(model):
    return [v.numpy().copy() for v in model.variables]


def _max_change(before, model):
    return max(float(np.abs(a - b.numpy()).max()) for a, b in zip(before, model.variables))


def test_learning_rate_schedule_reaches_the_optimizer(replay):
    rng = np.random.default_rng(1)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    before = _weights(learner.online)
    learner.train_phase(replay.sample(rng, (3, 16)), 0.0)
    assert _max_change(before, learner.online) == 0.0
    stats = learner.train_phase(replay.sample(rng, (3, 16)), 1e-2)
    assert _max_change(before, learner.online) > 1e-3
    assert learner.updates == 6 and np.isfinite(stats["td_loss"])


def test_target_moves_only_on_sync(replay):
    rng = np.random.default_rng(2)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    learner.broadcast_initial_weights()
    target_before = _weights(learner.target)
    learner.train_phase(replay.sample(rng, (4, 16)), 1e-2)
    assert _max_change(target_before, learner.target) == 0.0
    learner.sync_target()
    for t, o in zip(learner.target.variables, learner.online.variables):
        np.testing.assert_array_equal(t.numpy(), o.numpy())


def test_non_finite_loss_stops_naming_the_update(replay):
    rng = np.random.default_rng(3)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    batch = replay.sample(rng, (3, 16))
    batch.reward[1, 0] = np.nan  # the second update of the phase
    with pytest.raises(FloatingPointError, match=r"non-finite TD loss at update 2; stopping"):
        learner.train_phase(batch, 1e-3)


def test_phase_chunks_end_where_a_sync_or_an_averaging_falls_due():
    from hvd_dqn.trainer import phase_chunks

    assert list(phase_chunks(128, 0, 128, 0)) == [(128, True, False)]  # the CartPole default: one sync a phase
    assert list(phase_chunks(128, 0, 64, 0)) == [(64, True, False), (64, True, False)]
    assert list(phase_chunks(20, 10, 30, 10)) == [(20, True, False)]
    assert list(phase_chunks(10, 25, 30, 25)) == [(5, True, False), (5, False, False)]
    # federated averaging every 10 updates, target every 30, starting 4 updates into an averaging round
    assert list(phase_chunks(30, 4, 30, 4, federated_every=10)) == [
        (6, False, True), (10, False, True), (10, True, True), (4, False, False)]
    # an elastic job grew under scaling weak: 100 updates since the sync, the period is now 64
    assert list(phase_chunks(64, 100, 64, 1000)) == [(1, True, False), (63, False, False)]
    assert list(phase_chunks(0, 0, 10, 0)) == []
