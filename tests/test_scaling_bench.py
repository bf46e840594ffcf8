"""benchmarks/scaling.py's bookkeeping: how a run is judged and how runs of one N are summarised."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import ROOT, run, started

sys.path.insert(0, str(ROOT / "benchmarks"))
import scaling  # noqa: E402


def _run(np_, seed, evals, final, updates=100, wall=10.0, threshold=475.0, overrides=()):
    return {
        "config": "/c/cartpole.yaml",
        "overrides": list(overrides),
        "np": np_,
        "seed": seed,
        "trainer_threshold": threshold,
        "final_eval": final,
        "evals": evals,
        "updates": updates,
        "wall_s": wall,
        "replicas_equal": True,
        "load_before": [1.0, 0, 0],
        "load_after": [3.0, 0, 0],
    }


def test_judge_takes_the_first_evaluation_at_or_above_the_threshold():
    r = _run(1, 0, [[2500, 400.0, 10, 1.0], [5000, 475.0, 20, 2.0], [7500, 500.0, 30, 3.0]], final=300.0)
    j = scaling.judge(r, None)
    assert (j["solved_env_steps"], j["solved_updates"], j["solved_wall_s"], j["held"]) == (5000, 20, 2.0, False)
    # another threshold, judged again from the recorded evaluations
    j = scaling.judge(r, 250.0)
    assert (j["solved_env_steps"], j["solved_updates"], j["held"], j["threshold"]) == (2500, 10, True, 250.0)
    assert scaling.judge(r, 501.0)["solved_env_steps"] is None


def test_summary_counts_unsolved_runs_as_never_in_the_medians():
    rows = [
        _run(8, 0, [[1000, 500.0, 4, 1.0]], final=500.0),
        _run(8, 1, [[3000, 480.0, 12, 3.0]], final=100.0),
        _run(8, 2, [[1000, 100.0, 4, 1.0]], final=100.0),
        {
            "config": "/c/cartpole.yaml",
            "overrides": [],
            "np": 8,
            "seed": 3,
            "failed": "exit 1: boom",
            "load_before": [2.0, 0, 0],
            "load_after": [2.5, 0, 0],
        },
    ]
    s = scaling.summarize(rows)
    assert (s["runs"], s["failed"], s["solved"], s["held"]) == (3, 1, 2, 1)
    assert (s["steps_to_threshold"], s["updates_to_threshold"], s["wall_to_threshold"]) == (3000, 12, 3.0)
    assert s["load"] == (1.0, 3.0)
    rows[0]["evals"] = [[1000, 10.0, 4, 1.0]]  # now two of three never solved: the median is never
    assert scaling.summarize(rows)["steps_to_threshold"] == math.inf


def test_table_gives_the_ratios_to_one_rank_per_config_and_overrides():
    rows = (
        [_run(1, s, [[4000, 500.0, 400, 1.0]], final=500.0) for s in (0, 1)]
        + [_run(8, s, [[5000, 500.0, 80, 1.0]], final=500.0) for s in (0, 1)]
        + [_run(8, 0, [[1000, 500.0, 4, 1.0]], final=500.0, overrides=["learning_rate=0.1"])]
    )
    text = scaling.table(rows)
    assert "| 8 | 2 | 2/2 | 2/2 | 500.00 | - | 5,000 | 1.25 | 80 | 0.20 |" in text
    assert "cartpole.yaml --set learning_rate=0.1 (threshold 475)" in text
    assert text.count("| N |") == 2


def test_relative_threshold_is_a_fraction_of_one_rank_s_median_final_whatever_the_rule():
    """MinAtar has no reward threshold: a run is judged against 0.9 x N = 1's median final evaluation, and the N = 1
    runs of the config (under any scaling rule: one experiment at N = 1) are the reference of every rule's group."""
    rows = [
        _run(1, s, [[25000, f, 100, 1.0], [50000, f + 2, 200, 2.0]], final=f + 2, threshold=None)
        for s, f in ((0, 2.0), (1, 4.0), (2, 6.0))
    ] + [
        _run(8, s, [[25000, f, 10, 1.0], [50000, f, 20, 2.0]], final=f, threshold=None, overrides=["scaling=sqrt"])
        for s, f in ((0, 5.0), (1, 3.0))
    ]
    assert scaling.judge(rows[0], None)["solved_env_steps"] is None  # no threshold at all: never solved
    assert scaling.reference_final(rows, "cartpole.yaml", ["scaling=sqrt"]) == 6.0
    text = scaling.table(rows, relative=0.9)
    assert "cartpole.yaml --set scaling=sqrt (threshold 0.9 x N = 1's median final 6 = 5.4)" in text
    # N = 1: finals 4, 6, 8 (2 of 3 at >= 5.4); 5.4 first reached never, at 50k and at 25k steps (median 50k)
    assert "| 1 | 3 | 2/3 | 2/3 | 6.00 | 2/3 | 50,000 | 1.00 | 200 | 1.00 |" in text
    # N = 8 under sqrt: finals 5 and 3 below 5.4, never solved; its ratios are taken against N = 1's group
    assert "| 8 | 2 | 0/2 | 0/2 | 4.00 | 0/2 | never | - | never | - |" in text


