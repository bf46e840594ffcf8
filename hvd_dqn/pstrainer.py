"""The parameter-server job's part of the Trainer: the Trainer's loop, with rank 0 serving and ranks 1..N-1 acting.

Everything the loop decides from the global counters (learning phases, evaluations, logs, checkpoints) stays as
in allreduce mode; the server takes no env steps, so a job of N ranks has N - 1 learners (``config.per_rank(N -
1)``: their replay shards, batches and env steps), and a learning phase is ``PSLearner.learn``. A mixin, so that
this module needs no import of the trainer, which makes ``Trainer(config)`` of such a config one
(``trainer.PSTrainer``).
"""

from __future__ import annotations

from typing import Any

from hvd_dqn import distributed, psmath
from hvd_dqn.actor import actor_epsilons
from hvd_dqn.errors import JobRefused, UserError
from hvd_dqn.pslearner import PSLearner


class ParameterServerMixin:
    """Overrides of the Trainer's hooks for a parameter-server job."""

    def _setup(self) -> None:
        world = self.world
        try:
            psmath.check_world(self.config.parameter_server, world.size, world.size > 1 and distributed.mpi_enabled())
        except UserError as exc:  # the same outcome on every rank: each leaves with 2, rank 0 says why
            raise JobRefused(str(exc), quiet=not world.is_chief) from None
        self.is_server = world.rank == psmath.SERVER
        super()._setup()

    def _share(self):
        return self.config.per_rank(self.world.size - 1)

    def _make_learner(self, obs_shape, n_actions, build_network=None) -> PSLearner:
        learner = PSLearner(self.config, obs_shape, n_actions, self.world, build_network)
        learner.broadcast_initial_weights()
        return learner

    def _collect(self) -> None:
        if self.is_server:
            return
        cfg, world = self.config, self.world
        eps = actor_epsilons(self.epsilon(), world.rank - 1, world.size - 1, cfg.num_envs, cfg.epsilon_spread)
        self.actor.step(self.q_fn, eps)

    def _replay_ready(self) -> bool:
        if not self.replay_ready:
            short = float(not self.is_server and self.shard.sampleable_count() < self.per_rank.batch_size)
            self.replay_ready = distributed.allreduce_sum([short])[0] == 0
        return self.replay_ready

    def _row_extras(self) -> dict[str, Any]:
        stats = self.learner.ps_stats()
        return (
            {
                "ps/staleness_max": stats["ps_staleness_max"],
                "ps/rejected": stats["ps_rejected"],
                "ps/dropped": stats["ps_dropped"],
            }
            if stats
            else {}
        )

    def _summary_extras(self) -> dict[str, Any]:
        return {"parameter_server": self.config.parameter_server, **self.learner.ps_stats()}
