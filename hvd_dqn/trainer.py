"""The training loop, top to bottom: collect -> learn -> sync target -> evaluate -> log -> save.

Every rank runs this loop in lockstep. Each decision that leads to a collective (learn, sync, evaluate, log,
stop) is made from the global env-step and update counters, which are the same on every rank, so every rank
makes exactly the same collective calls.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from hvd_dqn import builders, checkpoint, distributed, jobexit, reporting, rundir, runsetup, trainstate, triggers
from hvd_dqn.actor import actor_epsilons, scheduled_epsilon
from hvd_dqn.best import BestPolicy
from hvd_dqn.callbacks import CallbackList
from hvd_dqn.config import Config
from hvd_dqn.envs import reward_threshold
from hvd_dqn.evaluation import summarize
from hvd_dqn.learner import Learner
from hvd_dqn.loophooks import LoopHooks
from hvd_dqn.preemption import Preempted, StopRequest
from hvd_dqn.pstrainer import ParameterServerMixin
from hvd_dqn.runlock import RunLock
from hvd_dqn.trainingstate import TrainingState
from hvd_dqn.watchdog import Watchdog

TEST_HOOKS_ENV = "HVD_DQN_TEST_HOOKS"  # "1" turns on hvd_dqn.testing.faults' switches; read once, by __init__


class Trainer(LoopHooks):
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
        runsetup.check_arguments(config, run_dir, resume, restart, q_network)
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
        with jobexit.ending(self.stop, close=self._close, release=self._release):
            self._setup()
            if self.watch_for_hangs:
                self.watchdog = Watchdog.for_config(self.config, self.run_dir, self.world)
            summary = self._run(self._loop)
            self._close()
            return summary

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> dict[str, Any]:
        cfg, s = self.config, self.state
        summary = None
        while s.env_steps < cfg.total_env_steps:
            prev_steps = s.env_steps
            s.vstep += 1
            s.env_steps += self.per_rank.global_steps_per_vector_step
            final = s.env_steps >= cfg.total_env_steps
            self._collect()
            if s.env_steps >= cfg.learning_starts and s.vstep % self.per_rank.vector_steps_per_train == 0:
                if self._replay_ready():
                    self._learn()
                    self._phase_done()
            row = {}
            if final or triggers.crossed(prev_steps, s.env_steps, cfg.eval_every):
                row.update(self._evaluate())
            if final or row or triggers.crossed(prev_steps, s.env_steps, cfg.log_every):
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

    # ------------------------------------------------------------------ setup
    def _share(self):
        """The per-rank quantities (``Config.per_rank``) of this job's learners."""
        return self.config.per_rank(self.world.size)

    def _make_learner(self, obs_shape: tuple[int, ...], n_actions: int, build_network=None) -> Learner:
        return builders.make_learner(self.config, obs_shape, n_actions, self.world, build_network)

    def _resume_point(self) -> Path | None:
        return runsetup.resume_point(self.run_dir, self.resume)

    def paused(self, what: str):
        """Mark work that may outlast hang_timeout_s: the other ranks' watchdogs wait for this rank, and this
        rank's still ends the job if another rank's heartbeat goes stale (see hvd_dqn.watchdog)."""
        return self.watchdog.paused(what) if self.watchdog is not None else contextlib.nullcontext()

    def _setup(self) -> None:
        """Run dir, logger, envs, replay, learner, evaluator and training state (restored when resuming)."""
        cfg, world = self.config, self.world
        self.start, self.started_at = time.perf_counter(), time.time()
        self.per_rank = share = self._share()
        cfg.check_schedule(share)
        self.run_dir = runsetup.resolve(self.run_dir, cfg.env_id, world)
        self._lock_run_dir()
        resume_from = self._resume_point()
        self.logger = runsetup.open_outputs(self.run_dir, world, cfg, share, resume_from)
        self.threshold = cfg.reward_threshold if cfg.reward_threshold is not None else reward_threshold(cfg.env_id)
        parts = builders.make_parts(
            cfg, world, share, self.q_network_builder, self._make_learner, self.collectives_in_setup
        )
        self.task, self.envs, self.shard, self.actor, self.learner, self.evaluator = parts
        self.q_fn = self.learner.q_fn()  # Q-values of the online network, for acting
        self.best = BestPolicy(self.run_dir, writer=world.is_chief)
        self.state = TrainingState()
        self.replay_ready = False
        self.last_log = reporting.LogPoint(0, self.start, 0)
        self.last_checkpoint_at = time.monotonic()
        if resume_from is not None:
            self._resume(resume_from)
        self.callbacks.fire("on_train_begin", self)

    # ------------------------------------------------------------------ the phases
    def _collect(self) -> None:
        """One step of every env of this rank, epsilon-greedy, into the replay shard."""
        cfg = self.config
        eps = actor_epsilons(self.epsilon(), self.world.rank, self.world.size, cfg.num_envs, cfg.epsilon_spread)
        self.actor.step(self.q_fn, eps)

    def _learn(self) -> None:
        """A learning phase (the learner's schedule: its updates, target syncs, averagings), then acting on the
        new weights."""
        s, learner = self.state, self.learner
        # this process's first phase traces and compiles the update, which may take minutes (Atari CNN, XLA)
        with self.paused("compiling the update") if not self.compiled else contextlib.nullcontext():
            s.train_stats = learner.learn(self.shard, self.actor.rng, self.per_rank, s.env_steps).stats()
        self.compiled = True
        s.updates, s.since_sync = learner.updates, learner.since_sync
        self.q_fn = learner.q_fn()

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
            returns = self.evaluator(q_fn, s.evaluations)
        s.evaluated(summarize(distributed.allgather(returns)), self.threshold, time.perf_counter() - self.start)
        self.callbacks.fire("on_evaluation", self, {**s.last_eval, "env_steps": s.env_steps})
        wall_s = time.perf_counter() - self.start
        evaluation = {"env_steps": s.env_steps, "updates": s.updates, "wall_s": wall_s, **s.last_eval}
        if self.best.improves(evaluation):  # the same on every rank; rank 0 writes best/
            with self.paused("saving the best policy"):
                self.best.keep(evaluation, lambda path: checkpoint.save_keras_model(learner.policy, path))
        return dict(s.last_eval)

    def _log(self, row: dict[str, Any]) -> None:
        """A metrics row: training returns summed over ranks (a collective), losses and speeds."""
        s, now = self.state, time.perf_counter()
        finished = self.actor.take_finished_returns()
        episodes = distributed.allreduce_sum([sum(finished), len(finished)])
        row.update(reporting.metrics_row(s, self.last_log, now, self.start, self.world.size, self.epsilon(), episodes))
        if self.config.log_allreduce_ms:
            row["perf/allreduce_ms"] = distributed.time_allreduce(self.learner.online.trainable_variables)
        self.logger.log(row)
        self.callbacks.fire("on_log", self, row)
        self.last_log = reporting.LogPoint(s.env_steps, now, s.updates)

    def _write_outputs(self) -> dict[str, Any]:
        """Checksums of every replica (a collective), the final network and the summary."""
        world, model = self.world, self.run_dir / rundir.MODEL
        checksums = distributed.gather_checksums(self.learner.online.variables)
        peak_rss_mb = distributed.allgather([reporting.peak_rss_mb()]).tolist()
        wall = time.perf_counter() - self.start
        if world.is_chief:
            with self.paused("saving the model"):
                checkpoint.save_keras_model(self.learner.policy, model)
        distributed.barrier()  # the file is complete on every rank's view before anyone is told of it
        self.callbacks.fire("on_checkpoint", self, model)
        summary = reporting.summary(self.config, world.size, self.state, wall, self.threshold, checksums, peak_rss_mb)
        summary.update(run_dir=str(self.run_dir), **self.best.summary(), **self._summary_extras())
        self.logger.write_json(rundir.SUMMARY, summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def parts(self) -> trainstate.Parts:
        """The parts whose state a checkpoint holds besides the training state."""
        return trainstate.Parts(self.learner, self.shard, self.task, self.actor)

    def _checkpoint_due(self, prev_steps: int, final: bool) -> tuple[bool, bool]:
        """(save a checkpoint now, stop after it): ``triggers.checkpoint_due``."""
        args = self.config, self.state, self.per_rank, self.world, self.stop, self.last_checkpoint_at
        return triggers.checkpoint_due(*args, prev_steps, final)

    def _save_checkpoint(self, final: bool) -> Path:
        return trainstate.save(self.run_dir, self.world, self.config, self.parts(), self.state, self.started_at, final)

    def _resume(self, ckpt: Path) -> None:
        """Continue from ``ckpt`` (``_restore``, now; the elastic trainer defers it)."""
        self._restore(ckpt)

    def _restore(self, ckpt: Path) -> None:
        """Load ``ckpt`` (a collective), keep wall-clock times counting from the run's first start (so the metrics
        show the gap), and log a row naming the checkpoint and the gap."""
        restored = trainstate.restore(ckpt, self.world, self.config, self.parts())
        self.state, self.started_at, now = restored.state, restored.started_at, time.perf_counter()
        self.best.resume()
        self.q_fn = self.learner.q_fn()
        self.start = now - (time.time() - self.started_at)
        self.last_log = reporting.LogPoint(self.state.env_steps, now, self.state.updates)
        self.logger.log(reporting.resumed_row(self.state, now - self.start, ckpt.name, restored, self.world.size))

    # ------------------------------------------------------------------ the run dir and the end
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

    # ------------------------------------------------------------------ helpers
    def epsilon(self) -> float:
        return scheduled_epsilon(self.config, self.state.env_steps)


def _test_hooks() -> list:
    """The fault-injection callbacks that tests switch on with HVD_DQN_TEST_HOOKS=1; none in a production job."""
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return []
    from hvd_dqn.testing.faults import from_env

    return from_env()


class PSTrainer(ParameterServerMixin, Trainer):
    """The Trainer of a parameter-server job (``parameter_server: sync | async``): what ``Trainer(config)`` of such a
    config makes."""
