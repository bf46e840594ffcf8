"""The best policy so far: ``RUN/best/`` holds the network of the evaluation with the highest mean greedy return
(``q_network.keras``, written by the same writer as the final one), that evaluation (``eval.json``) and the run's
``config.json``, so ``evaluate``, ``export`` and ``plot`` take ``RUN/best`` as they take ``RUN``.

A DQN run can solve its task and then fall again; the final ``q_network.keras`` stays where it is, and best/ keeps
the policy worth using. It is replaced whole (``rundir.replace_dir``: a new directory, then renames) only when an
evaluation beats the best so far, so it costs nothing between evaluations. Every rank tracks the best from the
gathered evaluation, which is the same on every rank, so the decision needs no collective; rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvd_dqn import rundir
from hvd_dqn.errors import clip, say

EVAL = "eval.json"
FORMAT = "hvd-dqn-best"
KEY = "eval_return_mean"


class BestPolicy:
    """``improves(evaluation)`` after each evaluation, and ``keep(...)`` when it does; ``writer``: this rank
    writes best/ (rank 0). ``evaluation`` holds the one that chose best/ ({} before the first)."""

    def __init__(self, run_dir: Path, writer: bool):
        self.run_dir, self.writer = Path(run_dir), writer
        self.evaluation: dict[str, Any] = {}

    def improves(self, evaluation: dict[str, Any]) -> bool:
        """Whether ``evaluation`` beats the best so far (strictly: of equal evaluations the first is kept)."""
        mean = evaluation.get(KEY)
        if mean is None or not math.isfinite(mean):
            return False
        return not self.evaluation or mean > self.evaluation[KEY]

    def keep(self, evaluation: dict[str, Any], save_model: Callable[[Path], None]) -> None:
        """``evaluation`` is the new best. Rank 0 writes best/ with ``save_model(path)`` (the final policy's
        writer); a failed write (a full disk) is said in one line and leaves the earlier best/ and the bar as they
        were, so the next improvement tries again, and training goes on."""
        if self.writer:
            try:
                write(self.run_dir, evaluation, save_model)
            except OSError as exc:
                say(
                    f"hvd-dqn: could not write {self.run_dir / rundir.BEST} ({clip(exc.strerror or str(exc))}); "
                    f"the best policy so far is kept as it was, training goes on"
                )
                return
        self.evaluation = dict(evaluation)

    def resume(self) -> None:
        """A resumed run goes on from the best that best/ holds (whatever the checkpoint's step: its policy was
        evaluated as it says)."""
        self.evaluation = read(self.run_dir)

    def summary(self) -> dict[str, Any]:
        """summary.json's keys naming best/ and its evaluation (None where no evaluation was kept)."""
        e = self.evaluation
        return {
            "best_dir": str(self.run_dir / rundir.BEST) if e else None,
            "best_env_steps": e.get("env_steps"),
            "best_eval_return_mean": e.get(KEY),
        }


def write(run_dir: Path, evaluation: dict[str, Any], save_model: Callable[[Path], None]) -> None:
    run_dir = Path(run_dir)
    meta = json.dumps({"format": FORMAT, **evaluation, "written_at": time.time()}, indent=2) + "\n"

    def fill(tmp: Path) -> None:
        save_model(tmp / rundir.MODEL)
        rundir.atomic_write_text(tmp / rundir.CONFIG, (run_dir / rundir.CONFIG).read_text())
        rundir.atomic_write_text(tmp / EVAL, meta)

    rundir.replace_dir(run_dir / rundir.BEST, fill)


def read(run_dir: Path) -> dict[str, Any]:
    """The evaluation that chose ``run_dir``'s best/ ({} if none, or if best/ is not ours: damaged, or a link
    out of the run dir, which is not followed)."""
    best = Path(run_dir) / rundir.BEST
    if rundir.leads_outside(run_dir, best) is not None:
        return {}
    try:
        data = json.loads((best / EVAL).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get(KEY), (int, float)):
        return {}
    data.pop("format")
    return data


def run_of(path: Path) -> Path:
    """The run dir of ``path``: its parent where ``path`` is a run's best/, else ``path`` itself."""
    path = Path(path)
    if path.name == rundir.BEST and (path / EVAL).is_file() and (path.parent / rundir.METRICS).is_file():
        return path.parent
    return path
