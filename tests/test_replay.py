import numpy as np
import pytest

from hvd_dqn.errors import UserError
from hvd_dqn.replay import ReplayBuffer


def _add(buf, start, n, terminated=None, truncated=None):
    obs = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(2, axis=1)
    buf.add(obs, np.arange(start, start + n) % 3, np.arange(start, start + n, dtype=np.float32),
            obs + 1, terminated if terminated is not None else np.zeros(n, bool),
            truncated if truncated is not None else np.zeros(n, bool))


def test_wraps_around_keeping_the_newest():
    buf = ReplayBuffer(5, (2,))
    _add(buf, 0, 3)
    assert len(buf) == 3 and buf.pos == 3
    _add(buf, 3, 4)  # 7 transitions into 5 slots: 0 and 1 are overwritten
    assert len(buf) == 5 and buf.pos == 2
    batch = buf.gather(np.arange(5))
    assert sorted(batch.reward.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    # each slot's columns still belong to the same transition
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.reward + 1)
    np.testing.assert_array_equal(batch.action, batch.reward.astype(int) % 3)


def test_terminated_and_truncated_kept_apart():
    buf = ReplayBuffer(8, (2,))
    _add(buf, 0, 4, terminated=np.array([0, 1, 0, 0], bool), truncated=np.array([0, 0, 1, 0], bool))
    b = buf.gather(np.arange(4))
    assert b.terminated.tolist() == [False, True, False, False]
    assert b.truncated.tolist() == [False, False, True, False]


def test_sample_shape_and_range():
    buf = ReplayBuffer(100, (2,))
    _add(buf, 0, 10)
    batch = buf.sample(np.random.default_rng(0), (3, 4))
    assert batch.obs.shape == (3, 4, 2) and batch.action.shape == (3, 4)
    assert batch.reward.min() >= 0 and batch.reward.max() <= 9  # only filled slots are sampled


def test_state_round_trip_is_exact():
    buf = ReplayBuffer(6, (2,))
    _add(buf, 0, 9)
    other = ReplayBuffer(6, (2,))
    other.load_state_dict(buf.state_dict())
    assert (other.pos, other.size) == (buf.pos, buf.size)
    for a, b in zip(buf.gather(np.arange(6)), other.gather(np.arange(6))):
        np.testing.assert_array_equal(a, b)


def test_refuses_a_buffer_that_cannot_fit():
    with pytest.raises(UserError, match="replay_capacity"):
        ReplayBuffer(10**12, (84, 84))
