"""Saving what a run produces, atomically: a crash mid-write never leaves a damaged file under the final name.

Two kinds of output:

- ``save_keras_model``: the final Q-network as a ``.keras`` file, for evaluation and serving.
- Full-state checkpoints, ``RUN_DIR/checkpoints/ckpt-<global env steps>/``, from which ``--resume`` continues a
  run bit-exactly. This module knows their files and formats and how to validate them; it makes no collective
  calls (``hvd_dqn.trainstate`` gathers the trainer's state and orders the ranks' writes).

A checkpoint directory holds, and loading it runs no code (no pickle anywhere):

``state.json``             rank 0: format version, config, world size, loop counters, update count, evaluator count
``model.index``, ``model.data-*``  rank 0: online and target networks and Adam's slots, TF checkpoint format
``replay-rank<r>.npz``     rank r: its replay shard (ring buffer, pos/size, discounts, priorities), n-step pending
``rank<r>.json``           rank r: its exploration RNG, its envs' state (physics, RNG, time-limit step), current
                           observations and running episode returns
``COMPLETE``               rank 0, last: the manifest (every file's name and size)

Each checkpoint is written into ``ckpt-N.tmp``, the manifest last, then renamed to ``ckpt-N``: a directory named
``ckpt-N`` without ``COMPLETE`` was damaged after the fact, never half-written by us.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn import runlock
from hvd_dqn.errors import UserError

FORMAT = "hvd-dqn-checkpoint"
VERSION = 1
COMPLETE = "COMPLETE"
MODEL_PREFIX = "model"
# Config keys that shape the saved state: a checkpoint restores only into a run that agrees on all of them.
STRUCTURAL_KEYS = ("env_id", "num_envs", "hidden_sizes", "dueling", "replay_capacity", "n_step",
                   "prioritized_replay", "policy_ema")
_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be written or used; the message names it and says what to do, in one line."""


