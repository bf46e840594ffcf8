"""A user's own gymnasium env in a module of its own, registered on import the way gymnasium's packages do.

hvd-dqn imports the module on every rank before it looks the id up, when a config names it as
``module:id`` (gymnasium's own convention), and hands ``env_kwargs`` to the constructor:

    PYTHONPATH=examples/user_env horovodrun -np 2 hvd-dqn train --config examples/user_env/corridor.yaml
"""

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right along a corridor of ``length`` cells to its exit. The observation is the cell (Discrete);
    action 0 steps left (a wall at cell 0), 1 steps right. Every step costs -1 and the episode ends at the exit,
    so the best return is -(length - 1); an episode not out after ``4 * length`` steps is cut (truncated)."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 8):
        if int(length) < 2:
            raise ValueError(f"length must be at least 2, got {length}")
        self.length = int(length)
        self.observation_space = gym.spaces.Discrete(self.length)
        self.action_space = gym.spaces.Discrete(2)
        self.cell = 0
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell, self.steps = 0, 0
        return self.cell, {}

    def step(self, action):
        self.cell = int(np.clip(self.cell + (1 if int(action) == 1 else -1), 0, self.length - 1))
        self.steps += 1
        terminated = self.cell == self.length - 1
        truncated = not terminated and self.steps >= 4 * self.length
        return self.cell, -1.0, terminated, truncated, {}


gym.register(id="Corridor-v0", entry_point=f"{__name__}:Corridor")
