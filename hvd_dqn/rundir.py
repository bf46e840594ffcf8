"""A run directory: the names of its files, given once, and the one way the package writes a file there (atomic:
a temporary file, then a rename) and reads a JSON file back.

    RUN_DIR/config.json        the config as run, with the world size and each rank's share (rank 0)
    RUN_DIR/metrics.jsonl      one row per log point (rank 0)
    RUN_DIR/tensorboard/       the same rows as TensorBoard scalars (rank 0)
    RUN_DIR/summary.json       the run's summary, at the end (rank 0)
    RUN_DIR/q_network.keras    the trained policy's network, at the end (rank 0)
    RUN_DIR/best/              the best evaluated policy so far and the evaluation that chose it (hvd_dqn.best)
    RUN_DIR/checkpoints/       full-state checkpoints (hvd_dqn.checkpoint)
    RUN_DIR/.hvd-dqn.lock      the lock of the job that owns the run dir (hvd_dqn.runlock)
    RUN_DIR/.heartbeat/        each rank's heartbeat (hvd_dqn.watchdog)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
BEST = "best"
# what a run writes into its dir, and so all that ``clear_earlier_run`` may delete (the lock file stays: it is held)
RUN_OUTPUTS = (CONFIG, METRICS, TENSORBOARD, SUMMARY, MODEL, CHECKPOINTS, HEARTBEATS, BEST)
# atomic_write's and replace_dir's temporary files, left by a process that was killed
_TEMPORARY = re.compile(r"^\.[^/]+\.tmp[0-9]+")


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


def replace_dir(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a new directory beside ``path``, which then takes the place of what was at ``path``:
    a reader finds the old directory or the new one, each whole (for an instant, nothing). The old entry is
    renamed aside and removed after: a directory with its contents, a symlink as the link alone (rename and unlink
    never follow a link, so its target is left as it is). A failure leaves the old entry in place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.tmp{os.getpid()}.old")
    for leftover in (tmp, old):  # of an earlier process with this pid
        remove_entry(leftover)
    moved = False
    try:
        tmp.mkdir()
        write(tmp)
        fsync_dir(tmp)
        if path.is_symlink() or path.exists():
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        remove_entry(tmp)
        if moved and not (path.is_symlink() or path.exists()):
            os.replace(old, path)
        raise
    remove_entry(old)


def remove_entry(path: Path) -> None:
    """Remove ``path`` if it is there: a symlink as the link itself, a directory with everything in it (rmtree
    removes the links inside it as links, never what they point to)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leads_outside(run_dir: Path, path: Path) -> Path | None:
    """Where ``path``, named inside ``run_dir``, really is when a symlink on the way (``path`` itself or a
    directory above it) takes it out of the run dir; None while it stays inside. A run dir reached through a
    link of its own (``runs/latest``) is fine: both sides are resolved."""
    run, real = Path(run_dir).resolve(), Path(path).resolve()
    return None if real == run or run in real.parents else real


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


def clear_earlier_run(run_dir: Path, dry_run: bool = False) -> list[str]:
    """Delete an earlier run's outputs from ``run_dir`` (``train --restart``; the caller holds its lock) and return
    their names. Refuses, deleting nothing, when the dir holds anything a run does not write: a user's file in it is
    not ours to delete, whatever the dir is called. Symlinks are removed, never followed. ``dry_run``: only the
    refusal (before the lock file is created in a dir that is not a run's)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = sorted(p.name for p in run_dir.iterdir())
    strangers = [n for n in names if n not in RUN_OUTPUTS and n != LOCK and not _TEMPORARY.match(n)]
    if strangers:
        more = f" and {len(strangers) - 1} more" if len(strangers) > 1 else ""
        raise UserError(
            f"--restart: run dir {run_dir} holds {strangers[0]!r}{more}, which no hvd-dqn run writes; "
            f"nothing was deleted: move it away, or train into another --run-dir"
        )
    cleared = [n for n in names if n != LOCK]
    if dry_run:
        return cleared
    for name in cleared:
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise UserError(f"--restart: cannot delete {path} ({exc.strerror or exc})") from None
    return cleared
