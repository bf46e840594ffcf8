"""The training loop, top to bottom: collect -> learn -> sync target -> evaluate -> log -> save.

Every rank runs this loop in lockstep. Each decision that leads to a collective (learn, sync, evaluate, log,
stop) is made from the global env-step and update counters, which are the same on every rank, so every rank
makes exactly the same collective calls.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hvd_dqn import checkpoint, distributed, rundir, runsetup, tasks, trainstate
from hvd_dqn.actor import Actor, actor_epsilons, scheduled_epsilon
from hvd_dqn.best import BestPolicy
from hvd_dqn.callbacks import CallbackList
from hvd_dqn.config import Config
from hvd_dqn.envs import env_seeds, make_vector_env, reward_threshold
from hvd_dqn.errors import JobRefused, UserError, say
from hvd_dqn.evaluation import Evaluator, summarize
from hvd_dqn.learner import Learner
from hvd_dqn.networks import build_user_network, load_builder
from hvd_dqn.preemption import Preempted, StopRequest
from hvd_dqn.pstrainer import ParameterServerMixin
from hvd_dqn.runlock import RunLock
from hvd_dqn.watchdog import Watchdog

TEST_HOOKS_ENV = "HVD_DQN_TEST_HOOKS"  # "1" turns on hvd_dqn.testing.faults' switches; read once, by __init__


class LogPoint(NamedTuple):
    """Where the last metrics row was logged: the speeds of the next row are measured from here."""

    env_steps: int
    time: float  # time.perf_counter()
    updates: int


@dataclass
class LoopState:
    """The loop's counters and results, equal on every rank (the actor, learner and replay keep their own)."""

    vstep: int = 0  # vector steps done by this rank
    env_steps: int = 0  # global env steps done by all ranks
    phase_stats: dict = field(default_factory=dict)  # the last learning phase's loss and Q
    last_eval: dict = field(default_factory=dict)
    solved_env_steps: int | None = None
    solved_wall_s: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "vstep": self.vstep,
            "env_steps": self.env_steps,
            "train_stats": dict(self.phase_stats),
            "last_eval": dict(self.last_eval),
            "solved_env_steps": self.solved_env_steps,
            "solved_wall_s": self.solved_wall_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vstep, self.env_steps = state["vstep"], state["env_steps"]
        self.phase_stats, self.last_eval = dict(state["train_stats"]), dict(state["last_eval"])
        self.solved_env_steps, self.solved_wall_s = state["solved_env_steps"], state["solved_wall_s"]


