"""CartPole-v1 on the default config at np=1 and np=2: wall clock and env steps to a greedy mean of 475,
final return, env steps/s and updates/s per rank, peak memory per rank. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/cartpole.py [--seeds 0 1 2] [--np 1 2] [--controller mpi|gloo] [--set k=v ...]

Runs one job at a time (a 2-core machine measures nothing useful with two jobs at once). np=2 uses horovodrun
with the MPI controller and OMPI_MCA_mpi_yield_when_idle=1, the fastest setting measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_one(np_: int, seed: int, controller: str, overrides: list[str], out: Path) -> dict:
    run_dir = out / f"np{np_}-seed{seed}"
    cmd = [
        str(BIN / "hvd-dqn"),
        "train",
        "--config",
        str(ROOT / "configs" / "cartpole.yaml"),
        "--run-dir",
        str(run_dir),
        "--set",
        f"seed={seed}",
    ]
    for o in overrides:
        cmd += ["--set", o]
    if np_ > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(np_), f"--{controller}"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_MCA_mpi_yield_when_idle="1", PYTHONPATH=str(ROOT))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--np", type=int, nargs="+", default=[1, 2], dest="nps")
    ap.add_argument("--controller", choices=["mpi", "gloo"], default="mpi")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hvd-dqn-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f}  (run dirs in {out})")
    header = (
        "np",
        "seed",
        "solved_s",
        "solved_steps",
        "final_eval",
        "wall_s",
        "steps/s/rank",
        "updates/s",
        "peak_MB/rank",
    )
    print(" | ".join(header))
    fmt = lambda v, f: "never" if v is None else format(v, f)  # noqa: E731
    solved = {np_: [] for np_ in args.nps}
    # seeds outer, world sizes inner: a load that comes and goes on a shared machine falls on every np alike
    for seed in args.seeds:
        for np_ in args.nps:
            s = run_one(np_, seed, args.controller, args.overrides, out)
            solved[np_].append(s["solved_wall_s"])
            print(
                " | ".join(
                    [
                        str(np_),
                        str(seed),
                        fmt(s["solved_wall_s"], ".1f"),
                        fmt(s["solved_env_steps"], "d"),
                        fmt(s["final_eval_return_mean"], ".1f"),
                        f"{s['wall_s']:.1f}",
                        f"{s['env_steps_per_s'] / s['world_size']:.0f}",
                        f"{s['updates_per_s']:.0f}",
                        "/".join(f"{m:.0f}" for m in s["peak_rss_mb"]),
                    ]
                ),
                flush=True,
            )
    medians = {}
    for np_, times in solved.items():
        # an unsolved seed counts as never, so the median is honest about failures
        medians[np_] = statistics.median(t if t is not None else float("inf") for t in times)
        print(
            f"np={np_}: solved in {sum(t is not None for t in times)}/{len(times)} seeds; "
            f"median time to 475: {fmt(None if medians[np_] == float('inf') else medians[np_], '.1f')} s"
        )
    if 1 in medians and len(medians) > 1:
        for np_, m in medians.items():
            if np_ != 1:
                print(f"median time to 475, np={np_} / np=1: {m / medians[1]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
