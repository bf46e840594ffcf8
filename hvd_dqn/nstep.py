"""n-step transitions, built on the actor side before they enter replay.

Each env of a rank keeps its last n (obs, action, reward). Once n rewards are known, the oldest start becomes
the transition ``(s_t, a_t, R_t = sum_k gamma^k r_{t+k}, s_{t+n}, terminated=False, discount=gamma^n)``. When an
episode ends, every pending start is flushed with the rewards it has (m < n) and the episode's final observation:
a termination cuts the bootstrap of all of them, a truncation (time limit) keeps it with discount gamma^m. The
math is ``nstep_return``, NumPy and plain Python only: this module imports no TensorFlow.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np


def nstep_return(rewards, gamma: float) -> tuple[float, float]:
    """``(sum_k gamma^k r_k, gamma^m)`` for the m rewards given: the return so far and the discount that the
    bootstrap value ``Q(s_{t+m})`` gets in the target ``R + gamma^m * (1 - terminated) * Q``."""
    ret = 0.0
    for k, r in enumerate(rewards):
        ret += gamma**k * float(r)
    return ret, gamma ** len(rewards)


class NStepBatch(NamedTuple):
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    discount: np.ndarray  # gamma^m: the weight of the bootstrap value


class NStepAccumulator:
    def __init__(self, num_envs: int, n: int, gamma: float):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n, self.gamma = n, gamma
        self._pending = [deque() for _ in range(num_envs)]

    def push(self, obs, action, reward, next_obs, terminated, truncated) -> NStepBatch | None:
        """One vector step of every env (``next_obs`` the true next observations, final ones where an episode
        ended). Returns the transitions that became complete (possibly none) as arrays."""
        rows = []
        for j, pending in enumerate(self._pending):
            pending.append((obs[j], action[j], reward[j]))
            if terminated[j] or truncated[j]:
                while pending:  # every start left in this episode ends at its final observation
                    rows.append(self._emit(pending, next_obs[j], bool(terminated[j]), bool(truncated[j])))
                    pending.popleft()
            elif len(pending) == self.n:
                rows.append(self._emit(pending, next_obs[j], False, False))
                pending.popleft()
        return _batch(rows)

    def flush(self, last_obs) -> NStepBatch | None:
        """Every pending start as a transition cut where its env now stands (``last_obs``: each env's current
        observation), as a time limit would cut it: the rewards so far, bootstrapped with gamma^m. For envs
        that will not continue (a resume that restarts episodes, a rank that is gone): nothing is lost."""
        rows = []
        for j, pending in enumerate(self._pending):
            while pending:
                rows.append(self._emit(pending, last_obs[j], False, True))
                pending.popleft()
        return _batch(rows)

    def _emit(self, pending, next_obs, terminated, truncated):
        obs, action, _ = pending[0]
        ret, discount = nstep_return([r for _, _, r in pending], self.gamma)
        return (obs, action, np.float32(ret), next_obs, terminated, truncated, np.float32(discount))

    # ---- checkpointing: the starts still waiting for their rewards, as plain arrays
    def state_dict(self) -> dict[str, np.ndarray]:
        arrays = {"nstep_len": np.array([len(p) for p in self._pending], np.int64)}
        rows = [row for p in self._pending for row in p]
        if rows:
            arrays["nstep_obs"] = np.stack([r[0] for r in rows])
            arrays["nstep_action"] = np.array([r[1] for r in rows])
            arrays["nstep_reward"] = np.array([r[2] for r in rows])
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        lengths = arrays["nstep_len"]
        if len(lengths) != len(self._pending):
            raise ValueError("n-step state of another number of envs")
        k = 0
        for pending, n in zip(self._pending, lengths):
            pending.clear()
            for _ in range(int(n)):
                pending.append((arrays["nstep_obs"][k], arrays["nstep_action"][k], arrays["nstep_reward"][k]))
                k += 1

    def pending_counts(self) -> list[int]:
        """How many starts wait for their rewards in each env."""
        return [len(p) for p in self._pending]


def _batch(rows) -> NStepBatch | None:
    if not rows:
        return None
    # np.array on the scalar columns: np.stack per column and step cost more than the env step itself
    obs, action, ret, next_obs, terminated, truncated, discount = zip(*rows)
    return NStepBatch(
        np.stack(obs),
        np.array(action),
        np.array(ret),
        np.stack(next_obs),
        np.array(terminated),
        np.array(truncated),
        np.array(discount),
    )
