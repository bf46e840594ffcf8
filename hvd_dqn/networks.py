"""Q-networks as Keras 2 (tf_keras) models, and the MLP's forward pass in NumPy for acting.

tf_keras is imported directly (not through ``tf.keras``), so our models are Keras 2, as Horovod 0.28 needs,
while a user's Keras 3 code in the same process is left alone.
"""

from __future__ import annotations

import importlib
import random

import numpy as np

from hvd_dqn.envids import is_minatar_id
from hvd_dqn.keras2 import keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras' dtype policy names


def dtype_policy(precision: str = "float32"):
    """The Keras dtype policy of a network's torso (``precision`` is a policy name: float32, mixed_bfloat16,
    mixed_float16). It is given to each layer, never set globally, so other models built in the same process (the
    user's, the next run's) keep theirs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return keras.mixed_precision.Policy(precision)


def q_head(features, n_actions: int, dueling: bool, seed: int, init=None):
    """Q-values from a feature tensor (any torso: MLP or CNN). Plain: one Dense layer. Dueling (Wang et al. 2016):
    a value stream V(s) and an advantage stream A(s, a), combined as Q = V + (A - mean_a A). The centring is a
    fixed, non-trainable linear map (I - 1/n), so the model holds only built-in layers and loads anywhere with
    plain ``tf_keras.models.load_model``. The head computes in float32 whatever the torso's precision (the Keras
    mixed-precision guide's rule for the last layer): TD errors are differences of nearby Q-values, which bf16's
    8 significant bits would round away, and the model's output stays float32 for serving. ``init(seed)``: the
    layers' initializer keywords (default: Glorot-uniform kernels, zero biases)."""
    init = init or (lambda s: {"kernel_initializer": keras.initializers.GlorotUniform(seed=s)})
    f32 = dict(dtype="float32")
    if not dueling:
        return keras.layers.Dense(n_actions, name="q_values", **init(seed), **f32)(features)
    value = keras.layers.Dense(1, name="value", **init(seed), **f32)(features)
    advantage = keras.layers.Dense(n_actions, name="advantage", **init(seed + 1), **f32)(features)
    centring = np.eye(n_actions, dtype=np.float32) - np.float32(1.0 / n_actions)
    centred = keras.layers.Dense(
        n_actions,
        use_bias=False,
        trainable=False,
        name="advantage_centred",
        kernel_initializer=keras.initializers.Constant(centring),
        **f32,
    )(advantage)
    return keras.layers.Add(name="q_values", **f32)([value, centred])  # V (batch, 1) broadcasts over the actions


def build_mlp(
    obs_dim: int,
    n_actions: int,
    hidden_sizes,
    seed: int,
    name: str = "q_network",
    dueling: bool = False,
    precision: str = "float32",
) -> keras.Model:
    """An MLP from observations to one Q-value per action. Seeded init: equal on every rank even before the
    broadcast from rank 0, which remains the guarantee. ``precision``: the hidden layers' dtype policy."""
    policy = dtype_policy(precision)
    inputs = keras.Input(shape=(obs_dim,), dtype="float32", name="observation")
    x = inputs
    for i, width in enumerate(hidden_sizes):
        x = keras.layers.Dense(
            width,
            activation="relu",
            name=f"hidden_{i}",
            dtype=policy,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
        )(x)
    q = q_head(x, n_actions, dueling, seed + len(hidden_sizes))
    return keras.Model(inputs, q, name=name)


