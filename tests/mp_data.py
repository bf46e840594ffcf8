"""Data for the multi-process scripts (mp_*.py, run under horovodrun): a replay shard of random transitions."""
import numpy as np

from hvd_dqn.replay import ReplayBuffer


def random_replay(rng: np.random.Generator, n: int) -> ReplayBuffer:
    """``n`` random CartPole-shaped transitions drawn from ``rng`` (seed it by rank for rank-dependent data)."""
    replay = ReplayBuffer(n, (4,))
    replay.add(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n), rng.normal(size=n),
               rng.normal(size=(n, 4)).astype(np.float32), rng.random(n) < 0.1, np.zeros(n, bool))
    return replay
