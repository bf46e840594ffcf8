"""Loading a trained Q-network for use outside training, and exporting it as a TensorFlow SavedModel.

A model is found from a run dir (``q_network.keras`` + ``config.json``), an export dir (``saved_model/`` +
``export.json``) or a ``.keras`` file. Nothing here needs Horovod.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hvd_dqn.envs import atari_options
from hvd_dqn.errors import UserError
from hvd_dqn.metrics import read_json_object

EXPORT_META = "export.json"


@dataclass
class LoadedPolicy:
    q_fn: Callable[[np.ndarray], np.ndarray]  # (batch, *obs_shape) -> (batch, n_actions)
    obs_shape: tuple[int, ...]
    n_actions: int
    env_id: str | None  # the env it was trained on, when known
    source: str


def _load_keras(path: Path):
    from hvd_dqn.keras2 import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a loadable Keras model ({str(exc).splitlines()[0]})") from None


def _keras_policy(model, env_id, source) -> LoadedPolicy:
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False))
    dtype = model.input.dtype  # float32 vectors, or uint8 frame stacks (Atari)
    return LoadedPolicy(lambda obs: call(tf.constant(obs, dtype)).numpy(), tuple(model.input_shape[1:]),
                        int(model.output_shape[-1]), env_id, source)


def load_policy(path: str | Path) -> LoadedPolicy:
    """The Q-function in a run dir, an export dir or a .keras file; a UserError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"not found: {path} (expected a run dir, an export dir or a .keras file)")
    if path.is_file():
        if path.suffix != ".keras":
            raise UserError(f"{path}: not a .keras model file")
        return _keras_policy(_load_keras(path), None, str(path))
    if (path / "saved_model" / "saved_model.pb").is_file():
        import tensorflow as tf

        meta = read_json_object(path / EXPORT_META, missing={})
        loaded = tf.saved_model.load(str(path / "saved_model"))
        fn = loaded.signatures["q_values"]
        spec = fn.structured_input_signature[1]["observation"]
        n_actions = int(fn.structured_outputs["q_values"].shape[-1])
        return LoadedPolicy(lambda obs: fn(observation=tf.constant(obs, spec.dtype))["q_values"].numpy(),
                            tuple(spec.shape[1:]), n_actions, meta.get("env_id"), str(path))
    model_file = path / "q_network.keras"
    if not model_file.is_file():
        raise UserError(f"{path}: no model in it (expected q_network.keras from a finished run, or "
                        f"saved_model/ from hvd-dqn export)")
    env_id = read_json_object(path / "config.json", missing={}).get("env_id")
    return _keras_policy(_load_keras(model_file), env_id, str(path))


def check_matches_env(policy: LoadedPolicy, env) -> None:
    obs_shape = tuple(env.observation_space.shape)
    n_actions = int(env.action_space.n)
    if obs_shape != tuple(policy.obs_shape) or n_actions != policy.n_actions:
        raise UserError(
            f"env {env.spec.id if env.spec else env} has observations of shape {obs_shape} and {n_actions} "
            f"actions, but the model {policy.source} expects shape {tuple(policy.obs_shape)} and "
            f"{policy.n_actions} actions")


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir/saved_model`` (signatures ``q_values`` = serving_default, and ``greedy_action``),
    ``out_dir/q_network.keras`` and ``out_dir/export.json``. Returns out_dir."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    model_file = run_dir / "q_network.keras"
    if not model_file.is_file():
        raise UserError(f"{run_dir}: no model in it (q_network.keras is written when a run finishes)")
    config = read_json_object(run_dir / "config.json", missing={})
    import tensorflow as tf  # after the checks: a mistyped path fails at once, not after TF's start-up

    model = _load_keras(model_file)
    obs_shape = tuple(model.input_shape[1:])
    spec = tf.TensorSpec([None, *obs_shape], model.input.dtype, name="observation")  # uint8 frames for Atari

    class Policy(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[spec])
        def q_values(self, observation):
            return {"q_values": self.net(observation, training=False)}

        @tf.function(input_signature=[spec])
        def greedy_action(self, observation):
            q = self.net(observation, training=False)
            return {"action": tf.argmax(q, axis=-1, output_type=tf.int32)}

    policy = Policy(model)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tf.saved_model.save(policy, str(tmp / "saved_model"), signatures={
        "serving_default": policy.q_values, "q_values": policy.q_values, "greedy_action": policy.greedy_action})
    shutil.copy2(model_file, tmp / "q_network.keras")
    (tmp / EXPORT_META).write_text(json.dumps({
        "env_id": config.get("env_id"), "observation_shape": list(obs_shape),
        "n_actions": int(model.output_shape[-1]), "from_run": str(run_dir),
        **atari_options(config)}, indent=2) + "\n")  # Atari: the preprocessing evaluate must reproduce
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # the export appears whole or not at all
    return out_dir
