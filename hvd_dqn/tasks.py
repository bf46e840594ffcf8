"""The one seam between the two kinds of task: classic control (flat observations, the MLP; also MinAtar's and a
user's small images, stored whole) and Atari (frame stacks, the Nature CNN). Everything that differs between them
when training is here: the envs' options, which replay a rank keeps, how a vector step is stored, and what happens
when episodes (re)start. The trainer asks ``for_config(config)`` for one and never branches on the kind itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hvd_dqn.envids import is_atari_id
from hvd_dqn.envs import FRAME_PADDING, env_options, stored_obs_dtype, true_next_obs
from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.replay import FrameReplayBuffer, ReplayBuffer, ReplayShard


class ClassicControl:
    """Every env but Atari (classic control, toy text, MinAtar, a user's own). SAME_STEP autoreset (every vector
    step is one real transition per env, the final observation in ``info``), the plain ring buffer, and n-step
    transitions built here, on the actor side, before they are stored."""

    def __init__(self, config):
        self.config = config
        self.nstep = NStepAccumulator(config.num_envs, config.n_step, config.gamma) if config.n_step > 1 else None

    @property
    def env_options(self) -> dict[str, Any]:
        """Keywords of ``envs.make_env`` for the training and evaluation envs: the env constructor's own."""
        return env_options(self.config)

    def make_replay(self, capacity: int, obs_shape: tuple[int, ...], ranks_per_host: int) -> ReplayShard:
        return _shard(
            self.config,
            ReplayBuffer(capacity, obs_shape, obs_dtype=stored_obs_dtype(obs_shape), ranks_per_host=ranks_per_host),
        )

    def begin(self, replay: ReplayShard, obs: np.ndarray, info: dict) -> None:
        """The envs were reset (at the start, or on a resume whose env state could not be saved)."""

    def store(self, replay: ReplayShard, obs, actions, reward, next_obs, terminated, truncated, info) -> None:
        """One vector step into ``replay`` (through the n-step accumulator when n_step > 1)."""
        done = terminated | truncated
        transition = (obs, actions, reward, true_next_obs(next_obs, done, info), terminated, truncated)
        if self.nstep is None:
            replay.add(*transition)
        elif (ready := self.nstep.push(*transition)) is not None:
            replay.add(*ready)

    def end_episodes(self, replay: ReplayShard, last_obs: np.ndarray) -> None:
        """The envs will not continue their episodes (a resume that restarts them): the n-step starts still
        waiting go into ``replay``, cut at ``last_obs`` as a time limit would cut them."""
        if self.nstep is not None and (flushed := self.nstep.flush(last_obs)) is not None:
            replay.add(*flushed)

    def flushed(self, arrays: dict[str, np.ndarray], last_obs: np.ndarray):
        """Another rank's saved n-step starts (``arrays``: its replay file), cut at ``last_obs`` as transitions,
        for a resume onto fewer ranks where that rank is gone; None without n-step or when none waited."""
        if self.nstep is None:
            return None
        pending = NStepAccumulator(self.config.num_envs, self.config.n_step, self.config.gamma)
        pending.load_state_dict(arrays)
        return pending.flush(last_obs)

    # the ring buffer's transitions are self-contained: they can be dealt to another number of ranks
    resizable = True

    def state_dict(self) -> dict[str, np.ndarray]:
        """The n-step starts still waiting for their rewards (none without n-step)."""
        return {} if self.nstep is None else self.nstep.state_dict()

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        if self.nstep is not None:
            self.nstep.load_state_dict(arrays)


class Atari:
    """NEXT_STEP autoreset and the frame-once replay (each frame stored once; stacks and n-step returns rebuilt
    when sampled). Stored: sign(reward) if clip_rewards; terminated also at a lost life if terminal_on_life_loss,
    while the episode itself (its frame stacks, its return) goes on to game over."""

    def __init__(self, config):
        self.config = config
        self.lives = None  # each env's lives after the last step, to see a life lost

    @property
    def env_options(self) -> dict[str, Any]:
        return env_options(self.config)

    def make_replay(self, capacity: int, obs_shape: tuple[int, ...], ranks_per_host: int) -> ReplayShard:
        cfg = self.config
        return _shard(
            cfg,
            FrameReplayBuffer(
                capacity,
                cfg.num_envs,
                obs_shape[1:],
                cfg.frame_stack,
                FRAME_PADDING,
                cfg.n_step,
                cfg.gamma,
                ranks_per_host=ranks_per_host,
            ),
        )

    def begin(self, replay: ReplayShard, obs: np.ndarray, info: dict) -> None:
        """The reset frames start new episodes in the frame replay, and life counting starts again."""
        replay.buffer.start(obs)
        self.lives = np.asarray(info["lives"])

    def store(self, replay: ReplayShard, obs, actions, reward, next_obs, terminated, truncated, info) -> None:
        """One vector step into the frame replay (it skips the reset steps of NEXT_STEP autoreset)."""
        cfg = self.config
        lives = np.asarray(info["lives"])
        stored_terminated = terminated
        if cfg.terminal_on_life_loss:
            stored_terminated = terminated | (lives < self.lives)
        self.lives = lives  # a reset step brings the new game's lives back up, never counted as a loss
        replay.add(
            obs,
            actions,
            np.sign(reward) if cfg.clip_rewards else reward,
            next_obs,
            stored_terminated,
            truncated,
            episode_end=terminated | truncated,
        )

    def end_episodes(self, replay: ReplayShard, last_obs: np.ndarray) -> None:
        """Nothing to flush: the frame replay builds n-step returns when it samples, and ``begin`` starts the
        new episodes."""

    # The frame replay stores each vector step of a rank's envs as one row: its episodes cannot be dealt out to
    # another number of ranks transition by transition.
    resizable = False

    def state_dict(self) -> dict[str, np.ndarray]:
        """Each env's lives after the last step, so that a run resumed mid-episode sees the next lost life."""
        return {"atari_lives": np.asarray(self.lives)}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        # absent from checkpoints written before the envs' state was saved; their resume restarts the episodes,
        # and begin() reads the lives again (as it does whenever the envs' state was not saved)
        if "atari_lives" in arrays:
            self.lives = np.asarray(arrays["atari_lives"]).copy()


def for_config(config) -> ClassicControl | Atari:
    return Atari(config) if is_atari_id(config.env_id) else ClassicControl(config)


def _shard(config, buffer) -> ReplayShard:
    # n-step discounts and priorities ride alongside the buffer (docs/algorithms.md)
    return ReplayShard(
        buffer, config.gamma**config.n_step, config.prioritized_replay, config.priority_alpha, config.priority_epsilon
    )