def save_keras_model(model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file that plain tf_keras loads (no Horovod, no custom objects)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------- where they live
def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def final_path(run_dir: Path, env_steps: int) -> Path:
    return checkpoints_dir(run_dir) / f"ckpt-{env_steps}"


def tmp_path(run_dir: Path, env_steps: int) -> Path:
    return checkpoints_dir(run_dir) / f"ckpt-{env_steps}.tmp"


def listed(run_dir: Path) -> list[Path]:
    """The ``ckpt-N`` directories of a run (complete or not; ``.tmp`` ones are writes in progress), oldest first."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_complete(ckpt: Path) -> bool:
    return (Path(ckpt) / COMPLETE).is_file()


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint directory of a run (validated later by ``read_state``), or None."""
    found = listed(run_dir)
    return found[-1] if found else None


def prune(run_dir: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and stale ``.tmp`` writes (never ``current``).

    A ``ckpt-*.tmp`` (or ``.old``) may be another job's write in progress, so it is deleted only while this
    process holds the run dir's lock (``hvd_dqn.runlock``): then no other job can be writing here, and every one
    is the leftover of a job that died mid-write (ours was renamed into place before pruning)."""
    complete = [p for p in listed(run_dir) if is_complete(p)]
    for old in complete[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    if not runlock.holds(run_dir):
        return
    for pattern in ("ckpt-*.tmp", "ckpt-*.old"):
        for stale in checkpoints_dir(run_dir).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- writing
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Plain ``.npz`` (uncompressed: checkpoints are written often, and replay does not compress much)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def write_model(directory: Path, objects: dict[str, Any]) -> None:
    """Networks and optimizer as a TF checkpoint (``model.index`` + ``model.data-*``), tensors only."""
    import tensorflow as tf

    tf.train.Checkpoint(**objects).write(str(Path(directory) / MODEL_PREFIX))
    for p in Path(directory).glob(MODEL_PREFIX + ".*"):
        _fsync_file(p)


def commit(tmp: Path, final: Path) -> None:
    """Rank 0, after every rank has written its files: the manifest last, then rename into place. A previous
    checkpoint of the same step (a resumed run saving again where it started) is replaced only after the new one
    is complete."""
    manifest = {p.name: p.stat().st_size for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    write_json(Path(tmp) / COMPLETE, {"format": FORMAT, "version": VERSION, "files": manifest})
    _fsync_dir(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------------- reading
def _fail(ckpt: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {ckpt}: {what}")


def find_for_resume(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir``; a one-line error if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run directory")
    ckpt = latest(run_dir)
    if ckpt is None:
        raise CheckpointError(f"--resume {run_dir}: no checkpoint in {checkpoints_dir(run_dir)} (nothing to resume; "
                              "start the run without --resume)")
    return ckpt


def verify(ckpt: Path) -> dict[str, Any]:
    """Check the marker and that every file of the manifest is there at its full size; return state.json."""
    ckpt = Path(ckpt)
    older = [p.name for p in listed(ckpt.parent.parent) if p != ckpt and is_complete(p)]
    hint = f"; delete it to resume from {older[-1]}" if older else ""
    if not (ckpt / COMPLETE).is_file():
        raise _fail(ckpt, f"missing {COMPLETE} marker (truncated write?){hint}")
    marker = _read_json(ckpt, COMPLETE, hint)
    if marker.get("format") != FORMAT:
        raise _fail(ckpt, f"not an hvd-dqn checkpoint ({COMPLETE} names format {marker.get('format')!r}){hint}")
    if marker.get("version") != VERSION:
        raise _fail(ckpt, f"format version {marker.get('version')}, this hvd-dqn reads version {VERSION}")
    for name, size in marker.get("files", {}).items():
        path = ckpt / name
        if not path.is_file():
            raise _fail(ckpt, f"{name} is missing{hint}")
        if path.stat().st_size != size:
            raise _fail(ckpt, f"{name} is truncated or altered ({path.stat().st_size} bytes, "
                              f"the manifest says {size}){hint}")
    state = _read_json(ckpt, "state.json", hint)
    if state.get("format") != FORMAT:
        raise _fail(ckpt, f"state.json is not an hvd-dqn checkpoint's{hint}")
    return state


def check_compatible(ckpt: Path, state: dict[str, Any], config: dict[str, Any], world_size: int) -> None:
    """The run about to resume must have the checkpoint's world size and structural config keys."""
    saved_ws = state["world_size"]
    if saved_ws != world_size:
        raise _fail(ckpt, f"written by {saved_ws} ranks, this job has {world_size}: resume with {saved_ws} ranks "
                          f"(e.g. horovodrun -np {saved_ws}), the world size the replay shards were written with")
    saved = state["config"]
    diff = [k for k in STRUCTURAL_KEYS if _norm(saved.get(k)) != _norm(config.get(k))]
    if diff:
        changes = ", ".join(f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in diff)
        raise _fail(ckpt, f"incompatible config ({changes}); these keys must match the checkpoint's")


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _read_json(ckpt: Path, name: str, hint: str = "") -> dict[str, Any]:
    try:
        data = json.loads((ckpt / name).read_text())
    except FileNotFoundError:
        raise _fail(ckpt, f"{name} is missing{hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(ckpt, f"{name} is damaged ({type(exc).__name__}: {exc}){hint}") from None
    if not isinstance(data, dict):
        raise _fail(ckpt, f"{name} is damaged (not a JSON object){hint}")
    return data


def read_json(ckpt: Path, name: str) -> dict[str, Any]:
    return _read_json(Path(ckpt), name)


def read_arrays(ckpt: Path, name: str) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, read fully (zip CRCs checked) with pickle refused."""
    path = Path(ckpt) / name
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise _fail(ckpt, f"{name} is missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _fail(ckpt, f"{name} is damaged ({type(exc).__name__}: {exc})") from None


def read_model(ckpt: Path, objects: dict[str, Any]) -> None:
    """Restore networks and optimizer in place; every saved tensor must find its variable and vice versa."""
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(**objects).read(str(Path(ckpt) / MODEL_PREFIX))
        status.assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(ckpt, f"model (TF checkpoint) is damaged or from another network ({first[:200]})") from None


# ---------------------------------------------------------------------------------------------- JSON values
def to_json(value: Any) -> Any:
    """Exact JSON for the values env and RNG state is made of: arrays and NumPy scalars keep their dtype (floats
    round-trip exactly through Python's repr), tuples stay tuples, Generators become their bit-generator state."""
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"cannot store an array of dtype {arr.dtype}")
        return {"__ndarray__": arr.dtype.str, "shape": list(arr.shape), "data": arr.ravel().tolist(),
                "scalar": isinstance(value, np.generic)}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__}")


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        arr = np.array(value["data"], dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"])
        return arr[()] if value.get("scalar") else arr
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__generator__" in value:
        state = value["__generator__"]
        gen = np.random.Generator(getattr(np.random, state["bit_generator"])())
        gen.bit_generator.state = state
        return gen
    return {k: from_json(v) for k, v in value.items()}
