"""Run under horovodrun -np 2 with a JSON list of steps in argv[1]: the steps run one after another in this one job
(HOROVOD_TIMELINE set by the test), each opening with a broadcast of a variable named ``step_start`` that marks in
the timeline where its collectives begin (eager collectives are all named alike there; a variable's broadcast is
named after the variable). Rank 0 writes to the file argv[2] a JSON list with each step's result.

A step that is a mapping of the config's Horovod keys has as result a mapping with
- "grads" (rank, backward pass, 3, 5): the gradient each rank computed in each backward pass, and "reduced"
  (backward pass, 3, 5): what ``distributed.wrap_optimizer``'s optimizer had stepped with after each pass, read
  off variables that start at 0 under SGD with a learning rate of 1 (the weights are then exactly minus the
  gradient applied; with optimizer lamb, LAMB's first step from 0), for the test to recompute in NumPy;
- "learner": each rank's checksums of its online weights and optimizer state after two phases of 8 updates each on
  different data per rank, the update count, how often the update was traced, and the type of the optimizer's
  gradient-reducing function;
- "nan": what stopped each rank in a third phase where rank 0 alone feeds a NaN reward into update 18.
Every step builds its own optimizer and learner from its own config, so no step sees another's state.
The step "replicas" is tests/mp_replicas.py's."""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.keras2 import keras
from hvd_dqn.learner import Learner
from mp_data import random_replay
from mp_replicas import replicas


def run_step(options: dict, world) -> dict:
    cfg = Config(env_id="CartPole-v1", hidden_sizes=(16, 16), batch_size=16, learning_rate=1e-2, **options)
    rng = np.random.default_rng(100 + world.rank)  # rank-dependent data

    # ---- the reduction itself: loss = sum(w * g) has the gradient g exactly
    passes = cfg.backward_passes_per_step
    grads = rng.normal(size=(passes, 3, 5)).astype(np.float32)
    w = tf.Variable(tf.zeros((3, 5)))
    if cfg.optimizer == "lamb":
        # LAMB's reduction (Horovod's DistributedGradientTape), by Keras 3's LAMB itself: from w = 0 its first step
        # is -lr * g / (|g| + epsilon) of the reduced g (the trust ratio is 1 at a zero norm); epsilon 1 keeps g's
        # size
        from hvd_dqn.lamb import Lamb

        reducing = Lamb(allreduce=True, compression=cfg.gradient_compression, learning_rate=1.0, epsilon=1.0)
    else:
        reducing = distributed.wrap_optimizer(
            keras.optimizers.SGD(learning_rate=1.0),
            op=cfg.allreduce_op,
            compression=cfg.gradient_compression,
            backward_passes_per_step=passes,
            average_aggregated_gradients=cfg.average_aggregated_gradients,
        )

    @tf.function(autograph=False)
    def step(g):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * g)
        reducing.minimize(loss, [w], tape=tape)

    reduced = []
    for g in grads:
        step(tf.constant(g))
        reduced.append((-w.numpy()).tolist())
    out = {"grads": distributed.allgather(grads[None]).tolist(), "reduced": reduced}

    # ---- the learner: replicas must stay identical
    replay = random_replay(rng, 500)
    learner = Learner(cfg, 4, 2, world.size)
    learner.broadcast_initial_weights()
    start = distributed.gather_checksums(learner.online.variables)
    for _ in range(2):
        learner.run_updates(replay.sample(rng, (8, cfg.batch_size // world.size)), 1e-2)
    out["learner"] = {
        "start": start,
        "end": distributed.gather_checksums(learner.online.variables),
        "adam": distributed.gather_checksums(learner.optimizer_variables),
        "updates": learner.updates,
        "traces": learner._updates_fn.experimental_get_tracing_count(),
        # Horovod's own tf.function (with autograph) around the allreduce, or the plain function
        "reduce_fn": type(getattr(learner.optimizer, "_allreduce_grads", None)).__name__,
    }

    # ---- a NaN reward on rank 0 only, in update 18
    batch = replay.sample(rng, (4, cfg.batch_size // world.size))
    if world.rank == 0:
        batch.reward[1, 0] = np.nan
    try:
        learner.run_updates(batch, 1e-2)
        stopped = "no error"
    except FloatingPointError as exc:
        stopped = str(exc)
    out["nan"] = [stopped, distributed.broadcast_object(stopped, root_rank=1)]
    return out


world = distributed.init()
results = []
for step in json.loads(sys.argv[1]):
    distributed.broadcast_variables([tf.Variable(0, name="step_start")])
    results.append(replicas(world) if step == "replicas" else run_step(step, world))
if world.rank == 0:  # to a file: mpirun splits long output lines, tagging each piece
    Path(sys.argv[2]).write_text(json.dumps(results))
