"""Where the test suite's time goes, per test file: wall seconds, CPU seconds (pytest's own and its reaped
children's), and the Python processes the file started with their CPU seconds. Reads the files that a suite run
with HVD_DQN_SUITE_PROFILE=DIR writes (tests/conftest.py):

    HVD_DQN_SUITE_PROFILE=/tmp/prof make test PYTEST_ARGS="-ra --durations=0"
    .venv/bin/python tools/suite_profile.py /tmp/prof

A process that a signal killed wrote no row of its own (its CPU is still in its file's children_cpu_s when its
parent reaped it)."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _kind(argv: list[str]) -> str:
    """A process's role, from its command line: horovodrun, a rank's hvd-dqn, a `python -c` probe, ..."""
    words = " ".join(argv)
    for key in ("horovodrun", "hvd-dqn", "hvd_dqn.cli", "mp_", "probe"):
        if key in words:
            return {"hvd_dqn.cli": "hvd-dqn", "mp_": "tests/mp_*"}.get(key, key)
    if "-c" in argv:  # the option itself, not a word such as --config
        return "python -c"
    return Path(argv[0]).name if argv else "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="the HVD_DQN_SUITE_PROFILE dir of a suite run")
    args = ap.parse_args(argv)
    files: dict[str, dict] = collections.defaultdict(lambda: collections.Counter())
    for row in _rows(args.dir / "tests.jsonl"):
        f = files[row["test"].split("::")[0]]
        f["tests"] += 1
        f["wall_s"] += row["wall_s"]
        f["cpu_s"] += row["cpu_s"] + row["children_cpu_s"]
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in _rows(args.dir / "processes.jsonl"):
        name = row["test"].split("::")[0] or "(outside a test)"
        files[name]["procs"] += 1
        files[name]["procs_cpu_s"] += row["cpu_s"]
        kinds[_kind(row["argv"])]["n"] += 1
        kinds[_kind(row["argv"])]["cpu_s"] += row["cpu_s"]
    total = collections.Counter()
    print(f"{'file':<40} {'tests':>5} {'wall_s':>8} {'cpu_s':>8} {'cpu/wall':>8} {'procs':>5} {'procs_cpu_s':>11}")
    for name, f in sorted(files.items(), key=lambda kv: -kv[1]["wall_s"]):
        total.update(f)
        ratio = f["cpu_s"] / f["wall_s"] if f["wall_s"] else 0.0
        print(
            f"{name:<40} {f['tests']:>5} {f['wall_s']:>8.0f} {f['cpu_s']:>8.0f} {ratio:>8.2f} {f['procs']:>5} "
            f"{f['procs_cpu_s']:>11.0f}"
        )
    print(
        f"{'total':<40} {total['tests']:>5} {total['wall_s']:>8.0f} {total['cpu_s']:>8.0f} "
        f"{total['cpu_s'] / max(total['wall_s'], 1e-9):>8.2f} {total['procs']:>5} {total['procs_cpu_s']:>11.0f}"
    )
    print()
    print(f"{'process kind':<20} {'n':>5} {'cpu_s':>8} {'cpu_s each':>10}")
    for kind, c in sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"]):
        print(f"{kind:<20} {c['n']:>5} {c['cpu_s']:>8.0f} {c['cpu_s'] / c['n']:>10.1f}")


if __name__ == "__main__":
    main()
