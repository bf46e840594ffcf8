"""A run directory: the names of its files, given once, and the one way the package writes a file there (atomic:
a temporary file, then a rename) and reads a JSON file back.

    RUN_DIR/config.json        the config as run, with the world size and each rank's share (rank 0)
    RUN_DIR/metrics.jsonl      one row per log point (rank 0)
    RUN_DIR/tensorboard/       the same rows as TensorBoard scalars (rank 0)
    RUN_DIR/summary.json       the run's summary, at the end (rank 0)
    RUN_DIR/q_network.keras    the trained policy's network, at the end (rank 0)
    RUN_DIR/checkpoints/       full-state checkpoints (hvd_dqn.checkpoint)
    RUN_DIR/.hvd-dqn.lock      the lock of the job that owns the run dir (hvd_dqn.runlock)
    RUN_DIR/.heartbeat/        each rank's heartbeat (hvd_dqn.watchdog)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from hvd_dqn.errors import UserError, clip

RUNS = "runs"  # where a run without --run-dir goes, under the working directory
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
SUMMARY = "summary.json"
MODEL = "q_network.keras"
CHECKPOINTS = "checkpoints"
LOCK = ".hvd-dqn.lock"
HEARTBEATS = ".heartbeat"


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """``write(tmp)`` writes the file (or directory) at a temporary path beside ``path``, which is then renamed
    onto ``path``: a reader never sees half a file, and a failure (a full disk) leaves the old file as it was and no
    temporary one. ``durable``: the file's bytes reach the disk before the rename (fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        if durable and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        if isinstance(exc, OSError):
            exc.filename = str(path)  # the file the caller asked for, not our temporary one
        raise


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), durable)


def read_json_object(path: Path, missing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's JSON file (config.json, summary.json, export.json) as a dict; ``missing`` where there is no such
    file (a UserError when None). Unreadable, malformed or not an object: a one-line UserError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        if missing is None:
            raise UserError(f"{path}: not found") from None
        return missing
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, or a 5,000-digit int
        raise UserError(f"{path}: unreadable or not JSON ({clip(str(exc), 120)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
