"""Q-networks as Keras 2 (tf_keras) models, and the MLP's forward pass in NumPy for acting.

tf_keras is imported directly (not through ``tf.keras``), so our models are Keras 2, as Horovod 0.28 needs,
while a user's Keras 3 code in the same process is left alone.
"""
from __future__ import annotations

import numpy as np
import tf_keras as keras


def build_mlp(obs_dim: int, n_actions: int, hidden_sizes, seed: int, name: str = "q_network") -> keras.Model:
    """An MLP from observations to one Q-value per action. Seeded init: equal on every rank even before the
    broadcast from rank 0, which remains the guarantee."""
    inputs = keras.Input(shape=(obs_dim,), dtype="float32", name="observation")
    x = inputs
    for i, width in enumerate(hidden_sizes):
        x = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i))(x)
    q = keras.layers.Dense(n_actions, name="q_values",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed + len(hidden_sizes)))(x)
    return keras.Model(inputs, q, name=name)


def mlp_params(model: keras.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) per Dense layer, as NumPy arrays, for ``mlp_forward``."""
    return [(layer.kernel.numpy(), layer.bias.numpy()) for layer in model.layers
            if isinstance(layer, keras.layers.Dense)]


def mlp_forward(params: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray) -> np.ndarray:
    """The MLP's Q-values in NumPy: for a handful of observations this is ~10x faster than a TF call,
    whose fixed overhead (hundreds of microseconds) would otherwise dominate acting."""
    x = np.asarray(obs, dtype=np.float32)
    for kernel, bias in params[:-1]:
        x = x @ kernel
        x += bias
        np.maximum(x, 0.0, out=x)
    kernel, bias = params[-1]
    return x @ kernel + bias
