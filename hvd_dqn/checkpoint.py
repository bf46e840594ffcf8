"""Saving what a run produces, atomically: a crash mid-write never leaves a damaged file under the final name.

Two kinds of output:

- ``save_keras_model``: the final Q-network as a ``.keras`` file, for evaluation and serving.
- Full-state checkpoints, ``RUN_DIR/checkpoints/ckpt-<global env steps>/``, from which ``--resume`` continues a
  run bit-exactly. This module knows their files and formats and how to validate them; it makes no collective
  calls (``hvd_dqn.trainstate`` gathers the trainer's state and orders the ranks' writes).

A checkpoint directory holds, and loading it runs no code (no pickle anywhere):

``state.json``             rank 0: format version, config, world size, the training state (``hvd_dqn.trainingstate``)
``model.index``, ``model.data-*``  rank 0: online and target networks and Adam's slots, TF checkpoint format
``replay-rank<r>.npz``     rank r: its replay shard (ring buffer, pos/size, discounts, priorities), n-step pending,
                           Atari lives
``rank<r>.json``           rank r: its exploration RNG, its envs' state (physics, RNG, time-limit step; Atari:
                           emulators as base64 bytes, frame stacks), current observations and running returns
``COMPLETE``               rank 0, last: the manifest (every file's name, size and sha256)

Each checkpoint is written into ``ckpt-N.tmp``, the manifest last, then renamed to ``ckpt-N``: a directory named
``ckpt-N`` without ``COMPLETE`` was damaged after the fact, never half-written by us. A write that fails (a full
disk) removes its ``ckpt-N.tmp``. On resume each rank checks the sha256 of the files it reads (the shared ones
and its own), so an edit that keeps a file's size is refused too; every message about a damaged checkpoint names
the checkpoint to fall back to.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn import rundir, runlock
from hvd_dqn.errors import UserError

FORMAT = "hvd-dqn-checkpoint"
# 3: state.json holds the training state as one record (``training``); 2: the manifest records a sha256 per file.
# Versions 1 (sizes only) and 2 (the training state under ``loop``, ``updates``, ``evaluator_count``) are still read.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
COMPLETE = "COMPLETE"
MODEL_PREFIX = "model"
# Config keys that shape the saved state: a checkpoint restores only into a run that agrees on all of them.
STRUCTURAL_KEYS = (
    "env_id",
    "num_envs",
    "hidden_sizes",
    "dueling",
    "replay_capacity",
    "n_step",
    "prioritized_replay",
    "policy_ema",
    "optimizer",
    "frame_stack",
)
_NAME = re.compile(r"^ckpt-(\d+)$")
_RANK_FILE = re.compile(r"^(?:replay-rank(\d+)\.npz|rank(\d+)\.json)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be written or used; the message names it and says what to do, in one line."""


def save_keras_model(model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file that plain tf_keras loads (no Horovod, no custom objects)."""
    rundir.atomic_write(Path(path), model.save)


# ---------------------------------------------------------------------------------------------- where they live
def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS


def final_path(run_dir: Path, env_steps: int) -> Path:
    return checkpoints_dir(run_dir) / f"ckpt-{env_steps}"


def tmp_path(run_dir: Path, env_steps: int) -> Path:
    return checkpoints_dir(run_dir) / f"ckpt-{env_steps}.tmp"


def listed(run_dir: Path) -> list[Path]:
    """The ``ckpt-N`` directories of a run (complete or not; ``.tmp`` ones are writes in progress), oldest first.
    A symlink named like one is not the run's checkpoint: neither resumed from nor pruned."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_dir() and not p.is_symlink()
    ]
    return [p for _, p in sorted(found)]