def build_nature_cnn(
    obs_shape: tuple[int, int, int],
    n_actions: int,
    seed: int,
    name: str = "q_network",
    dueling: bool = False,
    channels_first: bool = True,
    precision: str = "float32",
) -> keras.Model:
    """The Nature DQN torso (Mnih et al. 2015): conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1, dense 512, all ReLU,
    then the Q head. Input: uint8 images, channels first (Atari's frame stacks (S, 84, 84)) or last; the model
    moves channels last (TF's CPU convolutions support only NHWC) and scales to [0, 1] itself, so replay
    batches travel as uint8 (4x fewer bytes) all the way into the graph. Frames smaller than the 36x36 the
    three convolutions need without padding are zero-padded at each convolution ("same"), so any frame size
    works; 36x36 and up is the published network unchanged. ``precision``: the torso's dtype policy (the
    uint8 frames are cast straight to its compute dtype: 0-255 are exact in bf16 and fp16)."""
    init = keras.initializers.GlorotUniform
    policy = dtype_policy(precision)
    inputs = keras.Input(shape=tuple(obs_shape), dtype="uint8", name="observation")
    height, width = obs_shape[1:] if channels_first else obs_shape[:2]
    padding = "valid" if min(height, width) >= NATURE_CNN_MIN_FRAME else "same"
    x = keras.layers.Permute((2, 3, 1), name="channels_last", dtype=policy)(inputs) if channels_first else inputs
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale", dtype=policy)(x)  # casts to the compute dtype, scales
    for i, (filters, size, stride) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
        x = keras.layers.Conv2D(
            filters,
            size,
            strides=stride,
            activation="relu",
            name=f"conv_{i}",
            padding=padding,
            kernel_initializer=init(seed=seed + i),
            dtype=policy,
        )(x)
    x = keras.layers.Flatten(name="flatten", dtype=policy)(x)
    x = keras.layers.Dense(
        512, activation="relu", name="hidden_0", kernel_initializer=init(seed=seed + 3), dtype=policy
    )(x)
    return keras.Model(inputs, q_head(x, n_actions, dueling, seed + 4), name=name)


NATURE_CNN_MIN_FRAME = 36  # (36 - 8) / 4 + 1 = 8, (8 - 4) / 2 + 1 = 3, (3 - 3) / 1 + 1 = 1


def torch_default_init(fan_in: int):
    """``seed -> initializer keywords`` of PyTorch's default for Conv2d and Linear: kernel and bias uniform in
    +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)), which the MinAtar reference's network starts from."""
    bound = fan_in**-0.5
    return lambda seed: {
        "kernel_initializer": keras.initializers.RandomUniform(-bound, bound, seed=seed),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound, seed=seed + 10_000),
    }


def build_minatar_cnn(
    obs_shape: tuple[int, int, int],
    n_actions: int,
    seed: int,
    name: str = "q_network",
    dueling: bool = False,
    precision: str = "float32",
) -> keras.Model:
    """The MinAtar network (Young & Tian 2019; the reference's examples/dqn.py): conv 16 3x3/1 (no padding),
    dense 128, both ReLU, then the Q head, with PyTorch's default initialisation as there. Input: MinAtar's
    10x10xC frames of 0/1 as uint8, channels last, cast to the compute dtype unscaled (the reference feeds the
    booleans as floats)."""
    policy = dtype_policy(precision)
    channels = obs_shape[-1]
    inputs = keras.Input(shape=tuple(obs_shape), dtype="uint8", name="observation")
    x = keras.layers.Rescaling(1.0, name="as_float", dtype=policy)(inputs)  # a cast to the compute dtype, x 1
    x = keras.layers.Conv2D(
        16, 3, strides=1, activation="relu", name="conv_0", dtype=policy, **torch_default_init(9 * channels)(seed)
    )(x)
    x = keras.layers.Flatten(name="flatten", dtype=policy)(x)
    flat = (obs_shape[0] - 2) * (obs_shape[1] - 2) * 16
    x = keras.layers.Dense(128, activation="relu", name="hidden_0", dtype=policy, **torch_default_init(flat)(seed + 1))(
        x
    )
    return keras.Model(inputs, q_head(x, n_actions, dueling, seed + 2, init=torch_default_init(128)), name=name)


def channels_first(obs_shape: tuple[int, ...]) -> bool:
    """Whether an image observation (C, H, W) has its channels first: the smallest axis is taken to be the
    channels (Stable-Baselines3's rule), first if it is axis 0."""
    return int(np.argmin(obs_shape)) == 0


