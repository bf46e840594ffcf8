"""Data for tests and the multi-process scripts (mp_*.py, run under horovodrun): a replay of random transitions
that samples itself uniformly."""

import numpy as np

from hvd_dqn.replay import ReplayBuffer


class UniformReplay(ReplayBuffer):
    """A ReplayBuffer with ``sample``, for feeding a Learner directly (training samples through a ReplayShard)."""

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]):
        """Uniform sample with replacement; ``shape`` = (updates, batch) gives one batch per update."""
        if self.size == 0:
            raise RuntimeError("sample from an empty replay buffer")
        return self.gather(rng.integers(0, self.size, size=shape))


def random_replay(rng: np.random.Generator, n: int) -> UniformReplay:
    """``n`` random CartPole-shaped transitions drawn from ``rng`` (seed it by rank for rank-dependent data)."""
    replay = UniformReplay(n, (4,))
    replay.add(
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.integers(0, 2, n),
        rng.normal(size=n),
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.random(n) < 0.1,
        np.zeros(n, bool),
    )
    return replay
