"""Learning curves from run dirs: greedy evaluation return against global env steps and against wall clock, one
line per run, with a star at the evaluation that chose the run's best/, or (``group``) one mean line and min-max
band per group of runs (hvd_dqn.sweeps)."""

from __future__ import annotations

from pathlib import Path

from hvd_dqn import rundir, sweeps
from hvd_dqn.errors import UserError


def plot_runs(
    run_dirs: list[Path],
    out: Path,
    width_px: int = 1200,
    height_px: int = 450,
    dpi: int = 100,
    group_by: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write the PNG ``out``. ``group_by``: a config key (``exp_name``: the config's name) whose runs are drawn
    as one group; what the caller should tell the user about a group (interpolated, cut, left out) is appended
    to ``notes``."""
    out = Path(out)
    notes = [] if notes is None else notes
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; name the PNG file to write, e.g. {out / 'curves.png'}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sweeps.read_runs(run_dirs) if group_by else [sweeps.read_run(Path(d)) for d in run_dirs]
    notes.extend(note for run in runs for note in run["notes"])
    fig, (ax_steps, ax_wall) = plt.subplots(1, 2, figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    axes = ((ax_steps, "env_steps"), (ax_wall, "wall_s"))
    if group_by:
        _draw_groups(sweeps.group(runs, group_by), axes, notes)
        ylabel, title = "greedy eval return", " (each group: the mean of its runs, the band from lowest to highest)"
    else:
        _draw_runs(runs, axes)
        ylabel, title = "return (greedy eval: dots; training episodes: faint)", ""
    thresholds = {
        run["summary"]["reward_threshold"] for run in runs if run["summary"].get("reward_threshold") is not None
    }
    for ax, xlabel in ((ax_steps, "global env steps"), (ax_wall, "wall clock (s)")):
        for t in sorted(thresholds):
            ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"solved ({t:g})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_steps.legend(fontsize=8, loc="lower right")
    env_ids = sorted({run["config"].get("env_id", "?") for run in runs})
    fig.suptitle(f"hvd-dqn: {', '.join(env_ids)}{title}")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi))
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out


def _draw_runs(runs, axes) -> None:
    for run in runs:
        evals = [r for r in run["rows"] if r.get("eval_return_mean") is not None]
        world = run["summary"].get("world_size") or run["config"].get("world_size")
        label = f"{run['dir'].name}" + (f" (np={world})" if world else "")
        for ax, key in axes:
            (line,) = ax.plot(
                [r[key] for r in evals], [r["eval_return_mean"] for r in evals], marker="o", markersize=3, label=label
            )
            train = [r for r in run["rows"] if r.get("charts/episodic_return") is not None]
            ax.plot(
                [r[key] for r in train],
                [r["charts/episodic_return"] for r in train],
                color=line.get_color(),
                alpha=0.3,
                linewidth=1,
            )
            best = run["best"]
            if best.get(key) is not None:
                ax.plot(
                    [best[key]],
                    [best["eval_return_mean"]],
                    marker="*",
                    markersize=14,
                    linestyle="none",
                    color=line.get_color(),
                    markeredgecolor="black",
                    label=f"{label}: best/",
                )


def _draw_groups(groups, axes, notes: list[str]) -> None:
    for name, runs in groups.items():
        with_evals = []
        for run in runs:
            if sweeps.eval_curve(run["rows"])[0]:
                with_evals.append(run)
            else:
                notes.append(f"{run['dir']}: no evaluation yet, left out of group {name}")
        if not with_evals:
            continue
        color = None
        for ax, key in axes:
            try:
                b = sweeps.band([sweeps.eval_curve(r["rows"], key) for r in with_evals])
            except ValueError as exc:
                notes.append(f"group {name} ({key}): {exc}; not drawn")
                continue
            how = [f"mean of {b.runs} run{'s' * (b.runs > 1)}"] + (["interpolated"] if b.interpolated else [])
            (line,) = ax.plot(b.x, b.mean, marker="o", markersize=3, color=color, label=f"{name}: {', '.join(how)}")
            color = line.get_color()
            ax.fill_between(b.x, b.low, b.high, color=color, alpha=0.2, linewidth=0)
            if key != "env_steps":  # runs never evaluate at the same second: the wall-clock band is always interpolated
                continue
            what = "global env steps"
            if b.interpolated:
                notes.append(
                    f"group {name}: its runs evaluated at different {what}; each run is interpolated "
                    f"linearly onto the {len(b.x)} points where any of them evaluated ({what} "
                    f"{b.x[0]:g} to {b.x[-1]:g})"
                )
            if b.cut:
                notes.append(
                    f"group {name}: drawn over {what} {b.x[0]:g} to {b.x[-1]:g}, the range all {b.runs} runs cover"
                )