def build_q_network(obs_shape: tuple[int, ...], n_actions: int, config, name: str = "q_network") -> keras.Model:
    """The MinAtar network for MinAtar's envs, the Nature CNN for other image observations (uint8, 3 dims: Atari's
    frame stacks, a user's frames), the MLP of ``hidden_sizes`` for flat ones."""
    if is_minatar_id(config.env_id):
        return build_minatar_cnn(obs_shape, n_actions, config.seed, name, config.dueling, config.precision)
    if len(obs_shape) == 3:
        return build_nature_cnn(
            obs_shape,
            n_actions,
            config.seed,
            name,
            config.dueling,
            channels_first=channels_first(obs_shape),
            precision=config.precision,
        )
    return build_mlp(
        obs_shape[0],
        n_actions,
        config.hidden_sizes,
        seed=config.seed,
        name=name,
        dueling=config.dueling,
        precision=config.precision,
    )


def load_builder(ref: str):
    """The function a ``q_network: module:function`` names, imported; ValueError with one line if it is not."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{ref!r} is not module:function (e.g. my_pkg.nets:build)")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"cannot import module {module!r} ({exc}); is it installed or on PYTHONPATH on every host?"
        ) from None
    except Exception as exc:
        raise ValueError(f"importing module {module!r} failed: {type(exc).__name__}: {exc}") from None
    builder = mod
    for part in attr.split("."):
        builder = getattr(builder, part, None)
    if not callable(builder):
        raise ValueError(f"module {module!r} has no function {attr!r}")
    return builder


def build_user_network(builder, observation_space, n_actions: int, config, name: str) -> keras.Model:
    """A user's Q-network from ``builder(observation_space, n_actions, config)``, checked: a tf_keras Model
    whose input takes one observation and whose output is one Q-value per action. UserError otherwise."""
    from hvd_dqn.errors import UserError

    what = getattr(builder, "__qualname__", repr(builder))
    # a user's layers are rarely seeded: Keras' seeds make their initial weights a function of the config's seed,
    # so a run is repeatable (rank 0's weights are broadcast all the same); Python's and NumPy's global random
    # states, which set_random_seed also resets, are the user's program's and are put back
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(int(config.seed))
    try:
        model = builder(observation_space, n_actions, config)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    if not isinstance(model, keras.Model):
        hint = (
            " (a Keras 3 model? build it with tf_keras, as Horovod needs)" if "keras" in type(model).__module__ else ""
        )
        raise UserError(f"q_network {what} returned {type(model).__name__}, not a tf_keras Model{hint}")
    want_in = (None, *observation_space.shape)
    got_in = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if got_in != want_in:
        raise UserError(f"q_network {what}: its input shape is {got_in}, the env's observations need {want_in}")
    if tuple(model.output_shape) != (None, n_actions):
        raise UserError(
            f"q_network {what}: its output shape is {tuple(model.output_shape)}, the env has "
            f"{n_actions} actions: it must be (None, {n_actions})"
        )
    return model


def mlp_params(model: keras.Model) -> dict:
    """The MLP's weights as NumPy arrays, for ``mlp_forward``: the hidden layers' (kernel, bias), and the head's
    (one layer, or the dueling streams)."""
    layers = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Dense)}
    pair = lambda layer: (layer.kernel.numpy(), layer.bias.numpy())  # noqa: E731
    hidden = [pair(layers[f"hidden_{i}"]) for i in range(sum(n.startswith("hidden_") for n in layers))]
    if "advantage" in layers:
        return {"hidden": hidden, "value": pair(layers["value"]), "advantage": pair(layers["advantage"])}
    return {"hidden": hidden, "q_values": pair(layers["q_values"])}


def mlp_forward(params: dict, obs: np.ndarray) -> np.ndarray:
    """The MLP's Q-values in NumPy: for a handful of observations this is faster than a TF call, whose fixed
    overhead would otherwise dominate acting."""
    x = np.asarray(obs, dtype=np.float32)
    for kernel, bias in params["hidden"]:
        x = x @ kernel
        x += bias
        np.maximum(x, 0.0, out=x)
    if "advantage" in params:
        value = x @ params["value"][0] + params["value"][1]
        advantage = x @ params["advantage"][0] + params["advantage"][1]
        return value + advantage - advantage.mean(axis=1, keepdims=True)
    kernel, bias = params["q_values"]
    return x @ kernel + bias
