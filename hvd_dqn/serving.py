"""Loading a trained Q-network for use outside training, and exporting it as a TensorFlow SavedModel.

A model is found from a run dir (``q_network.keras`` + ``config.json``), an export dir (``saved_model/`` +
``export.json``) or a ``.keras`` file. Nothing here needs Horovod.

Loading a ``.keras`` file runs no code from it: only the zip format is read, with Keras' ``safe_mode`` (which
refuses Lambda layers' bytecode), and only when every object its config names is a Keras built-in (tf_keras'
safe_mode, unlike Keras 3.9's, would import a function or class from any module a file names). HDF5 files,
whose Lambda layers run on loading, are refused. A SavedModel is a TensorFlow graph, which can do what any
program can: load only exports from someone you trust.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvd_dqn import best, rundir
from hvd_dqn.envs import atari_options
from hvd_dqn.errors import UserError
from hvd_dqn.rundir import read_json_object

EXPORT_META = "export.json"
EXPORT_FORMAT = "hvd-dqn-export"
# What an export dir holds; an existing OUT_DIR is replaced only when it holds nothing else.
EXPORT_ENTRIES = frozenset({"saved_model", rundir.MODEL, EXPORT_META})
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_MODULE = re.compile(r"^(tf_)?keras(\.|$)")


@dataclass
class LoadedPolicy:
    q_fn: Callable[[np.ndarray], np.ndarray]  # (batch, *obs_shape) -> (batch, n_actions)
    obs_shape: tuple[int, ...]
    n_actions: int
    env_id: str | None  # the env it was trained on, when known
    source: str


def _load_keras(path: Path):
    """The model in a ``.keras`` zip file, loaded without running code from it (UserError otherwise)."""
    _check_keras_zip(path)
    from hvd_dqn.keras2 import keras

    try:
        # tf_keras reads a zip named *.keras with its v3 loader, which honours safe_mode; anything else would go
        # to the legacy HDF5/SavedModel loaders, which run Lambda bytecode (_check_keras_zip keeps it out)
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a foreign or damaged archive
        text = str(exc).strip()
        if "safe_mode" in text:  # a Lambda our own check missed: Keras' safe_mode still refused it
            raise UserError(
                f"{path}: refused: the model holds a Lambda layer, whose Python code would run on loading"
            ) from None
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(f"{path}: not a loadable Keras model ({first})") from None


def _check_keras_zip(path: Path) -> None:
    if not str(path).endswith(".keras"):
        raise UserError(f"{path}: not a .keras model file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_MAGIC))
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    if not is_zip:
        kind = "an HDF5 file" if head == HDF5_MAGIC else "not a zip archive"
        raise UserError(
            f"{path}: refused: {kind}, not the .keras zip format (only that format is loaded, "
            f"because loading the others can run code stored in the file)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        foreign = _foreign_object(config)
    except (OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a loadable Keras model (config.json: {str(exc)[:200]})") from None
    if foreign == "Lambda":
        raise UserError(f"{path}: refused: the model holds a Lambda layer, whose Python code would run on loading")
    if foreign is not None:
        raise UserError(
            f"{path}: refused: the model names {foreign[:100]}, which is not part of Keras, and "
            f"loading it would run code from outside Keras"
        )


def _foreign_object(node) -> str | None:
    """The first object of a Keras config that Keras would take from outside its own modules (as
    ``module.name``), or "Lambda" for a Lambda layer (Python bytecode); None when it holds Keras' objects only."""
    if isinstance(node, dict):
        if "class_name" in node:
            module, name = node.get("module"), node["class_name"]
            if name == "Lambda":
                return "Lambda"
            if module is not None and not _KERAS_MODULE.match(str(module)):
                return f"{module}.{name}"
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    return next((found for child in children if (found := _foreign_object(child)) is not None), None)


def _keras_policy(model, env_id, source) -> LoadedPolicy:
    import tensorflow as tf

    dtype = model.input.dtype  # float32 vectors, or uint8 frame stacks (Atari)
    # any batch size: evaluate's batch shrinks as its episodes end, and a trace per size would be slow and noisy
    call = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), dtype)]
    )
    return LoadedPolicy(
        lambda obs: call(tf.constant(obs, dtype)).numpy(),
        tuple(model.input_shape[1:]),
        int(model.output_shape[-1]),
        env_id,
        source,
    )


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
        return LoadedPolicy(
            lambda obs: fn(observation=tf.constant(obs, spec.dtype))["q_values"].numpy(),
            tuple(spec.shape[1:]),
            n_actions,
            meta.get("env_id"),
            str(path),
        )
    model_file = _own_file(path, rundir.MODEL)
    if not model_file.is_file():
        raise UserError(
            f"{path}: no model in it (expected q_network.keras from a finished run, or "
            f"saved_model/ from hvd-dqn export)"
        )
    env_id = read_json_object(_own_file(path, rundir.CONFIG), missing={}).get("env_id")
    return _keras_policy(_load_keras(model_file), env_id, str(path))


