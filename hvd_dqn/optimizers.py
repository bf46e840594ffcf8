"""The optimizer a config names, for one rank's share of the scaling rule, made to reduce its gradients over the
ranks when the job has an allreduce.

- ``adam`` and ``sgd`` are tf_keras's. On several ranks Horovod's keras DistributedOptimizer wraps them
  (``distributed.wrap_optimizer``), and with mixed_float16 a loss-scale optimizer wraps that.
- ``lamb`` is Keras 3's ``keras.optimizers.Lamb`` (You et al. 2020: Adam's step rescaled per layer to the layer's
  weight norm, made for large batches). tf_keras has no LAMB. Keras 3's optimizer steps our tf_keras variables
  (plain tf.Variables) too, but it has no ``minimize(loss, var_list, tape=tape)`` and Horovod's keras wrapper cannot
  hold it, so ``Lamb`` (hvd_dqn/lamb.py) adds that one method: on several ranks Horovod's DistributedGradientTape
  reduces the gradients first, and Lamb's ``global_clipnorm`` then clips the reduced gradient as tf_keras's does.
  Keras 3 is imported only when a config asks for lamb.
- ``rmsprop`` is DQN's centred RMSProp in PyTorch's form (hvd_dqn/rmsprop.py), a tf_keras optimizer wrapped as
  adam and sgd are.
Adam and LAMB take the adam_* keys and RMSProp the rmsprop_* keys, as the scaling rule shares them out
(``scaling.per_rank``).
"""

from __future__ import annotations

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.keras2 import keras
from hvd_dqn.scaling import PerRank


def build(config: Config, share: PerRank, allreduce: bool):
    """The learner's optimizer, whose ``minimize(loss, var_list, tape=tape)`` is one update (with the allreduce if
    ``allreduce``). Its learning rate is set before each run of updates."""
    clip = {"global_clipnorm": config.max_grad_norm}  # applied inside apply_gradients, after any allreduce
    adam = {
        "learning_rate": config.learning_rate,
        "beta_1": share.adam_beta1,
        "beta_2": share.adam_beta2,
        "epsilon": share.adam_epsilon,
        **clip,
    }
    if config.optimizer == "lamb":
        from hvd_dqn.lamb import Lamb  # imports Keras 3

        return Lamb(allreduce=allreduce, compression=config.gradient_compression, **adam)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=config.learning_rate, **clip)
    elif config.optimizer == "rmsprop":
        from hvd_dqn.rmsprop import CentredRMSprop

        optimizer = CentredRMSprop(
            learning_rate=config.learning_rate, rho=share.rmsprop_decay, epsilon=share.rmsprop_epsilon, **clip
        )
    else:
        optimizer = keras.optimizers.Adam(**adam)
    if allreduce:
        optimizer = distributed.wrap_optimizer(
            optimizer,
            op=config.allreduce_op,
            compression=config.gradient_compression,
            backward_passes_per_step=config.backward_passes_per_step,
            average_aggregated_gradients=config.average_aggregated_gradients,
        )
    if config.precision == "mixed_float16":
        # float16 gradients underflow without loss scaling. Horovod's optimizer goes INSIDE the loss scaling:
        # the scaled gradients are allreduced, and the scale's finite-or-skip decision is then taken on the
        # averaged gradients, the same on every rank (Horovod 0.28's DistributedOptimizer cannot wrap a
        # LossScaleOptimizer: it rebuilds the class from_config with keywords only). Its scale and counter are
        # checkpointed with the optimizer.
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def state_variables(optimizer) -> list:
    """The optimizer's state as tf.Variables, for broadcasts, checksums and elastic commits: Adam's or LAMB's
    moments (RMSProp's means) and step count, and with mixed_float16 the loss scale and its counter of good steps,
    which the loss-scale optimizer's own variables() leaves out (it lists the inner optimizer's)."""
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return list(optimizer.variables()) + [optimizer._loss_scale.current_loss_scale, optimizer.dynamic_counter]
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return list(optimizer.variables())
    return [v.value for v in optimizer.variables]  # Keras 3: each variable holds a tf.Variable
