"""Learning curves from run dirs: greedy evaluation return against global env steps and against wall clock."""
from __future__ import annotations

import json
from pathlib import Path

from hvd_dqn.errors import UserError
from hvd_dqn import rundir
from hvd_dqn.rundir import read_json_object


def read_run(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    metrics = run_dir / rundir.METRICS
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl in it (is it a hvd-dqn run dir?)")
    rows = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{metrics}: line {n} is not JSON") from None
    summary = read_json_object(run_dir / rundir.SUMMARY, missing={})
    config = read_json_object(run_dir / rundir.CONFIG, missing={})
    return {"rows": rows, "summary": summary, "config": config}


def plot_runs(run_dirs: list[Path], out: Path, width_px: int = 1200, height_px: int = 450, dpi: int = 100) -> Path:
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; name the PNG file to write, e.g. {out / 'curves.png'}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_run(Path(d))) for d in run_dirs]
    fig, (ax_steps, ax_wall) = plt.subplots(1, 2, figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    thresholds = set()
    for run_dir, run in runs:
        evals = [r for r in run["rows"] if r.get("eval_return_mean") is not None]
        world = run["summary"].get("world_size") or run["config"].get("world_size")
        label = f"{run_dir.name}" + (f" (np={world})" if world else "")
        for ax, key in ((ax_steps, "env_steps"), (ax_wall, "wall_s")):
            line, = ax.plot([r[key] for r in evals], [r["eval_return_mean"] for r in evals], marker="o",
                            markersize=3, label=label)
            train = [r for r in run["rows"] if r.get("charts/episodic_return") is not None]
            ax.plot([r[key] for r in train], [r["charts/episodic_return"] for r in train], color=line.get_color(),
                    alpha=0.3, linewidth=1)
        threshold = run["summary"].get("reward_threshold")
        if threshold is not None:
            thresholds.add(threshold)
    for ax, xlabel in ((ax_steps, "global env steps"), (ax_wall, "wall clock (s)")):
        for t in sorted(thresholds):
            ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"solved ({t:g})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("return (greedy eval: dots; training episodes: faint)")
        ax.grid(alpha=0.3)
    ax_steps.legend(fontsize=8, loc="lower right")
    env_ids = sorted({run["config"].get("env_id", "?") for _, run in runs})
    fig.suptitle(f"hvd-dqn: {', '.join(env_ids)}")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi))
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out
