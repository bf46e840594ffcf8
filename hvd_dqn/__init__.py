"""hvd-dqn: synchronous data-parallel DQN on Horovod (ring-allreduce), with environments and replay per rank.

``from hvd_dqn import Config, Trainer``: TensorFlow and Horovod are imported only when first needed, and our
models use tf_keras (Keras 2) directly, so importing this package leaves a user's Keras 3 code alone.
"""

from hvd_dqn.callbacks import Callback
from hvd_dqn.config import Config
from hvd_dqn.errors import UserError

__all__ = ["Callback", "Config", "Trainer", "UserError"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "Trainer":
        from hvd_dqn.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'hvd_dqn' has no attribute {name!r}")
