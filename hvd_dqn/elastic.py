"""Elastic training (``hvd-dqn train --elastic`` under ``horovodrun --min-np A --max-np B
--host-discovery-script ...``): when a worker dies the others roll back to the last committed state and go on
with fewer ranks; workers that (re)appear join at the next commit.

What is committed, in memory, at every learning-phase boundary: the online and target networks, Adam's slots
and the training state (``hvd_dqn.trainingstate``, the record a checkpoint holds too), in
``distributed.elastic_state``, a Horovod ``ObjectState`` (not Horovod's ``TensorFlowState``, for the reasons
given there). What is NOT rolled back: each surviving rank's envs and replay shard, which simply continue (a
dead worker's shard is lost with it). So an elastic run is not bit-exact; it completes. Global env steps count
what the ranks alive at each moment collected, so the per-rank schedule (batch per rank, vector steps per
learning phase) is recomputed after every change of world size.

Disk checkpoints: the plain trainer's triggers (``checkpoint_every`` env steps, ``checkpoint_every_minutes``,
SIGTERM/SIGUSR1, which then exits 75, and the end) and its ``trainstate.save``, written only at a learning-phase
boundary (or the end) and right after a commit, so the checkpoint is the committed state of every live rank;
state.json records the world size of that moment. A reset during a save (a worker lost in its collectives, or
hosts changed at its commit) rolls back to the last commit like any other: ``ckpt-N.tmp`` is never renamed into
place, and the checkpoint still owed (the step trigger counts from the last checkpoint written, a committed
counter; a stop request stays raised) is written at the next boundary, the final one after the loop.
``--elastic --resume RUN_DIR`` continues from the newest checkpoint: rank 0 finds it, and every rank of the
first world loads it inside the elastic loop, after Horovod's sync (no collective before it); a plain
``--resume`` continues an elastic run's directory as any other (the checkpoint's world size is the number of
ranks alive when it was written).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hvd_dqn import builders, checkpoint, distributed, runlock
from hvd_dqn.errors import UserError, say
from hvd_dqn.learner import Learner
from hvd_dqn.metrics import RunLogger
from hvd_dqn.runlock import RunDirInUse, RunLock
from hvd_dqn.trainer import Trainer
from hvd_dqn.trainingstate import FIELD_TYPES, TrainingState


class ElasticTrainer(Trainer):
    """``Trainer`` whose one loop runs under ``hvd.elastic.run`` through the loop's hooks: it commits after each
    learning phase and rebuilds what depends on the rank and world size after each reset, with the trainer's own
    constructors of the parts."""

    def __init__(self, config, run_dir=None, callbacks=(), resume: bool = False, restart: bool = False):
        if restart:
            raise UserError(
                "restart cannot be combined with elastic training (an elastic job's new rank 0 would "
                "delete the job's own checkpoints)"
            )
        if run_dir is None:
            raise UserError("--elastic needs --run-dir (workers that join later must find the same directory)")
        if config.backward_passes_per_step > 1:
            raise UserError(
                "--elastic needs backward_passes_per_step: 1 (the gradients a rank sums between two "
                "allreduces are not part of the committed state)"
            )
        super().__init__(config, run_dir, callbacks, resume=resume)
        self.resume_from: Path | None = None  # rank 0's checkpoint to continue from, loaded inside the elastic loop
        self.checkpoint_env_steps = 0  # the global env step of the last disk checkpoint written (committed)
        self.lock_refused = False  # a new rank 0 could not take the run dir's lock over yet (said once)

    def _make_learner(self, obs_shape, n_actions: int, build_network=None) -> Learner:
        # Always the allreduce path (even while alone), so a worker that joins later is averaged with; no
        # broadcast here: elastic_run syncs rank 0's state before the loop starts (a collective before it would
        # deadlock a worker that joins while the others sync).
        return Learner(self.config, obs_shape, n_actions, self.world.size, build_network, elastic=True)

    def _lock_run_dir(self) -> None:
        # No broadcast of the outcome: a worker that joins later runs this too, alone. A refused rank 0 fails
        # with a plain UserError, which ends the whole job (the base class's RunDirInUse assumes every rank knows).
        if self.world.is_chief:
            try:
                self.lock = RunLock(self.run_dir).acquire()
            except RunDirInUse as exc:
                raise UserError(str(exc)) from None

    def _resume_point(self) -> Path | None:
        # Rank 0 alone decides, with no collective (the others learn it from the state that elastic_run syncs): a
        # worker that joins later is never rank 0, and it must neither refuse the run dir, which holds this job's
        # own checkpoints, nor load a checkpoint of its own.
        return super()._resume_point() if self.world.is_chief else None

    def _resume(self, ckpt: Path) -> None:
        self.resume_from = ckpt  # loaded by every rank in _run, after Horovod's first sync

    def _restore(self, ckpt: Path) -> None:
        """Every rank of the current world loads ``ckpt``: the plain trainer's restore (a collective), which this
        class's ``_resume`` defers to here. Callbacks' on_train_begin has run before it."""
        super()._restore(ckpt)
        self.checkpoint_env_steps = self.state.env_steps

    def _checkpoint_due(self, prev_steps: int, final: bool) -> tuple[bool, bool]:
        """The plain run's decision, written only at a learning-phase boundary (or the end), where a commit comes
        right before it, and with the step trigger counted from the last checkpoint written rather than from the
        previous iteration: a checkpoint that a reset cut short is still owed after the rollback."""
        save, stop = super()._checkpoint_due(self.checkpoint_env_steps, final)
        boundary = final or self.state.vstep % self.per_rank.vector_steps_per_train == 0
        return save and boundary, stop

    def _save_checkpoint(self, final: bool) -> Path:
        """Commit, then the plain trainer's save of what was just committed. The commit (a collective; it raises
        HostsUpdatedInterrupt when workers came or went, before anything is written) comes after rank 0 has
        removed a ``ckpt-N.tmp`` of this step that an earlier attempt left (a reset at the end replays the last
        steps), so no rank writes into a half-written directory."""
        if self.world.is_chief:
            self._hold_lock()
            if runlock.holds(self.run_dir):
                shutil.rmtree(checkpoint.tmp_path(self.run_dir, self.state.env_steps), ignore_errors=True)
        self._commit()
        saved = super()._save_checkpoint(final)
        self.checkpoint_env_steps = self.state.env_steps  # committed with the next commit
        return saved

    def _hold_lock(self) -> None:
        """Rank 0 holds the run dir's lock; a rank that becomes rank 0 after the first one died takes it over (the
        kernel released the dead one's), so that pruning may remove ``.tmp`` leftovers and no other job moves in.
        Refused (the old rank 0 not yet gone): said once, tried again before the next checkpoint."""
        if self.lock is not None or runlock.holds(self.run_dir):
            return
        try:
            self.lock = RunLock(self.run_dir).acquire()
        except UserError as exc:
            if not self.lock_refused:
                say(f"hvd-dqn: rank 0 (new after a reset): {exc}; trying again at the next checkpoint")
            self.lock_refused = True

    # ---- the loop's hooks
    watch_for_hangs = False  # the heartbeats of a fixed set of ranks: elastic ranks come and go
    collectives_in_setup = False  # a worker that joins later runs setup alone; a refusal there ends the job

    def _run(self, loop) -> dict[str, Any]:
        """The loop under ``hvd.elastic.run``: started again from the last commit after every reset."""
        learner = self.learner
        resume_from = None if self.resume_from is None else str(self.resume_from)
        state = self.elastic_state = distributed.elastic_state(
            learner.network_variables + learner.optimizer_variables, **self._committed(), resume_from=resume_from
        )
        state.register_reset_callbacks([self._on_reset])

        def from_commit(state) -> dict[str, Any]:
            self._load(state)  # the committed (or just synced) counters
            if state.resume_from is not None:
                # rank 0's checkpoint, synced to every rank: all load it, together (a collective decided from the
                # synced state). Cleared at the first commit; a reset before that rolls back to here and loads again.
                self._restore(Path(state.resume_from))
                state.resume_from = None
            summary = loop()
            if self.state.env_steps > self.checkpoint_env_steps:
                # a reset between the last step and its checkpoint (at the commit before it, or a worker lost
                # during the write): the loop had nothing left to do, the final checkpoint is still owed
                with self.paused("writing a checkpoint"):
                    self._save_checkpoint(final=True)
            return summary

        return distributed.elastic_run(from_commit)(state)

    def _phase_done(self) -> None:
        self._commit()

    def _commit(self) -> None:
        for name, value in self._committed().items():
            setattr(self.elastic_state, name, value)
        self.elastic_state.commit()  # Horovod: a collective; raises HostsUpdatedInterrupt when workers came or went

    def _row_extras(self) -> dict[str, Any]:
        return {"world_size": self.world.size}

    def _committed(self) -> dict[str, Any]:
        """The committed values besides the networks: the training state's fields, the step of the last disk
        checkpoint and the best evaluation."""
        return {
            **self.state.to_dict(),
            "checkpoint_env_steps": self.checkpoint_env_steps,
            "best": dict(self.best.evaluation),
        }

    def _load(self, state) -> None:
        self.state = TrainingState.from_dict({name: getattr(state, name) for name in FIELD_TYPES})
        self.learner.load_state_dict({"updates": self.state.updates, "since_sync": self.state.since_sync})
        self.checkpoint_env_steps = state.checkpoint_env_steps
        if self.best.improves(state.best):  # a worker that joined; a survivor's own may be newer than the commit
            self.best.evaluation = dict(state.best)
        self.q_fn = self.learner.q_fn()  # weights were restored or synced

    def _on_reset(self) -> None:
        """After workers came or went: this process's new rank and world size, and what depends on them."""
        cfg = self.config
        world = self.world = distributed.init()
        self.per_rank = cfg.per_rank(world.size)
        self.replay_ready = False  # a joining worker's replay starts empty: every rank asks again, alike
        self.evaluator = builders.make_evaluator(cfg, world, self.task)  # this rank's share of the episodes
        if world.is_chief and not self.logger.enabled:  # rank 0 died: its successor writes the outputs
            self.logger = RunLogger(self.run_dir, enabled=True, total_env_steps=cfg.total_env_steps)
        elif not world.is_chief and self.logger.enabled:
            self.logger.close()
            self.logger = RunLogger(self.run_dir, enabled=False)
        if world.is_chief:
            self._hold_lock()
        self.best.writer = world.is_chief
        print(f"hvd-dqn: elastic reset: now rank {world.rank} of {world.size}", flush=True)