def test_table_only_resumes_nothing_and_a_missing_results_file_is_one_line_exit_2(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(_run(1, 0, [[4000, 500.0, 400, 1.0]], final=500.0)) + "\n")
    proc = run([sys.executable, ROOT / "benchmarks" / "scaling.py", "--table-only", "--results", results])
    assert proc.returncode == 0, proc.stderr
    assert "| 1 | 1 | 1/1 | 1/1 | 500.00 | - | 4,000 | 1.00 | 400 | 1.00 |" in proc.stdout
    proc = run([sys.executable, ROOT / "benchmarks" / "scaling.py", "--table-only", "--results", tmp_path / "no"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no runs in" in proc.stderr


def test_sigterm_ends_the_benchmark_and_the_run_it_started(tmp_path):
    """The run is in a session of its own (so that a timeout ends every rank); SIGTERM to the benchmark must end
    that session too, not leave the run training."""
    with started(
        [
            sys.executable,
            ROOT / "benchmarks" / "scaling.py",
            "--np",
            "1",
            "--seeds",
            "0",
            "--set",
            "total_env_steps=10000000",
            "--out",
            tmp_path / "runs",
            "--results",
            tmp_path / "r.jsonl",
        ],
        stderr=subprocess.PIPE,
    ) as bench:
        deadline = time.monotonic() + 60
        children = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = [p.pid for p in psutil.Process(bench.pid).children()]
        assert len(children) == 1, "the benchmark started no run"
        (child,) = children
        try:
            bench.send_signal(signal.SIGTERM)
            assert bench.wait(timeout=30) == 128 + signal.SIGTERM
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not Path(f"/proc/{child}").exists(), "the run outlived the benchmark"
        finally:  # a failing check must not leave the run behind either: it is in a session of its own
            if Path(f"/proc/{child}").exists():
                os.killpg(child, signal.SIGKILL)
    assert not (tmp_path / "r.jsonl").exists()  # a killed run is not recorded as a result


def test_train_return_goes_back_whole_rows_to_100_episodes():
    import train_return

    rows = [
        {"env_steps": 5000, "charts/episodic_return": 1.0, "charts/episodes": 80},
        {"env_steps": 10000, "charts/episodic_return": None, "charts/episodes": 0},
        {"env_steps": 15000, "charts/episodic_return": 4.0, "charts/episodes": 30},
        {"env_steps": 20000, "charts/episodic_return": 6.0, "charts/episodes": 90},
    ]
    assert train_return.trailing_mean(rows, 15000, 100) == ((80 * 1.0 + 30 * 4.0) / 110, 110)
    assert train_return.trailing_mean(rows, 20000, 100) == ((30 * 4.0 + 90 * 6.0) / 120, 120)
    assert train_return.trailing_mean(rows, 20000, 90) == (6.0, 90)
    assert train_return.trailing_mean(rows, 10000, 100) is None


def test_a_run_judged_by_its_training_return_or_the_mean_of_its_last_evaluations(tmp_path):
    metrics = [
        {"env_steps": 5000, "updates": 10, "wall_s": 1.0, "charts/episodic_return": 1.0, "charts/episodes": 60},
        {"env_steps": 10000, "updates": 20, "wall_s": 2.0, "charts/episodic_return": 3.0, "charts/episodes": 60},
        {"env_steps": 10000, "eval_return_mean": 9.0},  # an evaluation row: no training episodes
        {"env_steps": 15000, "updates": 30, "wall_s": 3.0, "charts/episodic_return": 5.0, "charts/episodes": 40},
    ]
    curve = scaling.train_curve(metrics)
    assert curve == [[10000, 2.0, 20, 2.0], [15000, (60 * 3.0 + 40 * 5.0) / 100, 30, 3.0]]
    run_ = _run(1, 0, [[5000, 2.0, 10, 1.0], [10000, 9.0, 20, 2.0], [15000, 4.0, 30, 3.0]], final=4.0)
    assert scaling.as_statistic(run_, "eval")["final_eval"] == 4.0
    assert scaling.as_statistic(run_, "eval", final_evals=2)["final_eval"] == 6.5
    judged = scaling.as_statistic({**run_, "train_curve": curve}, "train")
    assert (judged["evals"], judged["final_eval"]) == (curve, 3.8)
    assert scaling.judge(judged, 3.0)["solved_env_steps"] == 15000
    # a run recorded before the curve was: read from its run dir
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    assert scaling.as_statistic({**run_, "run_dir": str(tmp_path)}, "train")["evals"] == curve
