"""The learner: online and target Q-networks, Adam, and a learning phase of K gradient updates in one TF call.

One update = double-DQN Huber loss -> gradients averaged over all ranks by Horovod's ring-allreduce -> clip the
global norm -> Adam step. Running K updates inside one ``tf.function`` (a ``tf.while_loop`` over K pre-sampled
minibatches) pays TensorFlow's per-call overhead once per phase instead of once per update. On one rank the whole
phase is XLA-compiled; on several, XLA compiles the loss-and-gradient and the optimizer step, and the allreduce
runs between them (Horovod's ops have no XLA kernels).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from hvd_dqn import distributed, losses
from hvd_dqn.config import Config
from hvd_dqn.networks import build_mlp, mlp_forward, mlp_params
from hvd_dqn.replay import Batch


class Learner:
    def __init__(self, config: Config, obs_dim: int, n_actions: int, world_size: int):
        self.config = config
        self.online = build_mlp(obs_dim, n_actions, config.hidden_sizes, seed=config.seed, name="q_network")
        self.target = build_mlp(obs_dim, n_actions, config.hidden_sizes, seed=config.seed, name="target_network")
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=config.adam_epsilon)
        self.updates = 0  # gradient updates done, identical on every rank
        self._gamma = tf.constant(config.gamma, tf.float32)
        self._multi = world_size > 1
        self._phase = tf.function(self._phase_loop, jit_compile=not self._multi, reduce_retracing=True)
        if self._multi:
            self._grads = tf.function(self._loss_and_grads, jit_compile=True, reduce_retracing=True)
            self._apply = tf.function(self._clip_and_apply, jit_compile=True, reduce_retracing=True)
        self._optimizer_synced = False

    # ---- the math of one update
    def _loss_and_grads(self, obs, action, reward, next_obs, terminated):
        cfg = self.config
        next_q_target = self.target(next_obs, training=False)
        next_q_online = self.online(next_obs, training=False) if cfg.double_dqn else None
        target = tf.stop_gradient(losses.td_target(reward, terminated, next_q_target, self._gamma, next_q_online))
        with tf.GradientTape() as tape:
            q = self.online(obs, training=True)
            q_taken = losses.q_of_actions(q, action)
            loss = tf.reduce_mean(losses.huber(q_taken - target, cfg.huber_delta))
        grads = tape.gradient(loss, self.online.trainable_variables)
        return loss, tf.reduce_mean(q_taken), grads

    def _clip_and_apply(self, grads):
        if self.config.max_grad_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.config.max_grad_norm)
        self.optimizer.apply_gradients(zip(grads, self.online.trainable_variables))

    def _update(self, obs, action, reward, next_obs, terminated):
        if not self._multi:
            loss, q_mean, grads = self._loss_and_grads(obs, action, reward, next_obs, terminated)
        else:
            loss, q_mean, grads = self._grads(obs, action, reward, next_obs, terminated)
            # Horovod: the one collective of an update, the ring-allreduce averaging the gradients.
            grads = distributed.average_gradients(grads)
        if self._multi:
            self._apply(grads)
        else:
            self._clip_and_apply(grads)
        return loss, q_mean

    def _phase_loop(self, obs, action, reward, next_obs, terminated):
        n = tf.shape(action)[0]

        def body(i, loss_sum, q_sum, finite):
            loss, q_mean = self._update(obs[i], action[i], reward[i], next_obs[i], terminated[i])
            finite = tf.logical_and(finite, tf.math.is_finite(loss))
            return i + 1, loss_sum + loss, q_sum + q_mean, finite

        _, loss_sum, q_sum, finite = tf.while_loop(
            lambda i, *_: i < n, body,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0), tf.constant(True)))
        n_f = tf.cast(n, tf.float32)
        return loss_sum / n_f, q_sum / n_f, finite

    # ---- what the trainer calls
    def train_phase(self, batch: Batch, learning_rate: float) -> dict[str, float]:
        """Run one gradient update per leading index of ``batch`` (shape (K, B, ...)); every rank must call this
        with the same K. Returns the phase's mean loss and mean Q(s, a)."""
        self.optimizer.learning_rate = learning_rate  # assigns the optimizer's own variable, read inside the graph
        loss, q_mean, finite = self._phase(
            tf.constant(batch.obs), tf.constant(batch.action), tf.constant(batch.reward),
            tf.constant(batch.next_obs), tf.constant(batch.terminated))
        k = int(batch.action.shape[0])
        if not bool(finite):
            raise FloatingPointError(
                f"non-finite TD loss within updates {self.updates + 1}..{self.updates + k}; stopping")
        self.updates += k
        if not self._optimizer_synced:
            # Horovod: Adam's slots exist only after the first step; make rank 0's the truth from then on.
            distributed.broadcast_variables(self.optimizer.variables(), root_rank=0)
            self._optimizer_synced = True
        return {"td_loss": float(loss), "q_mean": float(q_mean)}

    def broadcast_initial_weights(self) -> None:
        """Rank 0's initial online weights everywhere, and the target equal to them."""
        distributed.broadcast_variables(self.online.variables, root_rank=0)
        self.sync_target()

    def sync_target(self) -> None:
        """Copy online -> target, then broadcast rank 0's target so every rank bootstraps from the same net."""
        for t, o in zip(self.target.variables, self.online.variables):
            t.assign(o)
        distributed.broadcast_variables(self.target.variables, root_rank=0)

    def acting_fn(self):
        """obs batch -> Q-values, for acting between learning phases. For the MLP a NumPy forward pass from a
        snapshot of the weights: a TF call's fixed overhead would cost more than the arithmetic."""
        params = mlp_params(self.online)
        return lambda obs: mlp_forward(params, obs)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.online(tf.constant(obs, tf.float32), training=False).numpy()
