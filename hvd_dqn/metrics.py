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


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, stream=sys.stdout):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.stream = stream
        self._file = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self.stream.write(format_progress(row) + "\n")
        self.stream.flush()

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.run_dir / name, json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def format_progress(row: dict[str, Any]) -> str:
    parts = [f"steps {row['env_steps']:>9,d}", f"{row['wall_s']:7.1f}s"]
    for key, fmt in (("charts/episodic_return", "return {:7.1f}"), ("eval_return_mean", "eval {:7.1f}"),
                     ("losses/td_loss", "loss {:.4f}"), ("charts/epsilon", "eps {:.3f}"),
                     ("perf/env_steps_per_s", "{:,.0f} steps/s")):
        if row.get(key) is not None:
            parts.append(fmt.format(row[key]))
    return "hvd-dqn | " + " | ".join(parts)
