"""Tiny gymnasium envs, one per observation/action space a user's env may have, registered on import as
``user_envs:<Name>-v0`` ids. Each episode lasts 5 steps; the reward is 1 for action 1, so a Q-network learns it."""

import gymnasium as gym
import numpy as np

SPACES = {
    "VectorF64": gym.spaces.Box(-1.0, 1.0, (3,), np.float64),
    "Grid": gym.spaces.Box(0.0, 1.0, (2, 3), np.float32),
    "ImageHWC": gym.spaces.Box(0, 255, (12, 12, 3), np.uint8),
    "ImageCHW": gym.spaces.Box(0, 255, (2, 40, 40), np.uint8),
    "Image2D": gym.spaces.Box(0, 255, (10, 10), np.uint8),
    "DictObs": gym.spaces.Dict({"cell": gym.spaces.Discrete(4), "speed": gym.spaces.Box(-1.0, 1.0, (2,))}),
    "TupleObs": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0.0, 1.0, (2,)))),
    "Text": gym.spaces.Text(5),
}


class Tiny(gym.Env):
    def __init__(self, space: str = "VectorF64", actions=None):
        self.observation_space = SPACES[space]
        self.action_space = actions if actions is not None else gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        reward = 1.0 if np.all(np.asarray(action) == 1) else 0.0
        return self.observation_space.sample(), reward, False, self.t >= 5, {}


for _name in SPACES:
    gym.register(id=f"{_name}-v0", entry_point=f"{__name__}:Tiny", kwargs={"space": _name})
gym.register(
    id="ContinuousAction-v0", entry_point=f"{__name__}:Tiny", kwargs={"actions": gym.spaces.Box(-1.0, 1.0, (1,))}
)
gym.register(
    id="MultiDiscreteAction-v0", entry_point=f"{__name__}:Tiny", kwargs={"actions": gym.spaces.MultiDiscrete([2, 2])}
)
