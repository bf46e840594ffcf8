"""The learner: online and target Q-networks, the optimizer, and the learning schedule.

``learn`` runs one learning phase: the per-rank updates of the phase, split where a target sync (or a federated
averaging) falls due, each run of updates on minibatches sampled from the replay at once and executed in one TF
call (a ``tf.while_loop`` over K pre-sampled minibatches: TensorFlow's per-call overhead is paid once per run,
not once per update), the sampled transitions' priorities updated after each run, and the policy's weight average
stepped at the end. Every decision that leads to a collective (a sync, an averaging) comes from the update
counters, which are equal on every rank.

One update = double-DQN Huber loss -> ``optimizer.minimize(loss, variables, tape=tape)`` (``optimizers.build``).
On several ranks Adam is Horovod's DistributedOptimizer (``distributed.wrap_optimizer``, options in the config's
Horovod keys): its compute_gradients averages the gradients over all ranks (one grouped ring-allreduce), then its
apply_gradients clips the averaged gradient's global norm (``global_clipnorm``) and steps; LAMB reduces through
Horovod's DistributedGradientTape, then clips and steps the same way. Without a collective in the update (one
rank, federated averaging) the whole run of updates is XLA-compiled. With one it runs as a plain TF
graph: Horovod's ops have no XLA kernels on the CPU, and compiling the parts on either side of the allreduce
separately costs two XLA launches per update, more than they save (docs/update-cost.md).

With ``backward_passes_per_step`` k > 1 an "update" is one backward pass: the optimizer steps (and the ranks
allreduce) once per k of them, on their local sum. The config keeps every phase and target period a multiple of
k, so no gradient is left half-aggregated at a phase boundary (a target sync, a checkpoint).

Algorithm options (docs/algorithms.md): a dueling head; per-sample bootstrap discounts (gamma^m of n-step
transitions) and importance-sampling weights in, per-sample |TD error| out (for prioritized replay); soft
(Polyak) target updates after every update; and federated averaging, where an update has NO collective (each rank
steps on its own data, so even several ranks run XLA-compiled) and the ranks average their weights every
``federated_every`` updates.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from hvd_dqn import distributed, losses, optimizers, quiet
from hvd_dqn.config import Config
from hvd_dqn.keras2 import keras
from hvd_dqn.networks import build_q_network, mlp_forward, mlp_params
from hvd_dqn.replay import Batch
from hvd_dqn.scaling import PerRank
from hvd_dqn.schedules import annealed_beta, scheduled_learning_rate


class PhaseResult(NamedTuple):
    """What a run of updates returns: its mean TD loss and mean Q(s, a), and each sample's |TD error| (K, B), the
    new priorities of the sampled transitions."""

    td_loss: float
    q_mean: float
    td_abs: np.ndarray

    def stats(self) -> dict[str, float]:
        """The loss and Q as the metrics rows (and the checkpoint's loop state) record them."""
        return {"td_loss": self.td_loss, "q_mean": self.q_mean}


class Learner:
    def __init__(
        self,
        config: Config,
        obs_shape: int | tuple[int, ...],
        n_actions: int,
        world_size: int,
        build_network=None,
        elastic: bool = False,
    ):
        """``obs_shape``: an int (a flat observation of that size: the MLP) or the env's observation shape
        (uint8 images, e.g. (S, 84, 84) frame stacks: the Nature CNN). ``build_network(name)``: a user's
        Q-network instead (a new tf_keras Model per call), whose Q-values are computed through TF. ``elastic``: a
        learner of an elastic job, whose ranks come and go: its updates always run the allreduce (even while it
        is alone, so a worker that joins later is averaged with), and it makes no collective here (Horovod's state
        sync makes the ranks agree before the first step): target and average start at this rank's online weights
        and the optimizer's slots exist at once, so they are part of the committed state."""
        self.config = config
        obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
        self.is_cnn = len(obs_shape) == 3
        builtin_mlp = not self.is_cnn and build_network is None
        # the NumPy forward pass knows only the built-in MLP in float32; any other network's Q-values (and a mixed-
        # precision MLP's, so that acting computes what training, evaluation and the export do) come from TF
        self.tf_q_values = not builtin_mlp or config.precision != "float32"
        build = build_network or (lambda name: build_q_network(obs_shape, n_actions, config, name=name))
        self.online = build("q_network")
        self.target = build("target_network")
        # policy_ema: the network that evaluations and the saved model use (the online one when off)
        self.averaged = None if config.policy_ema is None else build("averaged_q_network")
        self.updates = 0  # gradient updates (backward passes) done, identical on every rank
        self.since_sync = 0  # gradient updates since the last target sync, identical on every rank
        self._federated = config.federated_every is not None
        # an update runs Horovod's ops: an allreduce, or the local aggregation of backward_passes_per_step
        self._allreduce = (elastic or world_size > 1 or config.backward_passes_per_step > 1) and not self._federated
        # the optimizer after the scaling rule (Adam's or LAMB's betas and epsilon), reducing over the ranks if
        # the updates allreduce
        self.optimizer = optimizers.build(config, config.per_rank(world_size), self._allreduce)
        # XLA: for the built-in MLP; the Nature CNN runs slower XLA-compiled on CPU than on TF's own (oneDNN)
        # kernels (docs/atari.md), and a user's network may hold layers XLA cannot compile, so they run without.
        self._xla = builtin_mlp and not self._allreduce
        self._updates_fn = tf.function(self._update_loop, jit_compile=self._xla, reduce_retracing=True, autograph=False)
        self._optimizer_synced = False
        self._q_fns = {}  # the CNN's Q-value tf.functions, one per network, built on first use
        # The optimizer's slots exist before the first update is traced: a tf.function whose first trace creates
        # variables is traced a second time before it runs, and the update is the costliest trace of a run (the
        # whole loop with Horovod's DistributedOptimizer at N > 1, docs/update-cost.md).
        self.optimizer.build(self.online.trainable_variables)
        if elastic:
            self.align_to_online()
            self._optimizer_synced = True

    # ---- the math of one update
    def _td_loss(self, obs, action, reward, next_obs, terminated, discount, weights):
        """(tape, loss, Q of the actions taken, TD target) of one minibatch: the tape holds the online network's
        forward pass, for the gradient of the loss."""
        cfg = self.config
        next_q_target = self.target(next_obs, training=False)
        next_q_online = self.online(next_obs, training=False) if cfg.double_dqn else None
        target = tf.stop_gradient(losses.td_target(reward, terminated, next_q_target, discount, next_q_online))
        with tf.GradientTape() as tape:
            q = self.online(obs, training=True)
            q_taken = losses.q_of_actions(q, action)
            loss = losses.weighted_huber_loss(q_taken - target, weights, cfg.huber_delta)
        return tape, loss, q_taken, target

    def _update(self, obs, action, reward, next_obs, terminated, discount, weights):
        cfg = self.config
        tape, loss, q_taken, target = self._td_loss(obs, action, reward, next_obs, terminated, discount, weights)
        # Horovod: on several ranks the allreduce runs inside minimize (never tape.gradient + apply_gradients)
        self.optimizer.minimize(loss, self.online.trainable_variables, tape=tape)
        if cfg.target_tau is not None:  # same online weights on every rank -> the same target on every rank
            for t, o in zip(self.target.trainable_variables, self.online.trainable_variables):
                t.assign(losses.soft_update(t, o, cfg.target_tau))
        return loss, tf.reduce_mean(q_taken), tf.abs(q_taken - target)

    def _update_loop(self, obs, action, reward, next_obs, terminated, discount, weights):
        n = tf.shape(action)[0]
        td_all = tf.TensorArray(tf.float32, size=n)

        def body(i, loss_sum, q_sum, finite, td_all):
            loss, q_mean, td_abs = self._update(
                obs[i], action[i], reward[i], next_obs[i], terminated[i], discount[i], weights[i]
            )
            finite = tf.logical_and(finite, tf.math.is_finite(loss))
            return i + 1, loss_sum + loss, q_sum + q_mean, finite, td_all.write(i, td_abs)

        _, loss_sum, q_sum, finite, td_all = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), tf.constant(0.0), tf.constant(0.0), tf.constant(True), td_all)
        )
        n_f = tf.cast(n, tf.float32)
        # checked in the graph: copying the weights out after every call costs the CNN more than the check
        weights_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.online.trainable_variables])
        return loss_sum / n_f, q_sum / n_f, finite, td_all.stack(), weights_finite

    # ---- what the trainer calls
    def learn(self, replay, rng: np.random.Generator, share: PerRank, env_steps: int) -> PhaseResult:
        """One learning phase at global env step ``env_steps``: ``share.updates_per_phase`` gradient updates on
        minibatches of ``share.batch_size`` that ``replay`` samples (``replay.sample(rng, (K, B), beta)`` ->
        batch, discount, weights, slots; ``replay.update_priorities(slots, td_abs)`` after each run of updates),
        a target sync or a federated averaging wherever one falls due, and one step of the policy average at the
        end. Every rank must call this at the same point. Returns the last run of updates' result."""
        cfg = self.config
        lr = scheduled_learning_rate(
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
        for k, sync, average in phase_chunks(
            share.updates_per_phase, self.since_sync, share.target_update_every, self.updates, cfg.federated_every
        ):
            batch, discount, weights, slots = replay.sample(rng, (k, share.batch_size), beta)
            result = self.run_updates(batch, lr, discount, weights)
            replay.update_priorities(slots, result.td_abs)
            if average:
                self.average_weights()
            self.since_sync = 0 if sync else self.since_sync + k
            if sync and cfg.target_tau is None:  # soft updates happen inside every update instead
                self.sync_target()
        self.update_average()
        return result

    def run_updates(
        self, batch: Batch, learning_rate: float, discount: np.ndarray | None = None, weights: np.ndarray | None = None
    ) -> PhaseResult:
        """One gradient update per leading index of ``batch`` (shape (K, B, ...)), in one TF call; every rank must
        call this with the same K. ``discount`` (K, B): each sample's bootstrap weight (default gamma);
        ``weights`` (K, B): importance-sampling weights (default 1). No target sync, averaging or schedule: that
        is ``learn``'s."""
        self.optimizer.learning_rate = learning_rate  # assigns the optimizer's own variable, read inside the graph
        shape = batch.action.shape
        discount = np.full(shape, self.config.gamma, np.float32) if discount is None else discount
        weights = np.ones(shape, np.float32) if weights is None else weights
        with quiet.first_xla_compile() if self._xla else contextlib.nullcontext():
            loss, q_mean, finite, td_abs, weights_finite = self._updates_fn(
                tf.constant(batch.obs),
                tf.constant(batch.action),
                tf.constant(batch.reward),
                tf.constant(batch.next_obs),
                tf.constant(batch.terminated),
                tf.constant(discount, tf.float32),
                tf.constant(weights, tf.float32),
            )
        td_abs = td_abs.numpy()
        k = int(batch.action.shape[0])
        if not bool(finite):
            bad = np.flatnonzero(~np.isfinite(td_abs).all(axis=1))
            at = (
                f"at update {self.updates + 1 + int(bad[0])}"
                if len(bad)
                else f"within updates {self.updates + 1}..{self.updates + k}"
            )
            raise FloatingPointError(f"non-finite TD loss {at}; stopping (the last checkpoint is intact)")
        if not bool(weights_finite):
            self._raise_non_finite_weights(k)
        self.updates += k
        if not self._optimizer_synced:
            # Horovod: Adam's slots exist only after the first step; make rank 0's the truth from then on.
            distributed.broadcast_variables(self.optimizer_variables, root_rank=0)
            self._optimizer_synced = True
        return PhaseResult(float(loss), float(q_mean), td_abs)

    # ---- checkpointing
    def state_dict(self) -> dict[str, int]:
        """The counters; the networks and the optimizer are ``checkpoint_objects``' (a TF checkpoint)."""
        return {"updates": self.updates, "since_sync": self.since_sync}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.updates, self.since_sync = state["updates"], state["since_sync"]

    def checkpoint_objects(self, restoring: bool = False) -> dict:
        """The networks and the optimizer by name, as a checkpoint writes and reads them. ``restoring``: Adam's
        slots exist only after a first step; they are created now, so the checkpoint has variables to read into."""
        if restoring:
            self.optimizer.build(self.online.trainable_variables)
        objects = {"online": self.online, "target": self.target, "optimizer": self.optimizer}
        if self.averaged is not None:
            objects["averaged"] = self.averaged
        return objects

    def _raise_non_finite_weights(self, k: int) -> None:
        """The run of ``k`` updates just made left a NaN or Inf in the online net: stop, naming the variable. The
        weights are the same on every rank, so every rank stops here together (a NaN loss on one rank alone
        would not)."""
        bad = [v.name for v in self.online.trainable_variables if not np.isfinite(v.numpy()).all()]
        raise FloatingPointError(
            f"non-finite weights ({', '.join(bad)}) after updates {self.updates + 1}..{self.updates + k}; "
            "stopping (the last checkpoint is intact)"
        )

    def broadcast_restored(self) -> None:
        """After a restore from a checkpoint: rank 0's networks and Adam state on every rank (all ranks read the
        same file; the broadcast is the guarantee), and no further slot broadcast needed."""
        distributed.broadcast_variables(self.network_variables + self.optimizer_variables, 0)
        self._optimizer_synced = True

    def broadcast_initial_weights(self) -> None:
        """Rank 0's initial online weights everywhere, and the target equal to them."""
        distributed.broadcast_variables(self.online.variables, root_rank=0)
        self.sync_target()
        self.reset_average()

    def average_weights(self) -> None:
        """Federated averaging: every rank's online weights (and its target, which soft updates move locally)
        replaced by their mean over ranks. Every rank must call this at the same update count."""
        variables = list(self.online.trainable_variables)
        if self.config.target_tau is not None:
            variables += list(self.target.trainable_variables)
        distributed.average_variables(variables)

    @property
    def policy(self) -> keras.Model:
        """The network whose greedy actions are the trained policy: the weight average if policy_ema is set."""
        return self.online if self.averaged is None else self.averaged

    @property
    def optimizer_variables(self) -> list:
        """The optimizer's state (``optimizers.state_variables``)."""
        return optimizers.state_variables(self.optimizer)

    @property
    def network_variables(self) -> list:
        """Every network's variables (online, target, the average if any): what a checkpoint or a commit holds."""
        nets = [self.online, self.target] + ([self.averaged] if self.averaged is not None else [])
        return [v for net in nets for v in net.variables]

    def reset_average(self) -> None:
        """The average starts at the online weights (at the start of a run)."""
        if self.averaged is not None:
            _copy_weights(self.averaged, self.online)

    def align_to_online(self) -> None:
        """Target and average set to this rank's online weights, with no collective (the elastic start, where
        Horovod's state sync makes the ranks agree instead)."""
        _copy_weights(self.target, self.online)
        self.reset_average()

    def update_average(self) -> None:
        """One step of the policy's weight average, after a learning phase. A pure function of the online weights,
        which are the same on every rank, so the average is too (no collective)."""
        if self.averaged is not None:
            d = self.config.policy_ema
            for a, o in zip(self.averaged.variables, self.online.variables):
                a.assign(losses.soft_update(a, o, 1.0 - d))

    def sync_target(self) -> None:
        """Copy online -> target, then broadcast rank 0's target so every rank bootstraps from the same net."""
        _copy_weights(self.target, self.online)
        distributed.broadcast_variables(self.target.variables, root_rank=0)

    def q_fn(self, model: keras.Model | None = None):
        """obs batch -> Q-values of ``model`` (default: the online network, for acting between learning phases).
        For the MLP a NumPy forward pass from a snapshot of the weights: a TF call's fixed overhead would cost more
        than the arithmetic. For the CNN one ``tf.function`` call per batch of all envs' observations (uint8 in),
        reading the live weights."""
        model = self.online if model is None else model
        if self.tf_q_values:
            key = id(model)
            if key not in self._q_fns:
                self._q_fns[key] = tf.function(lambda obs: model(obs, training=False), reduce_retracing=True)
            q, dtype = self._q_fns[key], model.input.dtype
            return lambda obs: q(tf.constant(obs, dtype)).numpy()
        params = mlp_params(model)
        return lambda obs: mlp_forward(params, obs)


def phase_chunks(
    n_updates: int, since_sync: int, target_every: int, updates_done: int, federated_every: int | None = None
):
    """Split a phase of ``n_updates`` into runs of consecutive updates, each ending where a target sync or a
    federated averaging falls due: yields (updates, sync after them, average after them). A pure function of the
    counters, which are equal on every rank, so every rank splits alike."""
    while n_updates:
        # max(1, ...): an elastic job that gained ranks under scaling weak may have a shorter target period than
        # the updates done since the last sync: one more update, then the sync
        k = min(n_updates, max(1, target_every - since_sync))
        if federated_every is not None:
            k = min(k, federated_every - updates_done % federated_every)
        n_updates, since_sync, updates_done = n_updates - k, since_sync + k, updates_done + k
        sync = since_sync >= target_every
        since_sync = 0 if sync else since_sync
        yield k, sync, federated_every is not None and updates_done % federated_every == 0


def _copy_weights(dst: keras.Model, src: keras.Model) -> None:
    for d, v in zip(dst.variables, src.variables):
        d.assign(v)