def is_complete(ckpt: Path) -> bool:
    return (Path(ckpt) / COMPLETE).is_file()


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint directory of a run (validated later by ``verify``), or None."""
    found = listed(run_dir)
    return found[-1] if found else None


def prune(run_dir: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and stale ``.tmp`` writes (never ``current``).

    A ``ckpt-*.tmp`` (or ``.old``) may be another job's write in progress, so it is deleted only while this
    process holds the run dir's lock (``hvd_dqn.runlock``): then no other job can be writing here, and every one
    is the leftover of a job that died mid-write (ours was renamed into place before pruning).

    Nothing is deleted through a symlink: not in a checkpoints/ that links out of the run dir (a training run
    refuses one at its start), and a link named like a checkpoint is not one of ours."""
    if rundir.leads_outside(run_dir, checkpoints_dir(run_dir)) is not None:
        return
    complete = [p for p in listed(run_dir) if is_complete(p)]
    for old in complete[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    if not runlock.holds(run_dir):
        return
    for pattern in ("ckpt-*.tmp", "ckpt-*.old"):
        for stale in checkpoints_dir(run_dir).glob(pattern):
            if not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- writing
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Plain ``.npz`` (uncompressed: checkpoints are written often, and replay does not compress much). Written
    here rather than by ``np.savez``, which on a failed write (a full disk) leaves its ZipFile open, to be closed
    later on a closed file: "Exception ignored in ZipFile.__del__" on stderr."""
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for name, value in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_model(directory: Path, objects: dict[str, Any]) -> None:
    """Networks and optimizer as a TF checkpoint (``model.index`` + ``model.data-*``), tensors only."""
    import tensorflow as tf

    prefix = str(Path(directory) / MODEL_PREFIX)
    try:
        tf.train.Checkpoint(**objects).write(prefix)
    except tf.errors.OpError as exc:  # TF's own type for I/O failures (a full disk: ResourceExhaustedError)
        code = errno.ENOSPC if "No space left" in exc.message else errno.EIO
        raise OSError(code, os.strerror(code), prefix) from None
    for p in Path(directory).glob(MODEL_PREFIX + ".*"):
        _fsync_file(p)


def describe(paths) -> dict[str, dict[str, Any]]:
    """Name -> size and sha256 of files a rank has just written (read back: the page cache still holds them)."""
    return {Path(p).name: {"size": Path(p).stat().st_size, "sha256": _sha256(Path(p))} for p in paths}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def commit(tmp: Path, final: Path, files: dict[str, dict[str, Any]]) -> None:
    """Rank 0, after every rank has written its files (``files``: every rank's ``describe``): the manifest last,
    then rename into place. A previous checkpoint of the same step (a resumed run saving again where it started)
    is replaced only after the new one is complete."""
    manifest = dict(sorted(files.items()))
    write_json(Path(tmp) / COMPLETE, {"format": FORMAT, "version": VERSION, "files": manifest})
    rundir.fsync_dir(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    rundir.fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------------- reading
def _fail(ckpt: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {ckpt}: {what}")


def damaged(ckpt: Path, what: str) -> CheckpointError:
    """The error for a checkpoint that cannot be used as it is, naming the one to fall back to."""
    return CheckpointError(f"checkpoint {ckpt}: {what}; {fallback(ckpt)}")


def fallback(ckpt: Path) -> str:
    ckpt = Path(ckpt)
    m = _NAME.match(ckpt.name)
    step = int(m.group(1)) if m else None
    older = [
        p
        for p in listed(ckpt.parent.parent)
        if p != ckpt and is_complete(p) and (step is None or int(_NAME.match(p.name).group(1)) < step)
    ]
    if older:
        return f"delete it to resume from {older[-1].name}, the next older complete checkpoint"
    return "there is no older complete checkpoint to fall back to"


def find_for_resume(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir``; a one-line error if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run directory")
    ckpt = latest(run_dir)
    if ckpt is None:
        raise CheckpointError(
            f"--resume {run_dir}: no checkpoint in {checkpoints_dir(run_dir)} (nothing to resume; "
            "start the run without --resume)"
        )
    return ckpt


def verify(ckpt: Path, rank: int | None = None) -> dict[str, Any]:
    """Check the marker, that every file of the manifest is there at its full size, and the sha256 of the files
    ``rank`` reads (the shared ones and its own; every file when ``rank`` is None); return state.json."""
    ckpt = Path(ckpt)
    if not (ckpt / COMPLETE).is_file():
        raise damaged(ckpt, f"missing {COMPLETE} marker (truncated write?)")
    marker = _read_json(ckpt, COMPLETE)
    if marker.get("format") != FORMAT:
        raise damaged(ckpt, f"not an hvd-dqn checkpoint ({COMPLETE} names format {marker.get('format')!r})")
    version = marker.get("version")
    if version not in READABLE_VERSIONS:
        raise _fail(
            ckpt, f"format version {version}, this hvd-dqn reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    files = marker.get("files")
    if not isinstance(files, dict):
        raise damaged(ckpt, f"{COMPLETE} is damaged (no file list)")
    for name, entry in files.items():
        # version 1 recorded the size alone
        size, sha = (entry, None) if version == 1 else (_entry(ckpt, entry, "size"), _entry(ckpt, entry, "sha256"))
        path = ckpt / name
        if not path.is_file():
            raise damaged(ckpt, f"{name} is missing")
        if path.stat().st_size != size:
            raise damaged(
                ckpt, f"{name} is truncated or altered ({path.stat().st_size} bytes, the manifest says {size})"
            )
        if sha is not None and _reads(rank, name) and _sha256(path) != sha:
            raise damaged(ckpt, f"{name} is altered or damaged (its sha256 differs from the manifest's)")
    state = _read_json(ckpt, "state.json")
    if state.get("format") != FORMAT:
        raise damaged(ckpt, "state.json is not an hvd-dqn checkpoint's")
    return state


def _entry(ckpt: Path, entry: Any, key: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise damaged(ckpt, f"{COMPLETE} is damaged (a file without its {key})")
    return entry[key]


def _reads(rank: int | None, name: str) -> bool:
    """Whether ``rank`` reads the checkpoint file ``name`` on resume: the shared files and its own."""
    m = _RANK_FILE.match(name)
    return rank is None or m is None or int(m.group(1) or m.group(2)) == rank


def peek_state(ckpt: Path) -> dict[str, Any]:
    """state.json as it is, unchecked ({} if it cannot be read): only to choose which files ``verify`` checks."""
    try:
        data = json.loads((Path(ckpt) / "state.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_compatible(
    ckpt: Path, state: dict[str, Any], config: dict[str, Any], world_size: int, resizable: bool = True
) -> None:
    """The run about to resume must have the checkpoint's structural config keys, and its world size unless the
    replay can be dealt out to another number of ranks (``resizable``)."""
    saved_ws = state["world_size"]
    if saved_ws != world_size and not resizable:
        raise _fail(
            ckpt,
            f"written by {saved_ws} ranks, this job has {world_size}: resume with {saved_ws} ranks "
            f"(e.g. horovodrun -np {saved_ws}); Atari's frame replay keeps each rank's envs' frames "
            f"in rows of its vector steps, which cannot be dealt out to another number of ranks",
        )
    saved = state["config"]
    diff = [k for k in STRUCTURAL_KEYS if _norm(saved.get(k)) != _norm(config.get(k))]
    # mixed_float16 adds the loss scale to the optimizer's state; float32 and mixed_bfloat16 save the same variables
    # (a checkpoint from before the key reads as float32)
    if _loss_scaled(saved) != _loss_scaled(config):
        diff.append("precision")
    if diff:
        changes = ", ".join(f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in diff)
        raise _fail(ckpt, f"incompatible config ({changes}); these keys must match the checkpoint's")


def _loss_scaled(config: dict) -> bool:
    return config.get("precision", "float32") == "mixed_float16"


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _read_json(ckpt: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((ckpt / name).read_text())
    except FileNotFoundError:
        raise damaged(ckpt, f"{name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(ckpt, f"{name} is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise damaged(ckpt, f"{name} is damaged (not a JSON object)")
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
        raise damaged(ckpt, f"{name} is missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise damaged(ckpt, f"{name} is damaged ({type(exc).__name__}: {exc})") from None


def read_model(ckpt: Path, objects: dict[str, Any]) -> None:
    """Restore networks and optimizer in place; every saved tensor must find its variable and vice versa."""
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(**objects).read(str(Path(ckpt) / MODEL_PREFIX))
        status.assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise damaged(ckpt, f"model (TF checkpoint) is damaged or from another network ({first[:200]})") from None
