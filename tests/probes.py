"""What tests read from a Trainer or Learner that the product itself does not keep: a learner's Q-values through
its Keras model, the last learning phase, the Q-function an evaluation was given."""

import numpy as np
import tensorflow as tf

from hvd_dqn import Callback


def q_values(learner, obs: np.ndarray) -> np.ndarray:
    """The online network's Q-values, the model called directly (not ``learner.q_fn``'s acting path)."""
    return learner.online(tf.constant(obs, learner.online.input.dtype), training=False).numpy()


class LastPhase(Callback):
    """``Trainer(..., callbacks=[probe])``: ``probe.phase`` is the PhaseResult of the trainer's last learning
    phase (None before the first)."""

    phase = None

    def on_train_begin(self, trainer) -> None:
        learn = trainer.learner.learn

        def recording_learn(*args, **kwargs):
            self.phase = learn(*args, **kwargs)
            return self.phase

        trainer.learner.learn = recording_learn


class EvalQFn(Callback):
    """``Trainer(..., callbacks=[probe])``: ``probe.q_fn`` is the Q-function the trainer's last evaluation played
    with (None before the first)."""

    q_fn = None

    def on_train_begin(self, trainer) -> None:
        trainer.evaluator = _Recording(trainer.evaluator, self)


class _Recording:
    def __init__(self, evaluator, probe: EvalQFn):
        self._evaluator, self._probe = evaluator, probe

    def __call__(self, q_fn, *args):
        self._probe.q_fn = q_fn
        return self._evaluator(q_fn, *args)

    def __getattr__(self, name):
        return getattr(self._evaluator, name)
