"""Whole training runs of the default config at np=1 and np=2, git revisions against this working tree,
interleaved: what a change to the loop, the learner or the distributed code does to a user's run. Prints
figures; asserts nothing.

    .venv/bin/python benchmarks/loop_speed.py --rev main [REV ...] [--np 1 2] [--rounds 2] [--set seed=31]

Each round runs every world size once on each side (each revision, then the working tree); the order of the
sides reverses from one round to the next, so a load that rises or falls during the call weighs on all of them.
Per run it prints the load average just before it and:

- ``wall_s``: the trainer's own clock, from setting up the run to its summary (summary.json's wall_s);
- ``first_row_s``: that clock at the first metrics row (log_every: the first learning phase's tracing and
  compilation are in it);
- ``steps_per_s``: global env steps per second from the first metrics row to the last (the steady rate);
- ``process_s``: launch to exit of the whole job (TensorFlow's import and horovodrun's start included);
- ``cpu_s``: user + system seconds of every process of the job (the operating system's accounting), which a
  busy machine disturbs much less than the wall clock;
- the replica checksums (a change that must keep training bit for bit keeps them);

then min / median / max of each figure per side and world size, and the median of the per-round ratios of the
working tree's figure to each revision's. A revision runs as ``git archive REV hvd_dqn``, extracted into a
temporary directory on PYTHONPATH; every side trains the same config file (this tree's, ``--config``) with this
venv's Python (``-m hvd_dqn.cli``: each side's own command) and horovodrun (``--mpi``: the controller of ``make
train``). Ctrl-C or SIGTERM ends every process the benchmark started (each run is a session of its own).

Not asv or pytest-benchmark: both time code inside one Python process, where a run here is a job of several
processes under a launcher; pytest-benchmark compares against runs saved earlier, not interleaved with the one in
hand, and asv builds an environment per commit (a Horovod build each) to time revisions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIGURES = ("wall_s", "first_row_s", "steps_per_s", "process_s", "cpu_s")
_sessions: set[int] = set()  # the running jobs' session ids, ended on Ctrl-C / SIGTERM


def _end_sessions() -> None:
    """SIGKILL every process of the sessions this benchmark started (launcher, mpirun and ranks alike)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in _sessions:
                proc.kill()
        except (OSError, psutil.Error):
            pass


def _on_signal(signum, frame):
    for sig in (signal.SIGINT, signal.SIGTERM):  # once: a second signal must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def checkout(rev: str, into: Path) -> tuple[Path, str]:
    """``rev``'s hvd_dqn package extracted into ``into``, and its short hash; a one-line error for an unknown
    revision."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        sys.exit(f"loop_speed: error: {rev!r} is not a git revision of {ROOT}")
    into.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", found.stdout.strip(), "hvd_dqn"], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        sys.exit(f"loop_speed: error: git archive {rev} hvd_dqn failed")
    return into, found.stdout.strip()


def command(np_: int, config: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    # the side's own CLI module: the venv's console script imports the installed version's entry point, which an
    # older revision's hvd_dqn.cli may not have
    cmd = [sys.executable, "-m", "hvd_dqn.cli", "train", "--config", str(config), "--run-dir", str(run_dir)]
    for item in overrides:
        cmd += ["--set", item]
    if np_ > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(np_), "--mpi", "-H", f"localhost:{np_}"] + cmd
    return cmd


def run_once(code: Path, np_: int, config: Path, run_dir: Path, overrides: list[str], timeout_s: float) -> dict:
    """One training job; its figures (module docstring), or its exit code and the tail of its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HVD_DQN_", "HOROVOD_TIMELINE"))}
    env.update(PYTHONPATH=str(code), TF_CPP_MIN_LOG_LEVEL="3")
    log_path = run_dir.with_suffix(".log")
    load = os.getloadavg()[0]
    start = time.monotonic()
    with open(log_path, "wb") as log:
        # its own session, in a neutral directory: nothing of this checkout is imported by the side under test
        proc = subprocess.Popen(
            command(np_, config, run_dir, overrides),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=run_dir.parent,
        )
    _sessions.add(proc.pid)
    try:
        status, usage = _wait(proc.pid, start + timeout_s)
    finally:
        _end_sessions()  # whatever the job left behind
        _sessions.discard(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    result = {"load": load, "process_s": time.monotonic() - start, "exit": proc.returncode}
    if usage is not None:
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
    if status is None or proc.returncode != 0 or not (run_dir / "summary.json").exists():
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        return {**result, "error": "timed out" if status is None else f"exit {proc.returncode}", "tail": tail}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "event" not in r]
    first, last = rows[0], rows[-1]
    steady = (
        (last["env_steps"] - first["env_steps"]) / (last["wall_s"] - first["wall_s"])
        if last["wall_s"] > first["wall_s"]
        else None
    )
    return {
        **result,
        "wall_s": summary["wall_s"],
        "first_row_s": first["wall_s"],
        "steps_per_s": steady,
        "checksums": summary["replica_checksums"],
        "env_steps": summary["env_steps"],
    }


