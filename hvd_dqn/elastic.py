"""Elastic training (``hvd-dqn train --elastic`` under ``horovodrun --min-np A --max-np B
--host-discovery-script ...``): when a worker dies the others roll back to the last committed state and go on
with fewer ranks; workers that (re)appear join at the next commit.

What is committed, in memory, at every learning-phase boundary: the online and target networks, Adam's slots
and the loop's global counters (Horovod's ``TensorFlowState``). What is NOT rolled back: each surviving rank's
envs and replay shard, which simply continue (a dead worker's shard is lost with it). So an elastic run is not
bit-exact; it completes. Global env steps count what the ranks alive at each moment collected, so the per-rank
schedule (batch per rank, vector steps per learning phase) is recomputed after every change of world size.
Disk checkpoints and SIGTERM handling are the non-elastic trainer's; an elastic job writes none.
"""
from __future__ import annotations

from typing import Any

from hvd_dqn import distributed
from hvd_dqn.errors import UserError
from hvd_dqn.learner import Learner
from hvd_dqn.metrics import RunLogger
from hvd_dqn.runlock import RunDirInUse, RunLock
from hvd_dqn.trainer import Trainer


class ElasticTrainer(Trainer):
    """``Trainer`` whose one loop runs under ``hvd.elastic.run`` through the loop's hooks: it commits after each
    learning phase and rebuilds what depends on the rank and world size after each reset, with the trainer's own
    constructors of the parts."""

    def __init__(self, config, run_dir=None, callbacks=(), resume: bool = False):
        if resume:
            raise UserError("--elastic runs commit in memory and write no checkpoint to resume; drop --resume")
        if run_dir is None:
            raise UserError("--elastic needs --run-dir (workers that join later must find the same directory)")
        if config.backward_passes_per_step > 1:
            raise UserError("--elastic needs backward_passes_per_step: 1 (the gradients a rank sums between two "
                            "allreduces are not part of the committed state)")
        super().__init__(config, run_dir, callbacks)

    def _make_learner(self, obs_shape, n_actions: int, build_network=None) -> Learner:
        # Always the allreduce path (even while alone), so a worker that joins later is averaged with; no
        # broadcast here: elastic_run syncs rank 0's state before the loop starts (a collective before it would
        # deadlock a worker that joins while the others sync).
        return Learner(self.config, obs_shape, n_actions, self.world.size, build_network, elastic=True)

    def _checkpoint_due(self, prev_steps: int, final: bool) -> tuple[bool, bool]:
        return False, False

    def _lock_run_dir(self) -> None:
        # No broadcast of the outcome: a worker that joins later runs this too, alone. A refused rank 0 fails
        # with a plain UserError, which ends the whole job (the base class's RunDirInUse assumes every rank knows).
        if self.world.is_chief:
            try:
                self.lock = RunLock(self.run_dir).acquire()
            except RunDirInUse as exc:
                raise UserError(str(exc)) from None

    # ---- the loop's hooks
    watch_for_hangs = False  # the heartbeats of a fixed set of ranks: elastic ranks come and go

    def _run(self, loop) -> dict[str, Any]:
        """The loop under ``hvd.elastic.run``: started again from the last commit after every reset."""
        learner = self.learner
        state = self.elastic_state = distributed.elastic_state(
            learner.network_variables + list(learner.optimizer.variables()), **self._counters())
        state.register_reset_callbacks([self._on_reset])

        def from_commit(state) -> dict[str, Any]:
            self._load(state)  # the committed (or just synced) counters
            return loop()

        return distributed.elastic_run(from_commit)(state)

    def _phase_done(self) -> None:
        for name, value in self._counters().items():
            setattr(self.elastic_state, name, value)
        self.elastic_state.commit()  # Horovod: a collective; raises HostsUpdatedInterrupt when workers came or went

    def _row_extras(self) -> dict[str, Any]:
        return {"world_size": self.world.size}

    def _counters(self) -> dict[str, Any]:
        """The committed values besides the networks: the loop's, the learner's and the evaluator's counters."""
        s = self.state
        return {"vstep": s.vstep, "env_steps": s.env_steps, **self.learner.state_dict(),
                "evaluator_count": self.evaluator.state_dict()["count"], "last_eval": dict(s.last_eval),
                "solved_env_steps": s.solved_env_steps, "solved_wall_s": s.solved_wall_s}

    def _load(self, state) -> None:
        s = self.state
        s.vstep, s.env_steps = state.vstep, state.env_steps
        s.last_eval, s.solved_env_steps, s.solved_wall_s = dict(state.last_eval), state.solved_env_steps, \
            state.solved_wall_s
        self.learner.load_state_dict({"updates": state.updates, "since_sync": state.since_sync})
        self.evaluator.load_state_dict({"count": state.evaluator_count})
        self.q_fn = self.learner.q_fn()  # weights were restored or synced

    def _on_reset(self) -> None:
        """After workers came or went: this process's new rank and world size, and what depends on them."""
        cfg = self.config
        world = self.world = distributed.init()
        self.per_rank = cfg.per_rank(world.size)
        self.replay_ready = False  # a joining worker's replay starts empty: every rank asks again, alike
        evaluated = self.evaluator.state_dict()
        self.evaluator = self._make_evaluator()  # this rank's share of the episodes, the run's env options
        self.evaluator.load_state_dict(evaluated)
        if world.is_chief and not self.logger.enabled:  # rank 0 died: its successor writes the outputs
            self.logger = RunLogger(self.run_dir, enabled=True, total_env_steps=cfg.total_env_steps)
        elif not world.is_chief and self.logger.enabled:
            self.logger.close()
            self.logger = RunLogger(self.run_dir, enabled=False)
        print(f"hvd-dqn: elastic reset: now rank {world.rank} of {world.size}", flush=True)
