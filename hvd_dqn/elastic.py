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
from hvd_dqn.evaluation import Evaluator
from hvd_dqn.learner import Learner
from hvd_dqn.metrics import RunLogger
from hvd_dqn.runlock import RunDirInUse, RunLock
from hvd_dqn.trainer import Trainer, _crossed

COUNTERS = ("vstep", "env_steps", "since_sync", "updates", "evaluator_count", "last_eval", "solved_env_steps",
            "solved_wall_s")


class ElasticTrainer(Trainer):
    """``Trainer`` whose loop runs under ``hvd.elastic.run``, committing at each learning-phase boundary."""

    def __init__(self, config, run_dir=None, callbacks=(), resume: bool = False):
        if resume:
            raise UserError("--elastic runs commit in memory and write no checkpoint to resume; drop --resume")
        if run_dir is None:
            raise UserError("--elastic needs --run-dir (workers that join later must find the same directory)")
        if config.backward_passes_per_step > 1:
            raise UserError("--elastic needs backward_passes_per_step: 1 (the gradients a rank sums between two "
                            "allreduces are not part of the committed state)")
        super().__init__(config, run_dir, callbacks)

    def _make_learner(self, obs_shape, n_actions: int) -> Learner:
        # Always the allreduce path (even while alone), so a worker that joins later is averaged with; no
        # broadcast here: elastic_run syncs rank 0's state before the loop starts (a collective before it would
        # deadlock a worker that joins while the others sync).
        return Learner(self.config, obs_shape, n_actions, self.world.size, elastic=True)

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

    def _train(self) -> dict[str, Any]:
        self._setup()
        learner = self.learner
        state = distributed.elastic_state(
            learner.network_variables + list(learner.optimizer.variables()),
            **self._counters())
        state.register_reset_callbacks([self._on_reset])
        return distributed.elastic_run(self._loop)(state)

    def _loop(self, state) -> dict[str, Any]:
        cfg, s = self.config, self.state
        self._load(state)  # the committed (or just synced) counters
        while s.env_steps < cfg.total_env_steps:
            prev_steps = s.env_steps
            s.vstep += 1
            s.env_steps += self.per.global_steps_per_vector_step
            final = s.env_steps >= cfg.total_env_steps
            self._collect()
            if s.env_steps >= cfg.learning_starts and s.vstep % self.per.vector_steps_per_train == 0 \
                    and self._replay_ready():
                self._learn()
                for name, value in self._counters().items():
                    setattr(state, name, value)
                state.commit()  # Horovod: a collective; raises HostsUpdatedInterrupt when workers came or went
            row = {}
            if final or _crossed(prev_steps, s.env_steps, cfg.eval_every):
                row.update(self._evaluate())
            if final or row or _crossed(prev_steps, s.env_steps, cfg.log_every):
                self._log({**row, "world_size": self.world.size})
        return self._finish()

    def _counters(self) -> dict[str, Any]:
        s = self.state
        return {"vstep": s.vstep, "env_steps": s.env_steps, "since_sync": self.learner.since_sync,
                "updates": self.learner.updates, "evaluator_count": self.evaluator.count,
                "last_eval": dict(s.last_eval), "solved_env_steps": s.solved_env_steps,
                "solved_wall_s": s.solved_wall_s}

    def _load(self, state) -> None:
        s = self.state
        s.vstep, s.env_steps, self.learner.since_sync = state.vstep, state.env_steps, state.since_sync
        self.learner.updates, self.evaluator.count = state.updates, state.evaluator_count
        s.last_eval, s.solved_env_steps, s.solved_wall_s = dict(state.last_eval), state.solved_env_steps, \
            state.solved_wall_s
        self.q_fn = self.learner.q_fn()  # weights were restored or synced

    def _on_reset(self) -> None:
        """After workers came or went: this process's new rank and world size, and what depends on them."""
        cfg = self.config
        world = self.world = distributed.init()
        self.per = cfg.per_rank(world.size)
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
