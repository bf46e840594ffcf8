"""The DQN math as pure tensor functions: no state, no collectives, tested against hand-computed numbers."""

from __future__ import annotations

import tensorflow as tf


def td_target(reward, terminated, next_q_target, gamma, next_q_online=None):
    """One-step TD target ``r + gamma * (1 - terminated) * Q_target(s', a*)``.

    ``a*`` is ``argmax Q_target(s', .)`` for plain DQN, or ``argmax Q_online(s', .)`` when ``next_q_online`` is
    given (double DQN, van Hasselt et al. 2016). A truncated episode is NOT terminated: its target bootstraps.
    ``gamma`` may be one number or one per sample: ``gamma^m`` for an n-step transition of m rewards.
    """
    next_q_target = tf.convert_to_tensor(next_q_target)
    if next_q_online is None:
        next_value = tf.reduce_max(next_q_target, axis=-1)
    else:
        best = tf.argmax(next_q_online, axis=-1, output_type=tf.int32)
        next_value = tf.gather(next_q_target, best, axis=-1, batch_dims=best.shape.rank)
    not_done = 1.0 - tf.cast(terminated, next_value.dtype)
    return tf.cast(reward, next_value.dtype) + tf.cast(gamma, next_value.dtype) * not_done * next_value


def huber(error, delta=1.0):
    """Elementwise Huber loss: 0.5 e^2 for |e| <= delta, delta (|e| - 0.5 delta) beyond."""
    abs_error = tf.abs(error)
    quadratic = tf.minimum(abs_error, delta)
    return 0.5 * tf.square(quadratic) + delta * (abs_error - quadratic)


def q_of_actions(q_values, actions):
    """Q(s, a) for the actions taken: ``q_values`` (batch, actions), ``actions`` (batch,)."""
    return tf.gather(q_values, tf.cast(actions, tf.int32), axis=-1, batch_dims=1)


def weighted_huber_loss(error, weights, delta=1.0):
    """Mean over the batch of ``weights * huber(error)``: the importance-sampling weights of prioritized replay
    undo the bias of sampling transitions non-uniformly (weights of 1 give the plain mean)."""
    return tf.reduce_mean(tf.cast(weights, error.dtype) * huber(error, delta))


def soft_update(target, online, tau):
    """Polyak averaging of one variable's value: ``tau * online + (1 - tau) * target``."""
    return tau * online + (1.0 - tau) * target
