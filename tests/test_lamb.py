"""optimizer: lamb (Keras 3's LAMB behind the learner's minimize) on one process: two steps recomputed in NumPy from
You et al.'s update, the learner's updates through it (float32 and mixed_bfloat16), its state in a checkpoint, and
the combinations the config refuses. Its allreduce under `horovodrun -np 2` is in test_horovod_options.py, an exact
resume in test_checkpoint_resume.py."""

import numpy as np
import pydantic
import pytest
import tensorflow as tf

from hvd_dqn import checkpoint, distributed
from hvd_dqn.config import Config
from hvd_dqn.lamb import Lamb
from hvd_dqn.learner import Learner
from mp_data import random_replay

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-3


def _numpy_lamb(w, grads):
    """You et al. 2020's LAMB without weight decay, as Keras 3 computes it: Adam's bias-corrected step, scaled by
    ||w|| / ||step|| per variable (1 where either norm is 0)."""
    w, m, v = w.astype(np.float64), np.zeros_like(w, np.float64), np.zeros_like(w, np.float64)
    for t, g in enumerate(grads, start=1):
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        step = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
        w_norm, s_norm = np.linalg.norm(w), np.linalg.norm(step)
        ratio = w_norm / s_norm if w_norm > 0 and s_norm > 0 else 1.0
        w = w - LR * ratio * step
    return w


def test_two_lamb_steps_are_you_et_al_s_update():
    rng = np.random.default_rng(0)
    # a kernel about 5x the norm of Adam's step (a trust ratio near 5), a bias of norm 0 (a trust ratio of 1)
    start = {"kernel": 5 * rng.normal(size=(3, 5)), "bias": np.zeros(5)}
    grads = [{k: rng.normal(size=v.shape) for k, v in start.items()} for _ in range(2)]
    variables = {k: tf.Variable(v.astype(np.float32)) for k, v in start.items()}
    opt = Lamb(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)

    @tf.function(autograph=False)
    def step(gk, gb):  # loss = sum(w * g) has the gradient g exactly
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(variables["kernel"] * gk) + tf.reduce_sum(variables["bias"] * gb)
        opt.minimize(loss, [variables["kernel"], variables["bias"]], tape=tape)

    for g in grads:
        step(tf.constant(g["kernel"], tf.float32), tf.constant(g["bias"], tf.float32))
    for k in start:
        expected = _numpy_lamb(start[k], [g[k].astype(np.float32) for g in grads])
        np.testing.assert_allclose(variables[k].numpy(), expected, rtol=2e-5, atol=1e-6)
    # the trust ratio took effect: the kernel's step is not Adam's
    adam_like = start["kernel"] - LR * grads[0]["kernel"] / (np.abs(grads[0]["kernel"]) + EPS)
    assert np.abs(_numpy_lamb(start["kernel"], [grads[0]["kernel"]]) - adam_like).max() > 2 * LR


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_learner_updates_and_checkpoints_through_lamb(precision, tmp_path):
    distributed.init()
    rng = np.random.default_rng(1)
    replay = random_replay(rng, 300)
    cfg = Config(env_id="CartPole-v1", hidden_sizes=(8,), optimizer="lamb", precision=precision)
    learner = Learner(cfg, 4, 2, 1)
    before = [v.numpy().copy() for v in learner.online.trainable_variables]
    learner.run_updates(replay.sample(rng, (5, 16)), 1e-2)
    assert learner.updates == 5 and int(learner.optimizer.iterations.numpy()) == 5
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(before, learner.online.trainable_variables))
    # the state as tf.Variables: the step count, the learning rate, two moments per weight tensor
    state = learner.optimizer_variables
    assert len(state) == 2 + 2 * len(learner.online.trainable_variables)
    assert all(isinstance(v, tf.Variable) for v in state)

    checkpoint.write_model(tmp_path, learner.checkpoint_objects())
    saved = [v.numpy().copy() for v in state]
    restored = Learner(cfg, 4, 2, 1)
    checkpoint.read_model(tmp_path, restored.checkpoint_objects(restoring=True))
    assert [np.array_equal(a, v.numpy()) for a, v in zip(saved, restored.optimizer_variables)] == [True] * len(saved)
    # and the restored learner steps exactly as the one it was saved from
    batch = replay.sample(rng, (2, 16))
    for lrn in (learner, restored):
        lrn.run_updates(batch, 1e-2)
    assert all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(learner.online.variables, restored.online.variables)
    )


@pytest.mark.parametrize(
    "other", [{"backward_passes_per_step": 2}, {"precision": "mixed_float16"}, {"allreduce_op": "adasum"}]
)
def test_lamb_with_a_tf_keras_only_option_is_refused(other):
    with pytest.raises(
        pydantic.ValidationError,
        match="optimizer lamb \\(Keras 3's\\) with backward_passes_per_step > 1, precision mixed_float16",
    ):
        Config(env_id="CartPole-v1", optimizer="lamb", **other)
