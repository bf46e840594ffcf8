import numpy as np
import pytest

from hvd_dqn.actor import epsilon_greedy
from hvd_dqn.networks import build_mlp, mlp_forward, mlp_params
from hvd_dqn.schedules import linear_schedule


def test_linear_schedule():
    assert linear_schedule(0, 1.0, 0.1, 100) == 1.0
    assert linear_schedule(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_schedule(100, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert linear_schedule(10_000, 1.0, 0.1, 100) == pytest.approx(0.1)


def test_epsilon_greedy_greedy_and_random():
    q = np.array([[0.0, 1.0, 0.5]] * 2000)
    rng = np.random.default_rng(0)
    assert (epsilon_greedy(q, 0.0, rng) == 1).all()
    actions = epsilon_greedy(q, 1.0, rng)
    counts = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.05)
    # epsilon 0.3: greedy action 1 w.p. 0.7 + 0.3/3
    frac = (epsilon_greedy(q, 0.3, rng) == 1).mean()
    assert abs(frac - 0.8) < 0.04


def test_numpy_forward_matches_keras():
    model = build_mlp(5, 3, (16, 8), seed=3)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(mlp_forward(mlp_params(model), x), model(x).numpy(), rtol=1e-5, atol=1e-6)
