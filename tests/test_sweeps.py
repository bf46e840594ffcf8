"""A sweep's runs read together: the grouped learning curve (mean and min-max band), the results table, and
their command lines, on synthetic run dirs whose figures are known exactly."""

import json
import struct
from pathlib import Path

import pytest

from hvd_dqn import cli, sweeps
from hvd_dqn.config import Config


def make_run(root: Path, name: str, evals, summary=None, **config) -> Path:
    """A run dir as rank 0 leaves it: config.json, metrics.jsonl (evaluation rows (env_steps, wall_s, return)
    and a training row between them), and summary.json once finished."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env_id": "CartPole-v1", "seed": 0, **config}))
    rows = []
    for steps, wall, ret in evals:
        rows.append({"env_steps": steps - 50, "wall_s": wall - 0.5, "charts/episodic_return": 1.0})
        rows.append({"env_steps": steps, "wall_s": wall, "eval_return_mean": ret})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def finished(solved_steps, solved_wall, final, world_size=2, threshold=475.0):
    return {
        "world_size": world_size,
        "reward_threshold": threshold,
        "solved_env_steps": solved_steps,
        "solved_wall_s": solved_wall,
        "final_eval_return_mean": final,
    }


@pytest.fixture
def sweep(tmp_path):
    """Config "cp" over three seeds evaluating at the same env steps, config "lr" over two seeds that do not."""
    runs = tmp_path / "runs"
    make_run(
        runs,
        "cp-seed0",
        [(1000, 2.0, 10.0), (2000, 4.0, 200.0), (3000, 6.0, 500.0)],
        finished(3000, 6.0, 500.0),
        exp_name="cp",
        seed=0,
    )
    make_run(
        runs,
        "cp-seed1",
        [(1000, 3.0, 30.0), (2000, 5.0, 480.0), (3000, 7.0, 490.0)],
        finished(2000, 5.0, 490.0),
        exp_name="cp",
        seed=1,
    )
    make_run(
        runs,
        "cp-seed2",
        [(1000, 1.0, 20.0), (2000, 2.0, 100.0), (3000, 3.0, 120.0)],
        finished(None, None, 120.0),
        exp_name="cp",
        seed=2,
    )
    make_run(
        runs, "lr-seed0", [(1000, 1.0, 100.0), (3000, 3.0, 300.0)], finished(None, None, 300.0), exp_name="lr", seed=0
    )
    make_run(runs, "lr-seed1", [(2000, 1.0, 50.0), (4000, 2.0, 150.0)], None, exp_name="lr", seed=1)
    return runs


def test_runs_of_one_config_band_exactly_at_their_shared_env_steps(sweep):
    groups = sweeps.group(sweeps.read_runs(sorted(sweep.iterdir())))
    assert list(groups) == ["cp", "lr"] and [r["dir"].name for r in groups["cp"]] == [
        "cp-seed0",
        "cp-seed1",
        "cp-seed2",
    ]
    b = sweeps.band([sweeps.eval_curve(r["rows"]) for r in groups["cp"]])
    assert b.x == [1000, 2000, 3000] and b.runs == 3 and not b.interpolated and not b.cut
    assert b.mean == pytest.approx([20.0, 260.0, 370.0])
    assert b.low == [10.0, 100.0, 120.0] and b.high == [30.0, 480.0, 500.0]


def test_runs_evaluated_at_different_steps_are_interpolated_on_the_range_they_share(sweep):
    groups = sweeps.group(sweeps.read_runs(sorted(sweep.iterdir())))
    b = sweeps.band([sweeps.eval_curve(r["rows"]) for r in groups["lr"]])
    # lr-seed0 covers 1000-3000, lr-seed1 2000-4000: the grid is the steps of either run within 2000-3000.
    # At 2000: seed0 interpolated 200, seed1 50. At 3000: seed0 300, seed1 interpolated 100.
    assert b.x == [2000, 3000] and b.interpolated and b.cut
    assert b.mean == pytest.approx([125.0, 200.0])
    assert b.low == pytest.approx([50.0, 100.0]) and b.high == pytest.approx([200.0, 300.0])
    # the wall-clock band of "cp": seeds end at 6, 7 and 3 s and start at 2, 3 and 1 s, so the range all cover is
    # 3 s alone: seed0 interpolated between (2 s, 10) and (4 s, 200) is 105, seed1 30, seed2 120
    w = sweeps.band([sweeps.eval_curve(r["rows"], "wall_s") for r in groups["cp"]])
    assert w.x == [3.0] and w.interpolated and w.cut
    assert w.mean == pytest.approx([85.0]) and w.low == [30.0] and w.high == [120.0]


def test_no_shared_range_is_refused():
    with pytest.raises(ValueError, match="share no range"):
        sweeps.band([([1, 2], [0.0, 1.0]), ([3, 4], [0.0, 1.0])])


def test_a_resumed_run_counts_its_later_evaluation_at_a_repeated_step():
    rows = [
        {"env_steps": 100, "eval_return_mean": 1.0},
        {"env_steps": 200, "eval_return_mean": 2.0},
        {"env_steps": 200, "eval_return_mean": 3.0},
        {"env_steps": 250, "charts/episodic_return": 9.0},
    ]
    assert sweeps.eval_curve(rows) == ([100, 200], [1.0, 3.0])


def test_results_of_a_group_count_unsolved_runs_as_never(sweep):
    groups = sweeps.group(sweeps.read_runs(sorted(sweep.iterdir())))
    cp = sweeps.results(groups["cp"])
    # solved at 3000 and 2000 env steps, the third never: median of (2000, 3000, inf) = 3000
    assert cp == {
        "runs": 3,
        "unfinished": 0,
        "ranks": [2],
        "thresholds": [475.0],
        "solved": 2,
        "steps_to_threshold": 3000,
        "time_to_threshold": 6.0,
        "final_median": 490.0,
        "final_min": 120.0,
        "final_max": 500.0,
    }
    lr = sweeps.results(groups["lr"])
    assert (lr["runs"], lr["unfinished"], lr["solved"], lr["steps_to_threshold"]) == (1, 1, 0, float("inf"))


def test_table_command_prints_one_line_per_group(sweep, capsys):
    assert cli.main(["table", *map(str, sorted(sweep.iterdir()))]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "| group | runs | ranks | threshold | solved | env steps to threshold (median) "
        "| time to threshold, s (median) | final greedy return: median (min to max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        "| cp | 3 | 2 | 475 | 2/3 | 3,000 | 6.0 | 490.0 (120.0 to 500.0) |",
        "| lr | 1 (+1 unfinished) | 2 | 475 | 0/1 | never | never | 300.0 (300.0 to 300.0) |",
    ]
    assert err == f"hvd-dqn: {sweep / 'lr-seed1'}: not finished (no summary.json), not counted\n"


def test_table_groups_by_another_config_key(sweep, capsys):
    assert cli.main(["table", "--group-by", "seed", *map(str, sorted(sweep.iterdir()))]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(" | ")[0:2] for r in rows] == [
        ["| seed=0", "2"],
        ["| seed=1", "1 (+1 unfinished)"],
        ["| seed=2", "1"],
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no run dirs given (e.g. runs/*)"),
        (["{tmp}/nope"], "run dir not found: {tmp}/nope"),
        (["{runs}/cp-seed0", "{tmp}"], "{tmp}: no metrics.jsonl in it (is it a hvd-dqn run dir?)"),
        (
            ["--group-by", "colour", "{runs}/cp-seed0"],
            "--group-by 'colour': {runs}/cp-seed0's config.json has no such key",
        ),
    ],
)
def test_table_bad_input_is_one_line_exit_2(sweep, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, runs=sweep) for a in args]
    assert cli.main(["table", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"hvd-dqn: error: {message.format(tmp=tmp_path, runs=sweep)}\n"


def test_a_metrics_dir_without_config_is_not_a_run_dir(tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "metrics.jsonl").write_text("")
    assert cli.main(["table", str(odd)]) == 2
    assert capsys.readouterr().err == f"hvd-dqn: error: {odd}: no config.json in it (is it a hvd-dqn run dir?)\n"


def test_grouped_plot_is_a_png_and_says_where_it_interpolated(sweep, tmp_path, capsys):
    png = tmp_path / "groups.png"
    assert cli.main(["plot", "--group", *map(str, sorted(sweep.iterdir())), "-o", str(png)]) == 0
    out, err = capsys.readouterr()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1200, 450)
    assert out == f"wrote {png}\n"
    assert err.splitlines() == [
        "hvd-dqn: group lr: its runs evaluated at different global env steps; each run is interpolated linearly "
        "onto the 2 points where any of them evaluated (global env steps 2000 to 3000)",
        "hvd-dqn: group lr: drawn over global env steps 2000 to 3000, the range all 2 runs cover",
    ]


def test_group_by_needs_group(sweep, tmp_path, capsys):
    assert cli.main(["plot", "--group-by", "seed", str(sweep / "cp-seed0"), "-o", str(tmp_path / "x.png")]) == 2
    assert "--group-by KEY names the groups of --group" in capsys.readouterr().err


def test_a_config_file_names_its_runs(tmp_path):
    path = tmp_path / "cartpole-fast.yaml"
    path.write_text("env_id: CartPole-v1\n")
    assert Config.from_yaml(path).exp_name == "cartpole-fast"
    assert Config.from_yaml(path, ["exp_name=mine"]).exp_name == "mine"
    path.write_text("env_id: CartPole-v1\nexp_name: named\n")
    assert Config.from_yaml(path).exp_name == "named"
    assert Config(env_id="CartPole-v1").exp_name is None