class Trainer:
    """``Trainer(config).train()`` trains on every rank of the job and returns the run summary (a dict).
    ``Trainer(config, run_dir, resume=True)`` continues from the newest checkpoint in ``run_dir``; ``train()``
    raises ``Preempted`` (on every rank, after writing a checkpoint) when SIGTERM or SIGUSR1 stopped it.
    ``q_network``: a user's Q-network builder, ``q_network(observation_space, n_actions, config)`` -> a tf_keras
    Model (instead of the config's ``q_network``, or the built-in MLP/CNN); pass the same one to resume.
    ``restart=True``: start afresh in a ``run_dir`` that holds an earlier run, whose outputs rank 0 deletes once it
    holds the lock (refused, deleting nothing, if the dir holds anything else: ``rundir.clear_earlier_run``)."""

    def __new__(cls, config=None, *args, **kwargs):
        # parameter_server: sync | async trains through the parameter-server trainer, whichever class was asked for
        if cls is Trainer and isinstance(config, Config) and config.parameter_server != "none":
            return super().__new__(PSTrainer)
        return super().__new__(cls)

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike | None = None,
        callbacks=(),
        resume: bool = False,
        q_network=None,
        restart: bool = False,
    ):
        if not isinstance(config, Config):
            raise TypeError("Trainer needs a hvd_dqn.Config")
        if resume and run_dir is None:
            raise UserError("resume needs the run directory of the run to continue")
        if restart and (resume or run_dir is None):
            raise UserError("restart starts a new run in an existing run directory: give run_dir, without resume")
        if q_network is not None and not callable(q_network):
            raise TypeError("q_network must be a function (observation_space, n_actions, config) -> tf_keras Model")
        self.config = config
        self.resume = resume
        self.restart = restart
        self.q_network_builder = q_network
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = CallbackList([*callbacks, *_test_hooks()])
        self.learner: Learner | None = None
        self.lock: RunLock | None = None
        self.watchdog: Watchdog | None = None
        self.compiled = False  # whether this process has run a learning phase (traced the update) yet

    @property
    def q_network(self):
        """The online Q-network, a Keras (tf_keras) model; available once train() has built it."""
        return None if self.learner is None else self.learner.online

    @property
    def policy_network(self):
        """The network of the trained policy (saved as q_network.keras): the weight average when policy_ema is
        set, else the online network."""
        return None if self.learner is None else self.learner.policy

    def train(self) -> dict[str, Any]:
        self.world = distributed.init()
        self.stop = StopRequest(self.world.rank).install()
        launcher = self.stop.watch_launcher()
        try:
            summary = self._train()
        except Preempted:
            # Every rank stopped at the same point, after the checkpoint: nobody waits in a collective. The
            # handlers stay: launchers terminate the other ranks as soon as one exits (srun --kill-on-bad-exit,
            # horovodrun), and a rank still closing must exit with PREEMPTED_EXIT_CODE too, not die of SIGTERM.
            self._close()
            raise
        except JobRefused:
            self.stop.uninstall()  # every rank learnt it from a collective and leaves: nobody waits in one
            raise
        except BaseException as exc:
            if self.world.size > 1 and not isinstance(exc, KeyboardInterrupt):
                # The other ranks are (or soon will be) blocked in a collective that this rank will never join.
                user_error = isinstance(exc, UserError)
                distributed.abort_job(exc, show_traceback=not user_error, exit_code=2 if user_error else 1)
            self.stop.uninstall()
            raise
        finally:
            if launcher is not None:
                launcher.cancel()
            self._release()
        self.stop.uninstall()
        return summary

    # ------------------------------------------------------------------ the loop
    def _train(self) -> dict[str, Any]:
        cfg = self.config
        self._setup()
        if cfg.hang_timeout_s is not None and self.watch_for_hangs:
            self.watchdog = Watchdog(
                self.run_dir, self.world.rank, self.world.size, cfg.hang_timeout_s, cfg.busy_timeout_s
            ).start()
        summary = self._run(self._loop)
        self._close()
        return summary

    def _loop(self) -> dict[str, Any]:
        cfg, s = self.config, self.state
        summary = None
        while s.env_steps < cfg.total_env_steps:
            prev_steps = s.env_steps
            s.vstep += 1
            s.env_steps += self.per_rank.global_steps_per_vector_step
            final = s.env_steps >= cfg.total_env_steps
            self._collect()
            if (
                s.env_steps >= cfg.learning_starts
                and s.vstep % self.per_rank.vector_steps_per_train == 0
                and self._replay_ready()
            ):
                # this process's first phase traces and compiles the update, which may take minutes (Atari CNN, XLA)
                with self.paused("compiling the update") if not self.compiled else contextlib.nullcontext():
                    self._learn()
                self.compiled = True
                self._phase_done()
            row = {}
            if final or _crossed(prev_steps, s.env_steps, cfg.eval_every):
                row.update(self._evaluate())
            if final or row or _crossed(prev_steps, s.env_steps, cfg.log_every):
                self._log({**row, **self._row_extras()})
            if final:  # before the final checkpoint, so that a failing one cannot take the finished run with it
                summary = self._write_outputs()
            save, stop = self._checkpoint_due(prev_steps, final)
            if save:
                with self.paused("writing a checkpoint"):
                    saved = self._save_checkpoint(final)
                self.last_checkpoint_at = time.monotonic()
                if stop:
                    raise Preempted(s.env_steps, saved, self.stop.signame)
            if self.watchdog is not None:
                # armed from the end of the first iteration, whose first action compiles the acting network
                self.watchdog.progress()
        if summary is None:  # resumed from the final checkpoint of a finished run: nothing left to train
            summary = self._write_outputs()
        return summary

    # ------------------------------------------------------------------ hooks (hvd_dqn.elastic overrides them)
    watch_for_hangs = True  # a Watchdog per rank when hang_timeout_s is set
    collectives_in_setup = True  # the ranks agree on setup's refusals (the replay's memory) with a collective

    def _run(self, loop) -> dict[str, Any]:
        """Run the loop to the end and return the summary."""
        return loop()

    def _phase_done(self) -> None:
        """After each learning phase, on every rank at the same point."""

    def _row_extras(self) -> dict[str, Any]:
        """Keys added to every metrics row."""
        return {}

    def _summary_extras(self) -> dict[str, Any]:
        """Keys added to the summary."""
        return {}

    def _share(self):
        """The per-rank quantities (``Config.per_rank``) of this job's learners."""
        return self.config.per_rank(self.world.size)

    def _save_checkpoint(self, final: bool) -> Path:
        try:
            return trainstate.save(self.run_dir, self.world, self.config, self.parts(), self.started_at)
        except checkpoint.CheckpointError as exc:
            if not final:
                raise
            raise checkpoint.CheckpointError(
                f"{exc}; the finished run's q_network.keras and summary.json are saved in {self.run_dir}"
            ) from None

    def paused(self, what: str):
        """Mark work that may outlast hang_timeout_s: the other ranks' watchdogs wait for this rank, and this
        rank's still ends the job if another rank's heartbeat goes stale (see hvd_dqn.watchdog)."""
        return self.watchdog.paused(what) if self.watchdog is not None else contextlib.nullcontext()

    def _setup(self) -> None:
        """Run dir, logger, envs, replay, learner, evaluator and loop state (restored when resuming)."""
        cfg, world = self.config, self.world
        self.start, self.started_at = time.perf_counter(), time.time()
        self.per_rank = share = self._share()
        cfg.check_schedule(share)
        self.run_dir = runsetup.resolve(self.run_dir, cfg.env_id, world)
        self._lock_run_dir()
        resume_from = self._resume_point()
        self.logger = runsetup.open_outputs(self.run_dir, world, cfg, share, resume_from)
        self.threshold = cfg.reward_threshold if cfg.reward_threshold is not None else reward_threshold(cfg.env_id)

        self.task = tasks.for_config(cfg)  # classic control or Atari: what differs between them
        self.envs = make_vector_env(
            cfg.env_id,
            cfg.num_envs,
            backend=cfg.atari_vector_env,
            threads=world.cores_per_rank,
            **self.task.env_options,
        )
        obs_shape = self.envs.single_observation_space.shape
        n_actions = int(self.envs.single_action_space.n)
        self.shard = runsetup.make_replay(
            self.task, share.replay_capacity, obs_shape, world, agree=self.collectives_in_setup
        )
        self.actor = Actor(
            self.envs,
            self.task,
            self.shard,
            np.random.default_rng([cfg.seed, world.rank, 7]),
            env_seeds(cfg.seed, world.rank, cfg.num_envs),
        )
        self.learner = self._make_learner(obs_shape, n_actions, self._network_builder())
        self.q_fn = self.learner.q_fn()  # Q-values of the online network, for acting
        self.evaluator = self._make_evaluator()
        self.best = BestPolicy(self.run_dir, writer=world.is_chief)
        self.state = LoopState()
        self.replay_ready = False
        self.last_log = LogPoint(0, self.start, 0)
        self.last_checkpoint_at = time.monotonic()
        if resume_from is not None:
            self._resume(resume_from)
        self.callbacks.fire("on_train_begin", self)

    def _resume_point(self) -> Path | None:
        return runsetup.resume_point(self.run_dir, self.resume)

    # ------------------------------------------------------------------ the phases
    def _collect(self) -> None:
        """One step of every env of this rank, epsilon-greedy, into the replay shard."""
        cfg = self.config
        eps = actor_epsilons(self.epsilon(), self.world.rank, self.world.size, cfg.num_envs, cfg.epsilon_spread)
        self.actor.step(self.q_fn, eps)

    def _learn(self) -> None:
        """A learning phase (the learner's schedule: its updates, target syncs, averagings), then acting on the
        new weights."""
        phase = self.learner.learn(self.shard, self.actor.rng, self.per_rank, self.state.env_steps)
        self.state.phase_stats = phase.stats()
        self.q_fn = self.learner.q_fn()

    def _replay_ready(self) -> bool:
        """Every rank's replay holds a minibatch to sample (a small learning_starts can come before that: n-step
        transitions need n steps, Atari's frame stacks a few frames). Allreduced, so every rank decides alike;
        replay only grows, so once true it stays true and the collective is not run again."""
        if not self.replay_ready:
            short = float(self.shard.sampleable_count() < self.per_rank.batch_size)
            self.replay_ready = distributed.allreduce_sum([short])[0] == 0
        return self.replay_ready

    def _evaluate(self) -> dict[str, Any]:
        """Greedy episodes, split across ranks and gathered on all (a collective)."""
        s, learner = self.state, self.learner
        # the policy's weights, snapshotted here: evaluations are far fewer than learning phases
        q_fn = self.q_fn if learner.averaged is None else learner.q_fn(learner.policy)
        with self.paused("evaluating"):
            returns = self.evaluator(q_fn)
        s.last_eval = summarize(distributed.allgather(returns))
        if (
            s.solved_env_steps is None
            and self.threshold is not None
            and s.last_eval["eval_return_mean"] >= self.threshold
        ):
            s.solved_env_steps, s.solved_wall_s = s.env_steps, time.perf_counter() - self.start
        self.callbacks.fire("on_evaluation", self, {**s.last_eval, "env_steps": s.env_steps})
        evaluation = {
            "env_steps": s.env_steps,
            "updates": learner.updates,
            "wall_s": time.perf_counter() - self.start,
            **s.last_eval,
        }
        if self.best.improves(evaluation):  # the same on every rank; rank 0 writes best/
            with self.paused("saving the best policy"):
                self.best.keep(evaluation, lambda path: checkpoint.save_keras_model(learner.policy, path))
        return dict(s.last_eval)

    def _log(self, row: dict[str, Any]) -> None:
        """A metrics row: training returns summed over ranks (a collective), losses and speeds."""
        s, learner = self.state, self.learner
        now = time.perf_counter()
        last = self.last_log
        finished = self.actor.take_finished_returns()
        sums = distributed.allreduce_sum([sum(finished), len(finished)])
        row.update(
            {
                "env_steps": s.env_steps,
                "wall_s": now - self.start,
                "updates": learner.updates,
                "charts/episodic_return": sums[0] / sums[1] if sums[1] else None,
                "charts/episodes": int(sums[1]),
                "charts/epsilon": self.epsilon(),
                "losses/td_loss": s.phase_stats.get("td_loss"),
                "losses/q_mean": s.phase_stats.get("q_mean"),
                "perf/env_steps_per_s": (s.env_steps - last.env_steps) / (now - last.time),
                "perf/env_steps_per_s_per_rank": (s.env_steps - last.env_steps) / (now - last.time) / self.world.size,
                "perf/updates_per_s": (learner.updates - last.updates) / (now - last.time),
            }
        )
        if self.config.log_allreduce_ms:
            row["perf/allreduce_ms"] = distributed.time_allreduce(learner.online.trainable_variables)
        self.logger.log(row)
        self.callbacks.fire("on_log", self, row)
        self.last_log = LogPoint(s.env_steps, now, learner.updates)

    def _network_builder(self):
        """``name -> model`` for a user's Q-network (the API's, else the config's), None for the built-in ones."""
        builder = self.q_network_builder
        if builder is None and self.config.q_network is not None:
            builder = load_builder(self.config.q_network)
        if builder is None:
            return None
        space, n_actions, cfg = self.envs.single_observation_space, int(self.envs.single_action_space.n), self.config
        return lambda name: build_user_network(builder, space, n_actions, cfg, name)

    def _make_learner(self, obs_shape: tuple[int, ...], n_actions: int, build_network=None) -> Learner:
        learner = Learner(self.config, obs_shape, n_actions, self.world.size, build_network)
        learner.broadcast_initial_weights()
        if self.config.precision == "mixed_float16" and self.world.is_chief and not _has_gpu():
            say(
                "hvd-dqn: precision mixed_float16 on a CPU: float16 is emulated there and slow (it is meant for GPUs; "
                "mixed_bfloat16 is the CPU's mixed precision)"
            )
        return learner

    def _make_evaluator(self) -> Evaluator:
        cfg, world = self.config, self.world
        return Evaluator(
            cfg.env_id,
            cfg.eval_episodes,
            cfg.seed,
            world.rank,
            world.size,
            cfg.eval_epsilon,
            env_kwargs=self.task.env_options,
        )

    def parts(self) -> trainstate.Parts:
        """The parts whose state a checkpoint holds."""
        return trainstate.Parts(self.learner, self.shard, self.task, self.actor, self.evaluator, self.state)

    def _checkpoint_due(self, prev_steps: int, final: bool) -> tuple[bool, bool]:
        """(save a checkpoint now, stop after it). The step trigger and the end come from the global counter; a
        stop request (any rank's signal) and the wall-clock trigger (rank 0's clock) are allreduced at decision
        points, the iterations where a learning phase falls due, which are the same on every rank."""
        cfg, s = self.config, self.state
        save = final or (cfg.checkpoint_every is not None and _crossed(prev_steps, s.env_steps, cfg.checkpoint_every))
        if not (final or s.vstep % self.per_rank.vector_steps_per_train == 0):
            return save, False
        timed = (
            self.world.is_chief
            and cfg.checkpoint_every_minutes is not None
            and time.monotonic() - self.last_checkpoint_at >= 60.0 * cfg.checkpoint_every_minutes
        )
        stop_votes, timed = distributed.allreduce_sum([float(self.stop.poll(s.env_steps)), float(timed)])
        stop = stop_votes > 0 and not final  # at the end the run simply completes
        if stop_votes > 0:
            # every rank is here: the checkpoint gets written, however long it takes, and names the one cause
            self.stop.agreed(distributed.allgather_object(self.stop.cause()))
        return save or stop or timed > 0, stop

    def _resume(self, ckpt: Path) -> None:
        """Continue from ``ckpt``: restore the state, keep wall-clock times counting from the run's first start
        (so the metrics show the gap), and log a row naming the checkpoint and the gap."""
        state = trainstate.restore(ckpt, self.world, self.config, self.parts())
        self.best.resume()
        if self.actor.restart_reason is not None and self.world.is_chief:  # the same on every rank
            say(
                f"hvd-dqn: resuming from {ckpt.name}, the episodes start afresh: {self.actor.restart_reason}; "
                "the rest is restored, but the run is not bit-exact"
            )
        self.q_fn = self.learner.q_fn()
        s = self.state
        now = time.perf_counter()
        self.started_at = state["started_at"]
        self.start = now - (time.time() - self.started_at)
        self.last_log = LogPoint(s.env_steps, now, self.learner.updates)
        self.logger.log(
            {
                "env_steps": s.env_steps,
                "wall_s": now - self.start,
                "updates": self.learner.updates,
                "event": "resumed",
                "checkpoint": ckpt.name,
                "resume_gap_s": time.time() - state["written_at"],
                # where the world size changed (docs/checkpoints.md: resuming onto another world size)
                "world_size": self.world.size,
                "checkpoint_world_size": state["world_size"],
            }
        )

    def _lock_run_dir(self) -> None:
        self.lock = runsetup.lock(self.run_dir, self.world, self.restart)

    def _release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.lock is not None:
            self.lock.release()

    def _close(self) -> None:
        for closable in (getattr(self, "logger", None), getattr(self, "envs", None)):
            if closable is not None:
                closable.close()

    def _write_outputs(self) -> dict[str, Any]:
        """Checksums of every replica (a collective), the final network and the summary."""
        cfg, s, world = self.config, self.state, self.world
        checksums = distributed.gather_checksums(self.learner.online.variables)
        peak_rss_mb = distributed.allgather([_peak_rss_mb()]).tolist()
        wall = time.perf_counter() - self.start
        if world.is_chief:
            with self.paused("saving the model"):
                checkpoint.save_keras_model(self.learner.policy, self.run_dir / rundir.MODEL)
        distributed.barrier()  # the file is complete on every rank's view before anyone is told of it
        self.callbacks.fire("on_checkpoint", self, self.run_dir / rundir.MODEL)
        summary = {
            "env_id": cfg.env_id,
            "world_size": world.size,
            "env_steps": s.env_steps,
            "updates": self.learner.updates,
            "wall_s": wall,
            "env_steps_per_s": s.env_steps / wall,
            "updates_per_s": self.learner.updates / wall,
            "final_eval_return_mean": s.last_eval.get("eval_return_mean"),
            "reward_threshold": self.threshold,
            "solved_env_steps": s.solved_env_steps,
            "solved_wall_s": s.solved_wall_s,
            "replica_checksums": checksums,
            "peak_rss_mb": peak_rss_mb,
            "run_dir": str(self.run_dir),
            **self.best.summary(),
            **self._summary_extras(),
        }
        self.logger.write_json(rundir.SUMMARY, summary)
        return summary

    # ------------------------------------------------------------------ helpers
    def epsilon(self) -> float:
        return scheduled_epsilon(self.config, self.state.env_steps)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return after // every > before // every


def _test_hooks() -> list:
    """The fault-injection callbacks that tests switch on with HVD_DQN_TEST_HOOKS=1; none in a production job."""
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return []
    from hvd_dqn.testing.faults import from_env

    return from_env()


class PSTrainer(ParameterServerMixin, Trainer):
    """The Trainer of a parameter-server job (``parameter_server: sync | async``): what ``Trainer(config)`` of such a
    config makes."""


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))
