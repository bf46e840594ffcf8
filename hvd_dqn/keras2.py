"""Keras 2 (tf_keras) for our models, imported directly so that a user's Keras 3 in the same process is left alone.

Horovod 0.28 works with Keras 2 variables only (its tape calls .ref(), which Keras 3 variables lack), and since
TF 2.16 ``tf.keras`` is Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` was set before TensorFlow's first import.
Importing ``tf_keras`` by name gives Keras 2 whatever ``tf.keras`` is, with no environment variable. Where that
cannot work (tf-keras missing, or built for another TensorFlow), ``load()`` says so in one line instead of failing
deep inside a layer.
"""

from __future__ import annotations

from hvd_dqn.errors import UserError


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def load():
    """The tf_keras module, after checking that it matches the TensorFlow in this process."""
    import tensorflow as tf

    try:
        import tf_keras
    except ImportError:
        raise UserError(
            f"hvd-dqn needs tf-keras (Keras 2) next to TensorFlow {tf.__version__}: "
            f"pip install 'tf-keras~={_minor(tf.__version__)}.0'"
        ) from None
    if _minor(tf_keras.__version__) != _minor(tf.__version__):
        raise UserError(
            f"tf-keras {tf_keras.__version__} does not match TensorFlow {tf.__version__} "
            f"(they must share major.minor): pip install 'tf-keras~={_minor(tf.__version__)}.0'"
        )
    return tf_keras


keras = load()
