"""DQN on a tiny deterministic MDP whose optimal Q-values are known exactly.

Chain of 4 states, start in 0. Action 1 moves right, action 0 moves left (0 stays at 0). Moving right from
state 2 reaches the goal: reward 1, episode terminated. A time limit of 6 steps truncates episodes that have not
got there; truncation is not termination, so the learned values must still be the infinite-horizon Q*:
Q*(s, right) = gamma^(2 - s), Q*(s, left) = gamma * V*(max(s - 1, 0)).
Behaviour is uniformly random (epsilon 1): Q-learning is off-policy, so it still learns Q*.
"""

import gymnasium as gym
import numpy as np

from hvd_dqn import Config, Trainer
from probes import q_values
from run_schedule import expected_updates

GAMMA = 0.9


class Chain(gym.Env):
    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = 0
        return self.state, {}

    def step(self, action):
        if action == 1 and self.state == 2:
            return 3, 1.0, True, False, {}
        self.state = self.state + 1 if action == 1 else max(self.state - 1, 0)
        return self.state, 0.0, False, False, {}


def optimal_q():
    v = {s: GAMMA ** (2 - s) for s in range(3)}
    return np.array([[GAMMA * v[max(s - 1, 0)], v[s]] for s in range(3)])


def test_learns_exact_q_values_within_5_percent(tmp_path):
    gym.register("ChainMDP-v0", entry_point=Chain, max_episode_steps=6)
    cfg = Config(
        env_id="ChainMDP-v0",
        seed=1,
        total_env_steps=6000,
        num_envs=2,
        hidden_sizes=(32,),
        learning_rate=3e-3,
        lr_final_fraction=0.1,
        batch_size=64,
        gamma=GAMMA,
        replay_capacity=6000,
        learning_starts=500,
        train_every=50,
        updates_per_train=25,
        target_update_every=100,
        eps_start=1.0,
        eps_end=1.0,
        eval_every=3000,
        eval_episodes=10,
        log_every=3000,
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    summary = trainer.train()
    q = q_values(trainer.learner, np.eye(4, dtype=np.float32)[:3])
    expected = optimal_q()
    np.testing.assert_allclose(q, expected, rtol=0.05)
    # the greedy policy walks straight to the goal: return 1 in every evaluation episode
    assert summary["final_eval_return_mean"] == 1.0
    # 2 envs: a phase of 25 updates every 25 vector steps (50 env steps), from 500 to 6000: 111 phases
    assert summary["env_steps"] == 6000 and summary["updates"] == expected_updates(cfg) == 25 * 111