def check_matches_env(policy: LoadedPolicy, env) -> None:
    obs_shape = tuple(env.observation_space.shape)
    n_actions = int(env.action_space.n)
    if obs_shape != tuple(policy.obs_shape) or n_actions != policy.n_actions:
        raise UserError(
            f"env {env.spec.id if env.spec else env} has observations of shape {obs_shape} and {n_actions} "
            f"actions, but the model {policy.source} expects shape {tuple(policy.obs_shape)} and "
            f"{policy.n_actions} actions"
        )


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir/saved_model`` (signatures ``q_values`` = serving_default, and ``greedy_action``),
    ``out_dir/q_network.keras`` and ``out_dir/export.json``. Returns out_dir."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    model_file = _own_file(run_dir, rundir.MODEL)
    if not model_file.is_file():
        raise UserError(f"{run_dir}: no model in it (q_network.keras is written when a run finishes)")
    config = read_json_object(_own_file(run_dir, rundir.CONFIG), missing={})
    target = _check_out_dir(best.run_of(run_dir), out_dir)
    _check_keras_zip(model_file)
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
    tmp = _new_sibling(target, "tmp")
    try:
        tf.saved_model.save(
            policy,
            str(tmp / "saved_model"),
            signatures={
                "serving_default": policy.q_values,
                "q_values": policy.q_values,
                "greedy_action": policy.greedy_action,
            },
        )
        shutil.copy2(model_file, tmp / rundir.MODEL)
        # atari_options: the preprocessing that evaluate must reproduce
        (tmp / EXPORT_META).write_text(
            json.dumps(
                {
                    "format": EXPORT_FORMAT,
                    "env_id": config.get("env_id"),
                    "observation_shape": list(obs_shape),
                    "n_actions": int(model.output_shape[-1]),
                    "from_run": str(run_dir),
                    "env_kwargs": config.get("env_kwargs") or {},
                    **atari_options(config),
                },
                indent=2,
            )
            + "\n"
        )
        _put_in_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours; gone already when it became out_dir
    return out_dir


def _own_file(run_dir: Path, name: str) -> Path:
    """``run_dir/name``, refused (one line) where it is a symlink out of the run dir: what is read as the run's
    model or config must be the run's own."""
    path = run_dir / name
    outside = rundir.leads_outside(run_dir, path)
    if outside is not None:
        raise UserError(
            f"{path}: a symlink to {outside}, outside the run dir; hvd-dqn reads a run's own files "
            f"only and follows no link out of a run dir"
        )
    return path


def _check_out_dir(run_dir: Path, out_dir: Path) -> Path:
    """The export's destination, resolved; a UserError for one whose replacement could lose something not ours:
    the run dir itself, a dir around it or inside it (also where a symlink in the run dir leads out of it: the
    path as given is checked as well as where it leads), anything that is not an earlier export."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or out in run.parents:
        raise UserError(
            f"export OUT_DIR {out_dir} is or contains the run dir {run_dir}: give a new directory outside it"
        )
    as_given = Path(os.path.abspath(out_dir))
    if run in out.parents or any(r in as_given.parents for r in (run, Path(os.path.abspath(run_dir)))):
        raise UserError(f"export OUT_DIR {out_dir} is inside the run dir {run_dir}: give a directory outside it")
    if out.exists() or out.is_symlink():
        meta = _read_export_meta(out)
        if meta is None:
            raise UserError(
                f"export OUT_DIR {out_dir} exists and is not an earlier hvd-dqn export (no "
                f"{EXPORT_META} of ours): give a new path; nothing was written"
            )
        extra = sorted(set(os.listdir(out)) - EXPORT_ENTRIES)
        if extra:
            raise UserError(
                f"export OUT_DIR {out_dir} is an earlier export but also holds {extra[0]!r}, which "
                f"hvd-dqn did not write: move it away or give a new path; nothing was written"
            )
    return out


def _read_export_meta(path: Path) -> dict | None:
    """The export.json of an earlier export (written by this or an older hvd-dqn), else None."""
    try:
        meta = json.loads((path / EXPORT_META).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    # before EXPORT_FORMAT was written, an export.json was recognisable by these keys
    return meta if meta.get("format") == EXPORT_FORMAT or {"from_run", "n_actions"} <= meta.keys() else None


def _new_sibling(path: Path, kind: str) -> Path:
    """A new, empty directory beside ``path`` with a name nobody else uses (mkdir fails rather than reuse one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        sibling = path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            sibling.mkdir()
            return sibling
        except FileExistsError:
            continue


def _put_in_place(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an earlier export at ``out`` is moved aside first and deleted only after the new
    one is in place, so ``out`` always holds a whole export (or, for an instant, nothing)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = _new_sibling(out, "old")
    os.replace(out, old)  # onto an empty directory: allowed by POSIX rename
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)  # the earlier export back where it was
        raise
    shutil.rmtree(old)
