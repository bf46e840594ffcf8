"""DQN's centred RMSProp in PyTorch's form, on tf_keras: ``optimizer: rmsprop``.

Centred RMSProp keeps running means of the gradient g and of its square with one decay rho, and steps
``lr * g / (sqrt(mean(g^2) - mean(g)^2) + eps)``. PyTorch (``torch.optim.RMSprop(centered=True)``, which the MinAtar
reference's examples/dqn.py runs with eps 0.01) adds eps to the root; tf_keras's RMSprop adds it under the root
(``/ sqrt(... + eps)``): with eps 0.01 and small gradients that is a step up to 10 times smaller, so the reference's
settings need PyTorch's form. No momentum, no bias correction, as both.
"""

from __future__ import annotations

import tensorflow as tf

from hvd_dqn.keras2 import keras


class CentredRMSprop(keras.optimizers.RMSprop):
    def __init__(self, learning_rate=0.00025, rho=0.95, epsilon=0.01, **kwargs):
        kwargs.pop("momentum", None)  # from_config (Horovod's wrapper rebuilds the optimizer from its config)
        kwargs.pop("centered", None)
        super().__init__(learning_rate=learning_rate, rho=rho, momentum=0.0, epsilon=epsilon, centered=True, **kwargs)

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):  # our networks' gradients are dense; embeddings would not be
            gradient = tf.convert_to_tensor(gradient)
        index = self._index_dict[self._var_key(variable)]
        mean_square, mean = self._velocities[index], self._average_gradients[index]
        rho = tf.cast(self.rho, variable.dtype)
        mean_square.assign(rho * mean_square + (1 - rho) * tf.square(gradient))
        mean.assign(rho * mean + (1 - rho) * gradient)
        # >= 0 in exact arithmetic; rounding can take it a hair below, where the root would be NaN
        variance = tf.maximum(mean_square - tf.square(mean), 0.0)
        lr = tf.cast(self.learning_rate, variable.dtype)
        variable.assign_sub(lr * gradient / (tf.sqrt(variance) + tf.cast(self.epsilon, variable.dtype)))
