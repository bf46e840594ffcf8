import numpy as np
import pytest

from hvd_dqn import losses


def test_td_target_plain_dqn_by_hand():
    reward = [1.0, 0.5, -1.0]
    terminated = [False, True, False]
    next_q_target = [[2.0, 3.0], [10.0, 0.0], [-4.0, -2.0]]
    # r + 0.9 * max_a Q_t(s', a), the bootstrap cut where terminated
    expected = [1.0 + 0.9 * 3.0, 0.5, -1.0 + 0.9 * -2.0]
    got = losses.td_target(reward, terminated, next_q_target, 0.9).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_td_target_double_dqn_uses_online_argmax_and_target_value():
    reward = [0.0, 1.0]
    terminated = [False, False]
    next_q_target = [[5.0, 1.0, 2.0], [0.0, 7.0, 3.0]]
    next_q_online = [[0.0, 9.0, 1.0], [0.0, 0.0, 4.0]]  # picks action 1, then action 2
    expected = [0.0 + 0.5 * 1.0, 1.0 + 0.5 * 3.0]
    got = losses.td_target(reward, terminated, next_q_target, 0.5, next_q_online).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    plain = losses.td_target(reward, terminated, next_q_target, 0.5).numpy()
    assert not np.allclose(got, plain)  # the two targets really differ here


def test_truncated_is_not_terminated_in_the_target():
    # a time-limit cut is stored as truncated, terminated=False: its target still bootstraps
    got = losses.td_target([1.0], [False], [[4.0, 2.0]], 0.99).numpy()
    assert got[0] == pytest.approx(1.0 + 0.99 * 4.0)


def test_huber_by_hand():
    err = np.array([0.0, 0.5, -1.0, 3.0, -2.5], np.float32)
    expected = [0.0, 0.125, 0.5, 1.0 * (3.0 - 0.5), 1.0 * (2.5 - 0.5)]
    np.testing.assert_allclose(losses.huber(err, 1.0).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.huber(err, 2.0).numpy(), [0.0, 0.125, 0.5, 2.0 * (3.0 - 1.0), 2.0 * (2.5 - 1.0)])


def test_q_of_actions():
    q = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    np.testing.assert_array_equal(losses.q_of_actions(q, [2, 0]).numpy(), [3.0, 4.0])