def _wait(pid: int, deadline: float):
    """(wait status, resource usage of the job's waited-for processes), or (None, None) past the deadline."""
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() > deadline:
            _end_sessions()
            os.wait4(pid, 0)
            return None, None
        time.sleep(0.05)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def report(results: dict, sides: list[str], world_sizes: list[int]) -> None:
    """min / median / max per side and the median of the per-round ratios of the working tree (the last side) to
    each revision, as markdown tables; the checksums."""
    tree, revs = sides[-1], sides[:-1]
    print(
        "\nmin / median / max per side; tree/rev: the median of the per-round ratios of the working tree's figure "
        "to the revision's"
    )
    print("| np | figure | " + " | ".join(sides) + " | " + " | ".join(f"tree/{rev}" for rev in revs) + " |")
    print("| --- " * (2 + len(sides) + len(revs)) + "|")
    for np_ in world_sizes:
        for fig in FIGURES:
            cells = []
            for side in sides:
                values = [r[fig] for r in results[(side, np_)] if r.get(fig) is not None]
                cells.append(
                    " / ".join(_fmt(v) for v in (min(values), statistics.median(values), max(values)))
                    if values
                    else "-"
                )
            for rev in revs:
                ratios = [
                    b[fig] / a[fig]
                    for a, b in zip(results[(rev, np_)], results[(tree, np_)])
                    if a.get(fig) and b.get(fig) is not None
                ]
                cells.append(f"{statistics.median(ratios):.2f}" if ratios else "-")
            print(f"| {np_} | {fig} | " + " | ".join(cells) + " |")
    for np_ in world_sizes:
        sums = {
            side: sorted({tuple(r["checksums"]) for r in results[(side, np_)] if "checksums" in r}) for side in sides
        }
        print(f"np={np_} replica checksums: " + "; ".join(f"{side} {sums[side]}" for side in sides))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rev",
        dest="revs",
        nargs="+",
        required=True,
        help="the git revisions to time against this working tree (each is a side of its own)",
    )
    ap.add_argument("--np", dest="world_sizes", type=int, nargs="+", default=[1, 2], help="world sizes (default 1 2)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side and world size (default 2)")
    ap.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs" / "cartpole.yaml",
        help="the config every side trains (default configs/cartpole.yaml of this tree)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every side (repeatable), e.g. seed=31",
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take (default 1800)")
    ap.add_argument("--out", type=Path, help="append one JSON line per run to this file")
    ap.add_argument("--keep", action="store_true", help="keep the run dirs and logs (printed at the end)")
    args = ap.parse_args()
    if args.rounds < 1 or any(n < 1 for n in args.world_sizes):
        sys.exit("loop_speed: error: --rounds and --np need positive numbers")
    if not args.config.is_file():
        sys.exit(f"loop_speed: error: config file not found: {args.config}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)

    work = Path(tempfile.mkdtemp(prefix="loop_speed-"))
    code = {}
    for n, rev in enumerate(args.revs):
        path, short = checkout(rev, work / f"rev{n}")
        code[rev if rev == short else f"{rev} ({short})"] = path
    head = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    code[f"tree ({head})"] = ROOT
    sides = list(code)
    print(
        f"sides: {', '.join(sides)}; config {args.config}, overrides {args.overrides or 'none'}; "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    results = {(side, n): [] for side in sides for n in args.world_sizes}
    try:
        for rnd in range(args.rounds):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for np_ in args.world_sizes:
                for n, side in enumerate(order):
                    run_dir = work / f"np{np_}-round{rnd + 1}-{n}"
                    res = run_once(code[side], np_, args.config.resolve(), run_dir, args.overrides, args.timeout)
                    results[(side, np_)].append(res)
                    if args.out:
                        with open(args.out, "a") as out:
                            out.write(json.dumps({"side": side, "np": np_, "round": rnd + 1, **res}) + "\n")
                    figures = " ".join(f"{f} {_fmt(res.get(f))}" for f in FIGURES)
                    extra = (
                        f" checksums {res['checksums']}" if "checksums" in res else f" {res['error']}: {res['tail']}"
                    )
                    print(f"round {rnd + 1} np={np_} {side}: load {res['load']:.2f} | {figures} |{extra}", flush=True)
        report(results, sides, args.world_sizes)
    except KeyboardInterrupt as exc:
        _end_sessions()
        print(f"loop_speed: interrupted ({exc or 'SIGINT'}); every job it started is ended", file=sys.stderr)
        sys.exit(130)
    finally:
        if args.keep:
            print(f"run dirs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
