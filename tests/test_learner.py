import numpy as np
import pytest

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from mp_data import UniformReplay


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


def _weights(model):
    return [v.numpy().copy() for v in model.variables]


def _max_change(before, model):
    return max(float(np.abs(a - b.numpy()).max()) for a, b in zip(before, model.variables))


def test_learning_rate_schedule_reaches_the_optimizer(replay):
    rng = np.random.default_rng(1)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    before = _weights(learner.online)
    learner.run_updates(replay.sample(rng, (3, 16)), 0.0)
    assert _max_change(before, learner.online) == 0.0
    stats = learner.run_updates(replay.sample(rng, (3, 16)), 1e-2)
    assert _max_change(before, learner.online) > 1e-3
    assert learner.updates == 6 and np.isfinite(stats.td_loss)


def test_target_moves_only_on_sync(replay):
    rng = np.random.default_rng(2)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    learner.broadcast_initial_weights()
    target_before = _weights(learner.target)
    learner.run_updates(replay.sample(rng, (4, 16)), 1e-2)
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
        learner.run_updates(batch, 1e-3)


def test_non_finite_weights_after_a_finite_loss_stop_naming_the_updates(replay):
    # an infinite step: the loss, computed before the update, is finite; the weights it leaves are not
    rng = np.random.default_rng(3)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    learner.run_updates(replay.sample(rng, (2, 16)), 1e-3)
    with pytest.raises(
        FloatingPointError,
        match=r"^non-finite weights \(.*kernel.*\) after updates 3\.\.3; "
        r"stopping \(the last checkpoint is intact\)$",
    ):
        learner.run_updates(replay.sample(rng, (1, 16)), float("inf"))
    assert learner.updates == 2


def test_phase_chunks_end_where_a_sync_or_an_averaging_falls_due():
    from hvd_dqn.learner import phase_chunks

    assert list(phase_chunks(128, 0, 128, 0)) == [(128, True, False)]  # the CartPole default: one sync a phase
    assert list(phase_chunks(128, 0, 64, 0)) == [(64, True, False), (64, True, False)]
    assert list(phase_chunks(20, 10, 30, 10)) == [(20, True, False)]
    assert list(phase_chunks(10, 25, 30, 25)) == [(5, True, False), (5, False, False)]
    # federated averaging every 10 updates, target every 30, starting 4 updates into an averaging round
    assert list(phase_chunks(30, 4, 30, 4, federated_every=10)) == [
        (6, False, True),
        (10, False, True),
        (10, True, True),
        (4, False, False),
    ]
    # an elastic job grew under scaling weak: 100 updates since the sync, the period is now 64
    assert list(phase_chunks(64, 100, 64, 1000)) == [(1, True, False), (63, False, False)]
    assert list(phase_chunks(0, 0, 10, 0)) == []


class _RecordingReplay:
    """A replay that hands out the same fixed transitions and records what the learner asked of it."""

    def __init__(self, replay):
        self.replay, self.shapes, self.priorities = replay, [], []

    def sample(self, rng, shape, beta):
        self.shapes.append((shape, beta))
        batch = self.replay.sample(rng, shape)
        return batch, np.full(shape, 0.99, np.float32), np.ones(shape, np.float32), np.zeros(shape, np.int64)

    def update_priorities(self, slots, td_abs):
        self.priorities.append(td_abs.shape)


def test_learn_runs_the_phase_schedule_and_returns_the_last_runs_result(replay):
    cfg = Config(
        env_id="CartPole-v1",
        hidden_sizes=(8,),
        total_env_steps=1000,
        learning_starts=0,
        updates_per_train=10,
        target_update_every=4,
        batch_size=8,
        prioritized_replay=True,
        priority_beta_start=0.5,
    )
    per = cfg.per_rank(1)
    learner = Learner(cfg, 4, 2, 1)
    learner.broadcast_initial_weights()
    recording = _RecordingReplay(replay)
    result = learner.learn(recording, np.random.default_rng(0), per, env_steps=500)
    # 10 updates cut where the target falls due every 4: runs of 4, 4, 2; beta halfway from 0.5 to 1
    assert recording.shapes == [((4, 8), 0.75), ((4, 8), 0.75), ((2, 8), 0.75)]
    assert recording.priorities == [(4, 8), (4, 8), (2, 8)]
    assert learner.updates == 10 and learner.since_sync == 2 and result.td_abs.shape == (2, 8)
    assert np.isfinite(result.td_loss) and set(result.stats()) == {"td_loss", "q_mean"}
    # the target was synced after update 8, not moved by the last 2
    before = _weights(learner.target)
    learner.learn(recording, np.random.default_rng(1), per, env_steps=600)
    assert recording.shapes[3:] == [((2, 8), 0.8), ((4, 8), 0.8), ((4, 8), 0.8)] and learner.since_sync == 0
    for t, o in zip(learner.target.variables, learner.online.variables):
        np.testing.assert_array_equal(t.numpy(), o.numpy())
    assert _max_change(before, learner.target) > 0.0


def test_the_update_is_traced_once(replay):
    """The optimizer's slots exist before the first trace: a tf.function whose first trace creates variables is
    traced again before it runs, and the update's trace is a run's costliest (docs/update-cost.md)."""
    rng = np.random.default_rng(4)
    learner = Learner(Config(env_id="CartPole-v1", hidden_sizes=(8,)), 4, 2, 1)
    assert len(learner.optimizer_variables) == 1 + 2 * 4  # the step counter, Adam's m and v of 2 kernels, 2 biases
    for _ in range(3):
        learner.run_updates(replay.sample(rng, (3, 16)), 1e-3)
    assert learner._updates_fn.experimental_get_tracing_count() == 1
