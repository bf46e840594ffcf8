"""The learner of a parameter-server job (``parameter_server: sync | async``): rank 0 serves, the others work.

The networks, target syncs, schedules and the policy average are the Learner's; what differs is one update. A
worker computes the gradient of its own minibatch (one TF call, no optimizer) and sends it; the server steps its
optimizer (the one the config names, built as for the workers' count: ``config.per_rank(N - 1)``, so its learning
rate and batch follow the scaling rule at that many learners) on the mean (sync) or on each gradient (async).
The learning schedule counts the server's updates: every rank goes through the same runs of updates and, at the
end of each, holds the server's weights (``hvd_dqn.paramserver``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hvd_dqn import optimizers, paramserver, psmath
from hvd_dqn.learner import Learner, PhaseResult, _copy_weights, phase_chunks
from hvd_dqn.schedules import annealed_beta, scheduled_learning_rate


class PSLearner(Learner):
    def __init__(self, config, obs_shape, n_actions, world, build_network=None):
        super().__init__(config, obs_shape, n_actions, 1, build_network)  # 1: its own updates run no allreduce
        self.workers = world.size - 1
        self.is_server = world.rank == psmath.SERVER
        self.optimizer = optimizers.build(config, config.per_rank(self.workers), False)
        self.optimizer.build(self.online.trainable_variables)
        self._optimizer_synced = True  # only the server's optimizer steps; a checkpoint holds its state
        variables = self.online.trainable_variables
        self._sizes = [int(np.prod(v.shape)) for v in variables]
        n_params = sum(self._sizes)
        self._gradient_fn = tf.function(self._gradient, jit_compile=self._xla, reduce_retracing=True, autograph=False)
        self._apply_fn = tf.function(self._apply, autograph=False)
        self._assign_fn = tf.function(self._assign, autograph=False)
        if self.is_server:
            self.protocol = paramserver.Server(
                n_params, config.parameter_server, config.ps_max_staleness, self.apply_gradient, self.flat_weights
            )
        else:
            self.protocol = paramserver.Worker(n_params)

    # ---- TF functions
    def _gradient(self, obs, action, reward, next_obs, terminated, discount, weights):
        tape, loss, q_taken, target = self._td_loss(obs, action, reward, next_obs, terminated, discount, weights)
        grads = tape.gradient(loss, self.online.trainable_variables)
        flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads], axis=0)
        return loss, tf.reduce_mean(q_taken), tf.abs(q_taken - target), flat

    def _split(self, flat):
        variables = self.online.trainable_variables
        return [tf.reshape(part, v.shape) for part, v in zip(tf.split(flat, self._sizes), variables)]

    def _apply(self, flat):
        # apply_gradients clips to max_grad_norm (global_clipnorm) before stepping
        self.optimizer.apply_gradients(zip(self._split(flat), self.online.trainable_variables))

    def _assign(self, flat):
        for var, value in zip(self.online.trainable_variables, self._split(flat)):
            var.assign(value)

    # ---- what the protocol calls
    def apply_gradient(self, flat: np.ndarray) -> None:
        self._apply_fn(tf.constant(flat))

    def flat_weights(self) -> np.ndarray:
        return np.concatenate([v.numpy().ravel() for v in self.online.trainable_variables]).astype(np.float32)

    def set_weights(self, flat: np.ndarray) -> None:
        self._assign_fn(tf.constant(flat))

    def gradient(self, replay, rng, batch_size: int, beta: float) -> tuple[float, float, np.ndarray]:
        """One minibatch from this worker's replay -> (loss, mean Q, flat gradient); its priorities updated."""
        batch, discount, weights, slots = replay.sample(rng, (1, batch_size), beta)
        discount = np.full(batch.action.shape, self.config.gamma, np.float32) if discount is None else discount
        weights = np.ones(batch.action.shape, np.float32) if weights is None else weights
        loss, q_mean, td_abs, flat = self._gradient_fn(
            tf.constant(batch.obs[0]),
            tf.constant(batch.action[0]),
            tf.constant(batch.reward[0]),
            tf.constant(batch.next_obs[0]),
            tf.constant(batch.terminated[0]),
            tf.constant(discount[0], tf.float32),
            tf.constant(weights[0], tf.float32),
        )
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"non-finite TD loss on a worker's gradient after update {self.updates}; "
                "stopping (the last checkpoint is intact)"
            )
        replay.update_priorities(slots, td_abs.numpy()[None])
        return loss, float(q_mean), flat.numpy()

    # ---- what the trainer calls
    def learn(self, replay, rng: np.random.Generator, share, env_steps: int) -> PhaseResult:
        """A learning phase of ``share.updates_per_phase`` server updates, in runs up to each target sync."""
        cfg = self.config
        self.optimizer.learning_rate = scheduled_learning_rate(
            env_steps,
            config_lr=cfg.learning_rate,
            rule_lr=share.learning_rate,
            warmup_env_steps=cfg.lr_warmup_env_steps,
            learning_starts=cfg.learning_starts,
            final_fraction=cfg.lr_final_fraction,
            total_env_steps=cfg.total_env_steps,
        )
        beta = annealed_beta(env_steps, cfg.total_env_steps, cfg.priority_beta_start)
        result = None
        for k, sync, _ in phase_chunks(
            share.updates_per_phase, self.since_sync, share.target_update_every, self.updates
        ):
            if self.is_server:
                run = self.protocol.serve(k, self.updates)
                if not all(np.isfinite(v.numpy()).all() for v in self.online.trainable_variables):
                    self._raise_non_finite_weights(k)
                result = PhaseResult(run.td_loss, run.q_mean, np.zeros((0,), np.float32))
            else:
                seen = []
                self.protocol.work(
                    self.updates, self._recording_gradient(replay, rng, share.batch_size, beta, seen), self.set_weights
                )
                result = PhaseResult(
                    float(np.mean([s[0] for s in seen])),
                    float(np.mean([s[1] for s in seen])),
                    np.zeros((0,), np.float32),
                )
            self.updates += k
            self.since_sync = 0 if sync else self.since_sync + k
            if sync:  # every rank holds the server's weights at the end of a run: no broadcast needed
                _copy_weights(self.target, self.online)
        self.update_average()
        return result

    def _recording_gradient(self, replay, rng, batch_size: int, beta: float, seen: list):
        """``gradient`` for the protocol, appending each (loss, mean Q) to ``seen``: a worker's phase statistics."""

        def gradient():
            out = self.gradient(replay, rng, batch_size, beta)
            seen.append(out[:2])
            return out

        return gradient

    def state_dict(self) -> dict:
        """The counters, and on the server its staleness counts: a resumed run's summary counts the whole run."""
        state = super().state_dict()
        if self.is_server:
            state["staleness"] = self.protocol.staleness.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.is_server and "staleness" in state:
            self.protocol.staleness.load_state_dict(state["staleness"])

    def ps_stats(self) -> dict:
        """The server's staleness counts (empty on a worker)."""
        return self.protocol.staleness.summary() if self.is_server else {}
