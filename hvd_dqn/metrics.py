"""Run outputs written by rank 0 only: metrics.jsonl rows, summary.json, and plain progress lines.

On other ranks the logger is a no-op, so the training loop carries no ``if rank == 0``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from hvd_dqn import rundir


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


class RunLogger:
    """metrics.jsonl rows, TensorBoard scalars (``run_dir/tensorboard``, tags = the row's keys) and progress
    output: a tqdm bar with speed, last return and ETA when the stream is a terminal, one plain line per log
    point otherwise (so batch logs stay readable). A no-op where ``enabled`` is False (every rank but 0)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_env_steps: int | None = None,
        stream=None,
        tensorboard: bool = True,
        fresh: bool = False,
    ):
        """``fresh``: a new run, whose metrics.jsonl starts empty; otherwise rows are appended (a resumed run, an
        elastic run whose new rank 0 takes over the outputs)."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.stream = stream if stream is not None else sys.stdout
        self._file = self._tb = self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not fresh:
            end_cut_line(self.run_dir / rundir.METRICS)
        self._file = open(self.run_dir / rundir.METRICS, "w" if fresh else "a", buffering=1)
        if tensorboard:
            import tensorflow as tf

            self._tb = tf.summary.create_file_writer(str(self.run_dir / rundir.TENSORBOARD))
        if total_env_steps and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_env_steps,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                file=self.stream,
                desc="hvd-dqn",
            )

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        step = int(row["env_steps"])
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=step):
                for key, value in row.items():
                    if (
                        key != "env_steps"
                        and isinstance(value, (int, float))
                        and not isinstance(value, bool)
                        and math.isfinite(value)
                    ):
                        tf.summary.scalar(key, value)
            self._tb.flush()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            postfix = {
                k: f"{row[k]:.1f}"
                for k, name in (("charts/episodic_return", "return"), ("eval_return_mean", "eval"))
                if row.get(k) is not None
            }
            self._bar.set_postfix({"return" if "episodic" in k else "eval": v for k, v in postfix.items()})
        else:
            self.stream.write(format_progress(row) + "\n")
            self.stream.flush()

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.enabled:
            text = json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n"
            rundir.atomic_write_text(self.run_dir / name, text)

    def close(self) -> None:
        for handle in (self._file, self._tb, self._bar):
            if handle is not None:
                handle.close()
        self._file = self._tb = self._bar = None


def end_cut_line(path: Path) -> None:
    """Before rows are appended to ``path``: a last line that a kill cut short (no newline at its end) is
    removed, so that the next row starts a line of its own instead of being glued to half a row; a whole row
    that lacks only its newline gets it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
        whole = True
    except ValueError:
        whole = False
    rundir.atomic_write(Path(path), lambda tmp: tmp.write_bytes(data + b"\n" if whole else data[:start]))


# Set in the ranks by mpirun/horovodrun (Open MPI), srun (PMI/PMIx, SLURM) or Horovod's Gloo launcher.
LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID", "HOROVOD_RANK")


def _is_terminal(stream) -> bool:
    """A terminal that shows a redrawn bar. Not so under a launcher, even where the rank's stdout is a tty:
    mpirun gives its local ranks a pty but forwards their output line by line, so a bar that only ever writes
    "\r" showed nothing at all until the run ended."""
    if any(name in os.environ for name in LAUNCHER_ENV):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_progress(row: dict[str, Any]) -> str:
    parts = [f"steps {row['env_steps']:>9,d}", f"{row['wall_s']:7.1f}s"]
    for key, fmt in (
        ("charts/episodic_return", "return {:7.1f}"),
        ("eval_return_mean", "eval {:7.1f}"),
        ("losses/td_loss", "loss {:.4f}"),
        ("charts/epsilon", "eps {:.3f}"),
        ("perf/env_steps_per_s", "{:,.0f} steps/s"),
    ):
        if row.get(key) is not None:
            parts.append(fmt.format(row[key]))
    return "hvd-dqn | " + " | ".join(parts)
