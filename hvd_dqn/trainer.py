"""The training loop, top to bottom: collect -> learn -> sync target -> evaluate -> log -> save.

Every rank runs this loop in lockstep. Each decision that leads to a collective (learn, sync, evaluate, log,
stop) is made from the global env-step and update counters, which are the same on every rank, so every rank
makes exactly the same collective calls.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.actor import epsilon_greedy, linear_epsilon
from hvd_dqn.config import Config
from hvd_dqn.envs import env_seeds, make_vector_env, reward_threshold, true_next_obs
from hvd_dqn.errors import UserError
from hvd_dqn.evaluation import Evaluator, summarize
from hvd_dqn.learner import Learner
from hvd_dqn.metrics import RunLogger
from hvd_dqn.networks import mlp_forward
from hvd_dqn.replay import ReplayBuffer
from hvd_dqn import checkpoint

FAULT_ENV = "HVD_DQN_FAULT"  # "RANK:GLOBAL_STEP": raise on that rank at that step (failure-handling tests)


class Trainer:
    """``Trainer(config).train()`` trains on every rank of the job and returns the run summary (a dict)."""

    def __init__(self, config: Config, run_dir: str | os.PathLike | None = None):
        if not isinstance(config, Config):
            raise TypeError("Trainer needs a hvd_dqn.Config")
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.learner: Learner | None = None

    @property
    def q_network(self):
        """The online Q-network, a Keras (tf_keras) model; available once train() has built it."""
        return None if self.learner is None else self.learner.online

    def train(self) -> dict[str, Any]:
        self.world = distributed.init()
        try:
            return self._train()
        except BaseException as exc:
            if self.world.size > 1 and not isinstance(exc, KeyboardInterrupt):
                # The other ranks are (or soon will be) blocked in a collective that this rank will never join.
                distributed.abort_job(exc, show_traceback=not isinstance(exc, UserError))
            raise

    # ------------------------------------------------------------------ the loop
    def _train(self) -> dict[str, Any]:
        cfg, world = self.config, self.world
        start = time.perf_counter()
        per = cfg.per_rank(world.size)
        run_dir = self._resolve_run_dir()
        logger = RunLogger(run_dir, enabled=world.is_chief)
        logger.write_json("config.json", {**cfg.to_dict(), "world_size": world.size})
        threshold = cfg.reward_threshold if cfg.reward_threshold is not None else reward_threshold(cfg.env_id)
        fault_step = _fault_step(world.rank)

        envs = make_vector_env(cfg.env_id, cfg.num_envs)
        obs, _ = envs.reset(seed=env_seeds(cfg.seed, world.rank, cfg.num_envs))
        obs_dim, n_actions = envs.single_observation_space.shape[0], int(envs.single_action_space.n)
        rng = np.random.default_rng([cfg.seed, world.rank, 7])  # this rank's exploration and sampling
        replay = ReplayBuffer(per.replay_capacity, (obs_dim,))
        self.learner = learner = Learner(cfg, obs_dim, n_actions, world.size)
        learner.broadcast_initial_weights()
        params = learner.acting_params()
        evaluator = Evaluator(cfg.env_id, cfg.eval_episodes, cfg.seed, world.rank, world.size, cfg.eval_epsilon)

        episode_return = np.zeros(cfg.num_envs)
        finished_returns: list[float] = []
        train_stats: dict[str, float] = {}
        since_sync = 0
        solved_steps = solved_wall = None
        last_eval: dict[str, float] = {}
        tick_steps, tick_time, tick_updates = 0, time.perf_counter(), 0
        env_steps = 0

        for vstep in range(1, per.vector_steps + 1):
            # --- collect one step of every env of this rank
            prev_steps, env_steps = env_steps, vstep * per.global_steps_per_vector_step
            if fault_step is not None and env_steps >= fault_step:
                raise RuntimeError(f"injected fault at global env step {env_steps} ({FAULT_ENV})")
            eps = linear_epsilon(env_steps, cfg.eps_start, cfg.eps_end, cfg.eps_decay_fraction * cfg.total_env_steps)
            actions = epsilon_greedy(mlp_forward(params, obs), eps, rng)
            next_obs, reward, terminated, truncated, info = envs.step(actions)
            done = terminated | truncated
            replay.add(obs, actions, reward, true_next_obs(next_obs, done, info), terminated, truncated)
            episode_return += reward
            if done.any():
                finished_returns.extend(episode_return[done].tolist())
                episode_return[done] = 0.0
            obs = next_obs

            # --- learn: a phase of updates every train_every global steps once learning_starts is reached
            if env_steps >= cfg.learning_starts and vstep % per.vector_steps_per_train == 0:
                lr = cfg.learning_rate * linear_epsilon(env_steps, 1.0, cfg.lr_final_fraction, cfg.total_env_steps)
                remaining = cfg.updates_per_train
                while remaining:  # split the phase at target-sync points
                    k = min(remaining, cfg.target_update_every - since_sync)
                    train_stats = learner.train_phase(replay.sample(rng, (k, per.batch_size)), lr)
                    remaining -= k
                    since_sync += k
                    if since_sync == cfg.target_update_every:
                        learner.sync_target()
                        since_sync = 0
                params = learner.acting_params()

            # --- evaluate and log at global step boundaries (the same vector step on every rank)
            final = vstep == per.vector_steps
            row = None
            if final or env_steps // cfg.eval_every > prev_steps // cfg.eval_every:
                returns = distributed.allgather(evaluator(lambda o: mlp_forward(params, o)))
                last_eval = summarize(returns)
                row = dict(last_eval)
                if solved_steps is None and threshold is not None and last_eval["eval_return_mean"] >= threshold:
                    solved_steps, solved_wall = env_steps, time.perf_counter() - start
            if final or row is not None or env_steps // cfg.log_every > prev_steps // cfg.log_every:
                now = time.perf_counter()
                sums = distributed.allreduce_sum([sum(finished_returns), len(finished_returns)])
                row = row or {}
                row.update({
                    "env_steps": env_steps, "wall_s": now - start, "updates": learner.updates,
                    "charts/episodic_return": sums[0] / sums[1] if sums[1] else None,
                    "charts/episodes": int(sums[1]), "charts/epsilon": eps,
                    "losses/td_loss": train_stats.get("td_loss"), "losses/q_mean": train_stats.get("q_mean"),
                    "perf/env_steps_per_s": (env_steps - tick_steps) / (now - tick_time),
                    "perf/updates_per_s": (learner.updates - tick_updates) / (now - tick_time),
                })
                logger.log(row)
                finished_returns.clear()
                tick_steps, tick_time, tick_updates = env_steps, now, learner.updates

        # --- the end: checksums of every replica, the final network, the summary
        checksums = distributed.gather_checksums(self.learner.online.variables)
        wall = time.perf_counter() - start
        if world.is_chief:
            checkpoint.save_keras_model(learner.online, run_dir / "q_network.keras")
        summary = {
            "env_id": cfg.env_id, "world_size": world.size, "env_steps": env_steps, "updates": learner.updates,
            "wall_s": wall, "final_eval_return_mean": last_eval.get("eval_return_mean"),
            "reward_threshold": threshold, "solved_env_steps": solved_steps, "solved_wall_s": solved_wall,
            "replica_checksums": checksums, "run_dir": str(run_dir),
        }
        logger.write_json("summary.json", summary)
        logger.close()
        envs.close()
        return summary

    def _resolve_run_dir(self) -> Path:
        if self.run_dir is None:
            name = f"{self.config.env_id.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.run_dir = Path("runs") / distributed.broadcast_object(name)
        try:
            if self.world.is_chief:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"run dir {self.run_dir}: cannot create it ({exc.strerror})") from None
        return self.run_dir


def _fault_step(rank: int) -> int | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    fault_rank, _, step = spec.partition(":")
    return int(step or 0) if int(fault_rank) == rank else None
