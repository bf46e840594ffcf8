"""A config at several world sizes and seeds: does it still learn at N ranks, and is the chain of updates shorter?
Prints, per N: runs solved, runs still at or above the threshold at the end, median env steps and median
sequential updates (per rank) to the threshold, median wall clock to the threshold and of the run, and the load
average the runs met. Asserts nothing.

    .venv/bin/python benchmarks/scaling.py --config configs/cartpole.yaml --np 1 2 4 8 16 --seeds 0 1 2 3 4 \
        [--set k=v ...] [--threshold X | --relative F] [--statistic eval|train] [--final-evals K] \
        [--out DIR] [--results FILE.jsonl] [--table-only]

One job at a time; N > 1 runs under ``horovodrun -np N --mpi -H localhost:N`` with OMPI_MCA_mpi_yield_when_idle=1,
so 8 or 16 ranks may share 2 cores (with HOROVOD_CYCLE_TIME=1 ms when oversubscribed): env steps, updates and
returns are exact for a seed and N whatever the load, wall-clock figures are not. Every finished run is appended
to ``--results`` (default OUT/scaling.jsonl) as one JSON line; a run already there (same config, overrides, N and
seed) is not run again, so a killed screen resumes where it stopped, and ``--table-only`` tabulates a results
file. Runs are grouped in the table by config and overrides. A run is judged by its greedy evaluations (the
final score the mean of the last ``--final-evals``), or with ``--statistic train`` by its training return at every
log row (the MinAtar paper's statistic: on a 10-episode evaluation every 25k steps, one lucky or unlucky
evaluation decides when a threshold is first reached).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_return import read_metrics, train_curve

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INF = float("inf")


def read_run(run_dir: Path) -> dict:
    """What one finished run dir recorded: every evaluation (env steps, greedy mean, updates per rank, wall s) and
    the training return curve (``train_curve``)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    return {
        "train_curve": train_curve(rows),
        "trainer_threshold": summary["reward_threshold"],
        "final_eval": summary["final_eval_return_mean"],
        "evals": [
            [r["env_steps"], r["eval_return_mean"], r["updates"], r["wall_s"]]
            for r in rows
            if r.get("eval_return_mean") is not None
        ],
        "updates": summary["updates"],
        "wall_s": summary["wall_s"],
        "replicas_equal": len(set(summary["replica_checksums"])) == 1,
        "replica_checksum": summary["replica_checksums"][0],
    }


def as_statistic(run: dict, statistic: str, final_evals: int = 1) -> dict:
    """``run`` judged by ``statistic``: "eval", its greedy evaluations, the final score the mean of the last
    ``final_evals`` of them; "train", its training return curve in their place (a run recorded without one reads
    it from its run dir, which must still exist), the final score the curve's last point."""
    if "failed" in run:
        return run
    if statistic == "train":
        curve = run.get("train_curve")
        if curve is None:
            curve = train_curve(read_metrics(Path(run["run_dir"])))
        return {**run, "evals": curve, "final_eval": curve[-1][1] if curve else None}
    last = [e[1] for e in run["evals"][-final_evals:]]
    final = statistics.fmean(last) if len(last) == final_evals else run["final_eval"]
    return {**run, "final_eval": final}


def judge(run: dict, threshold: float | None) -> dict:
    """Solved (the first evaluation at or above ``threshold``, the trainer's rule) and held (the final one too);
    ``threshold`` None: the one the trainer used (the config's reward_threshold, else the env spec's)."""
    threshold = run["trainer_threshold"] if threshold is None else threshold
    if threshold is None:  # an env with no threshold (MinAtar) and none given: nothing counts as solved
        return {
            "threshold": None,
            "solved_env_steps": None,
            "solved_updates": None,
            "solved_wall_s": None,
            "held": False,
        }
    hit = next((e for e in run["evals"] if e[1] >= threshold), None)
    final = run["final_eval"]
    return {
        "threshold": threshold,
        "solved_env_steps": hit and hit[0],
        "solved_updates": hit and hit[2],
        "solved_wall_s": hit and hit[3],
        "held": final is not None and final >= threshold,
    }


def _without_rule(overrides) -> tuple:
    return tuple(o for o in overrides if not o.startswith("scaling"))


def reference_final(rows: list[dict], config: str, overrides) -> float | None:
    """The median final evaluation of the N = 1 runs of ``config`` with these overrides but any scaling rule (at
    N = 1 every rule is the config as written, bit for bit); None if there are none."""
    finals = [
        r["final_eval"]
        for r in rows
        if "failed" not in r
        and r["np"] == 1
        and config_name(r["config"]) == config_name(config)
        and r["final_eval"] is not None
        and _without_rule(r["overrides"]) == _without_rule(overrides)
    ]
    return statistics.median(finals) if finals else None


def config_name(config: str) -> str:
    """A config by its file name: the same config run from another checkout (a worktree, a clone) is one group."""
    return Path(config).name


def run_key(config: str, overrides: list[str], np_: int, seed: int) -> tuple:
    return (config_name(config), tuple(overrides), np_, seed)


def run_one(config: Path, np_: int, seed: int, overrides: list[str], out: Path, timeout: float) -> dict:
    tag = "-".join(o.replace("=", "").replace("/", "_") for o in overrides)[:80]
    run_dir = out / f"{config.stem}{'-' + tag if tag else ''}-np{np_}-seed{seed}"
    n = 2
    while run_dir.exists():  # never train into (or delete) a dir this invocation did not create
        run_dir = run_dir.with_name(f"{run_dir.name.rsplit('~', 1)[0]}~{n}")
        n += 1
    # the CLI module of the code run (a worktree's too): the venv's console script imports the installed version's
    # entry point, which another checkout's hvd_dqn.cli may not have
    cmd = [sys.executable, "-m", "hvd_dqn.cli", "train", "--config", str(config), "--run-dir", str(run_dir)]
    cmd += ["--set", f"seed={seed}"]
    for o in overrides:
        cmd += ["--set", o]
    if np_ > 1:
        # -H localhost:N gives N slots, so mpirun oversubscribes the 2 cores without complaint
        cmd = [str(BIN / "horovodrun"), "-np", str(np_), "--mpi", "-H", f"localhost:{np_}"] + cmd
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        OMPI_MCA_mpi_yield_when_idle="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    if np_ > (os.cpu_count() or 1):
        # more ranks than cores: each rank's Horovod thread waking every 0.1 ms (hvd_dqn's default) takes the
        # cores from the ranks that compute; the gradients are one grouped allreduce, so the numbers are the same
        env.setdefault("HOROVOD_CYCLE_TIME", "1")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    # a session of its own: a timeout, Ctrl-C or SIGTERM ends horovodrun, mpirun and every rank together (SIGTERM
    # to horovodrun alone would leave mpirun and the ranks running)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    process_s = time.perf_counter() - t0
    base = {
        "config": str(config),
        "overrides": list(overrides),
        "np": np_,
        "seed": seed,
        "run_dir": str(run_dir),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "process_s": process_s,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or [""]
        return {**base, "failed": f"exit {proc.returncode}: {tail[0][:300]}"}
    return {**base, **read_run(run_dir)}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(rows: list[dict], threshold: float | None = None, final_bar: float | None = None) -> dict:
    """Figures for the runs of one N. Unsolved runs count as never (infinity), so a median is honest about them.
    ``final_bar``: count the runs whose final evaluation reaches it."""
    done = [{**r, **judge(r, threshold)} for r in rows if "failed" not in r]
    solved = lambda key: [r[key] if r["solved_env_steps"] is not None else INF for r in done]  # noqa: E731
    loads = [r[k][0] for r in rows for k in ("load_before", "load_after") if r.get(k)]
    return {
        "runs": len(done),
        "failed": len(rows) - len(done),
        "solved": sum(r["solved_env_steps"] is not None for r in done),
        "held": sum(r["held"] for r in done),
        "steps_to_threshold": _median(solved("solved_env_steps")),
        "updates_to_threshold": _median(solved("solved_updates")),
        "wall_to_threshold": _median(solved("solved_wall_s")),
        "wall": _median([r["wall_s"] for r in done]),
        "updates": _median([r["updates"] for r in done]),
        "replicas_equal": all(r["replicas_equal"] for r in done),
        "final": _median([r["final_eval"] for r in done if r["final_eval"] is not None]),
        "final_ok": None
        if final_bar is None
        else sum(r["final_eval"] is not None and r["final_eval"] >= final_bar for r in done),
        "load": (min(loads), max(loads)) if loads else (math.nan, math.nan),
    }


def _fmt(value: float, spec: str) -> str:
    if value == INF:
        return "never"
    return "-" if math.isnan(value) else format(value, spec)


def _load(load: tuple[float, float]) -> str:
    return "not recorded" if math.isnan(load[0]) else f"{load[0]:.1f}-{load[1]:.1f}"


def table(rows: list[dict], threshold: float | None = None, relative: float | None = None) -> str:
    """A markdown table per config + overrides, one line per N, with the ratios to N = 1 where it was run.
    ``relative``: the threshold is this fraction of N = 1's median final evaluation (``reference_final``), and the
    runs whose final evaluation reaches it are counted."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((config_name(r["config"]), tuple(r["overrides"])), []).append(r)
    out = []
    for (config, overrides), rs in groups.items():
        bar = None
        if relative is not None:
            ref = reference_final(rows, config, overrides)
            bar = None if ref is None else relative * ref
            threshold = bar
            named = "no N = 1 runs" if ref is None else f"{relative:g} x N = 1's median final {ref:g} = {bar:g}"
        else:
            found = sorted(
                {t for r in rs if "failed" not in r for t in [judge(r, threshold)["threshold"]] if t is not None}
            )
            named = ", ".join(format(t, "g") for t in found) or "none"
        out += [
            "",
            f"{Path(config).name} {' '.join('--set ' + o for o in overrides)}".rstrip() + f" (threshold {named})",
            "",
            "| N | runs | solved | held at end | final score (median) | final >= threshold "
            "| env steps to threshold (median) | x N=1 "
            "| updates per rank to threshold (median) | x N=1 | updates per rank in the run "
            "| wall s to threshold (median) | wall s of the run (median) | load avg 1 min (range) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        by_n = {n: summarize([r for r in rs if r["np"] == n], threshold, bar) for n in sorted({r["np"] for r in rs})}
        base = by_n.get(1)
        if base is None and relative is not None:  # the ratios against the reference runs of another group
            ref_rows = [
                r
                for r in rows
                if r["np"] == 1
                and config_name(r["config"]) == config
                and _without_rule(r["overrides"]) == _without_rule(overrides)
            ]
            base = summarize(ref_rows, threshold, bar) if ref_rows else None
        for n, s in by_n.items():

            def ratio(key, s=s, base=base):
                return _fmt(s[key] / base[key], ".2f") if base and 0 < base[key] < INF and s[key] < INF else "-"

            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            final_ok = "-" if s["final_ok"] is None else f"{s['final_ok']}/{s['runs']}"
            out.append(
                f"| {n} | {s['runs']}{failed} | {s['solved']}/{s['runs']} | {s['held']}/{s['runs']} "
                f"| {_fmt(s['final'], '.2f')} | {final_ok} "
                f"| {_fmt(s['steps_to_threshold'], ',.0f')} | {ratio('steps_to_threshold')} "
                f"| {_fmt(s['updates_to_threshold'], ',.0f')} | {ratio('updates_to_threshold')} "
                f"| {_fmt(s['updates'], ',.0f')} | {_fmt(s['wall_to_threshold'], '.1f')} | {_fmt(s['wall'], '.1f')} "
                f"| {_load(s['load'])} |"
            )
            if not s["replicas_equal"]:
                out[-1] += " replicas differ!"
    return "\n".join(out)


def judged_by(args) -> str:
    if args.statistic == "train":
        return "judged by the training return (the mean of the last 100 or more episodes at each log row)"
    last = "the last evaluation" if args.final_evals == 1 else f"the mean of the last {args.final_evals} evaluations"
    return f"judged by greedy evaluations; final score: {last}"


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cartpole.yaml")
    ap.add_argument("--np", type=int, nargs="+", default=[1, 2, 4, 8, 16], dest="nps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="greedy mean return that counts as solved (default: the one the trainer uses, the "
        "config's reward_threshold or else the env spec's)",
    )
    ap.add_argument(
        "--relative",
        type=float,
        default=None,
        metavar="F",
        help="the threshold is F times the median final evaluation of N = 1's runs of the same config "
        "(any scaling rule: at N = 1 they are one experiment); for envs with no threshold (MinAtar)",
    )
    ap.add_argument(
        "--statistic",
        choices=["eval", "train"],
        default="eval",
        help="judge runs by their greedy evaluations (default) or by their training return, the mean of the "
        "last 100 epsilon-greedy episodes at every log row (the MinAtar paper's curves; denser and less noisy)",
    )
    ap.add_argument(
        "--final-evals",
        type=int,
        default=1,
        metavar="K",
        help="with --statistic eval: a run's final score is the mean of its last K evaluations (default 1)",
    )
    ap.add_argument("--out", type=Path, default=None, help="where the run dirs are kept (default /tmp/hvd-dqn-scaling)")
    ap.add_argument("--results", type=Path, default=None, help="JSONL of every run (default OUT/scaling.jsonl)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    ap.add_argument("--table-only", action="store_true", help="only print the table of --results")
    args = ap.parse_args(argv)
    # SIGTERM (kill, a batch system) as Ctrl-C: run_one's handler then ends the run's whole session, which its
    # ranks would otherwise outlive
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if any(n < 1 for n in args.nps):
        ap.error("--np: world sizes must be at least 1")
    if args.final_evals < 1:
        ap.error("--final-evals: at least 1")
    out = args.out or Path("/tmp/hvd-dqn-scaling")
    results = args.results or out / "scaling.jsonl"
    if args.table_only:
        rows = read_results(results)
        if not rows:
            print(f"scaling.py: error: no runs in {results}", file=sys.stderr)
            return 2
        print(judged_by(args))
        print(table([as_statistic(r, args.statistic, args.final_evals) for r in rows], args.threshold, args.relative))
        return 0
    if not args.config.is_file():
        print(f"scaling.py: error: config file not found: {args.config}", file=sys.stderr)
        return 2
    config = args.config.resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = {
        run_key(r["config"], r["overrides"], r["np"], r["seed"]) for r in read_results(results) if "failed" not in r
    }
    print(f"load average before: {os.getloadavg()[0]:.2f}  (run dirs in {out}, results in {results})", flush=True)
    # seeds outer, world sizes inner: a load that comes and goes falls on every N alike
    for seed in args.seeds:
        for np_ in args.nps:
            if run_key(str(config), args.overrides, np_, seed) in done:
                continue
            row = run_one(config, np_, seed, args.overrides, out, args.timeout)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if "failed" in row:
                print(f"N={np_} seed={seed}: {row['failed']}", flush=True)
                continue
            j = judge(row, args.threshold)
            final = "-" if row["final_eval"] is None else f"{row['final_eval']:.1f}"
            print(
                f"N={np_} seed={seed}: solved at {j['solved_env_steps']} steps / {j['solved_updates']} updates, "
                f"final {final}, {row['wall_s']:.0f} s",
                flush=True,
            )
    print(judged_by(args))
    rows = [as_statistic(r, args.statistic, args.final_evals) for r in read_results(results)]
    print(table(rows, args.threshold, args.relative))
    return 0


if __name__ == "__main__":
    sys.exit(main())
