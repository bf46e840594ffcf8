"""``RUN/best/``: the best evaluated policy, kept whenever an evaluation beats the best so far (issue 32, item 2).
It holds the policy, the evaluation that chose it and the run's config; it is replaced whole, a link in its place
is removed as a link, a failed write leaves the earlier one; ``evaluate``, ``export`` and ``plot`` take it, the
summary names it, a resumed run goes on from it, and the final policy stays where it is. Two ranks:
tests/test_multiproc.py (test_cli_two_ranks_trains_in_lockstep)."""

import json
import shutil

import numpy as np
import pytest

from hvd_dqn import Config, Trainer, best, cli, rundir, sweeps

TINY = dict(
    env_id="CartPole-v1",
    seed=2,
    total_env_steps=1500,
    hidden_sizes=(16, 16),
    learning_starts=300,
    train_every=100,
    updates_per_train=10,
    target_update_every=20,
    eval_every=300,
    eval_episodes=3,
    log_every=300,
    batch_size=32,
    replay_capacity=2000,
    checkpoint_every=750,
    keep_checkpoints=2,
)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _first_best(rows):
    """(env_steps, mean) of the first evaluation with the highest mean: what best/ must hold."""
    evals = [(r["env_steps"], r["eval_return_mean"]) for r in rows if "eval_return_mean" in r]
    top = max(mean for _, mean in evals)
    return next(e for e in evals if e[1] == top), evals


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("best") / "run"
    summary = Trainer(Config(**TINY), run_dir=run_dir).train()
    return run_dir, summary


def test_best_holds_the_highest_evaluation_and_the_summary_names_it(trained):
    run_dir, summary = trained
    (step, mean), evals = _first_best(_rows(run_dir))
    assert [s for s, _ in evals] == [300, 600, 900, 1200, 1500]
    # seed 2 falls after its best evaluation (10.3 at 900, 9.0 at the end): the final policy is not the best one
    # (np=1 is deterministic)
    assert step == 900 and evals[-1][1] < mean, evals
    meta = json.loads((run_dir / "best" / "eval.json").read_text())
    assert meta["format"] == "hvd-dqn-best" and (meta["env_steps"], meta["eval_return_mean"]) == (step, mean)
    assert meta["eval_episodes"] == 3 and meta["updates"] == next(
        r["updates"] for r in _rows(run_dir) if r["env_steps"] == step
    )
    assert (summary["best_dir"], summary["best_env_steps"], summary["best_eval_return_mean"]) == (
        str(run_dir / "best"),
        step,
        mean,
    )
    assert json.loads((run_dir / "summary.json").read_text())["best_env_steps"] == step
    assert (run_dir / "best" / "config.json").read_bytes() == (run_dir / "config.json").read_bytes()
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["config.json", "eval.json", "q_network.keras"]
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]  # no temporary dir left behind
    # the final policy stays where it is, and it is another network than the best one
    import tf_keras

    obs = np.array([[0.01, -0.02, 0.03, 0.04], [0.1, 0.2, -0.1, -0.3]], np.float32)
    final = tf_keras.models.load_model(run_dir / "q_network.keras")(obs).numpy()
    kept = tf_keras.models.load_model(run_dir / "best" / "q_network.keras")(obs).numpy()
    assert not np.array_equal(final, kept)


def test_evaluate_export_and_plot_take_best(trained, tmp_path, capsys):
    run_dir, _ = trained
    (step, mean), _ = _first_best(_rows(run_dir))
    assert cli.main(["evaluate", str(run_dir / "best"), "--episodes", "2"]) == 0
    assert capsys.readouterr().out.startswith("CartPole-v1: 2 episodes, mean ")
    out = tmp_path / "policy"
    assert cli.main(["export", str(run_dir / "best"), str(out)]) == 0
    assert json.loads((out / "export.json").read_text())["from_run"] == str(run_dir / "best")
    assert (out / "q_network.keras").read_bytes() == (run_dir / "best" / "q_network.keras").read_bytes()
    # an export of best/ into the run dir is refused as one of the run itself is
    assert cli.main(["export", str(run_dir / "best"), str(run_dir / "exported")]) == 2
    assert "is inside the run dir" in capsys.readouterr().err and not (run_dir / "exported").exists()

    png = tmp_path / "curves.png"
    assert cli.main(["plot", str(run_dir / "best"), "-o", str(png)]) == 0 and png.stat().st_size > 10_000
    run = sweeps.read_run(run_dir / "best")  # best/ reads as its run, with the evaluation that chose it
    assert run["dir"] == run_dir and (run["best"]["env_steps"], run["best"]["eval_return_mean"]) == (step, mean)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hvd_dqn import plotting

    fig, axes = plt.subplots(1, 2)
    plotting._draw_runs([run], ((axes[0], "env_steps"), (axes[1], "wall_s")))
    stars = [line for line in axes[0].lines if line.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [step] and list(stars[0].get_ydata()) == [mean]
    plt.close(fig)


def test_a_resumed_run_goes_on_from_the_best_so_far(trained, tmp_path):
    """best/ says 1e9 (as if an earlier evaluation had been that good): no evaluation of the resumed run beats
    it, so best/ stays byte for byte and the summary names it. The metrics file lost its last newline (a kill
    mid-write): the resumed run's rows still start lines of their own."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    meta = json.loads((run_dir / "best" / "eval.json").read_text())
    meta.update(eval_return_mean=1e9, env_steps=600)
    (run_dir / "best" / "eval.json").write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in (run_dir / "best").iterdir()}
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text().rstrip("\n"))
    summary = Trainer(Config(**{**TINY, "total_env_steps": 2100}), run_dir=run_dir, resume=True).train()
    assert (summary["best_env_steps"], summary["best_eval_return_mean"]) == (600, 1e9)
    assert {p.name: p.read_bytes() for p in (run_dir / "best").iterdir()} == before
    rows = _rows(run_dir)  # every line is a row
    assert [r["env_steps"] for r in rows] == [300, 600, 900, 1200, 1500, 1500, 1800, 2100]
    assert rows[5]["event"] == "resumed"


# ---------------------------------------------------------------------------------------------- the writer itself
def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"env_id": "CartPole-v1"}\n')
    (run_dir / "metrics.jsonl").write_text("")
    return run_dir


def _model(content):
    return lambda path: path.write_bytes(content)


def test_only_a_better_evaluation_replaces_best(tmp_path):
    run_dir = _run_dir(tmp_path)
    kept = best.BestPolicy(run_dir, writer=True)
    for steps, mean, model in ((100, 10.0, b"a"), (200, 30.0, b"b"), (300, 30.0, b"c"), (400, 20.0, b"d")):
        evaluation = {"env_steps": steps, "eval_return_mean": mean, "eval_episodes": 2}
        if kept.improves(evaluation):
            kept.keep(evaluation, _model(model))
    # 30 at step 200 is kept: 30 again (a tie) and 20 do not beat it
    assert (run_dir / "best" / "q_network.keras").read_bytes() == b"b"
    assert best.read(run_dir) == {**kept.evaluation, "written_at": best.read(run_dir)["written_at"]}
    assert (kept.evaluation["env_steps"], kept.summary()["best_eval_return_mean"]) == (200, 30.0)
    assert sorted(p.name for p in run_dir.iterdir()) == ["best", "config.json", "metrics.jsonl"]
    # a rank that does not write tracks the same decision and writes nothing
    other = best.BestPolicy(tmp_path / "nowhere", writer=False)
    assert other.improves({"eval_return_mean": 1.0}) and not other.improves({"eval_return_mean": float("nan")})
    other.keep({"env_steps": 1, "eval_return_mean": 1.0}, _model(b"x"))
    assert other.evaluation["eval_return_mean"] == 1.0 and not (tmp_path / "nowhere").exists()


def test_a_failed_write_leaves_the_earlier_best_and_the_bar(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    kept = best.BestPolicy(run_dir, writer=True)
    kept.keep({"env_steps": 100, "eval_return_mean": 10.0}, _model(b"a"))

    def full_disk(path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    kept.keep({"env_steps": 200, "eval_return_mean": 50.0}, full_disk)
    assert capsys.readouterr().err == (
        f"hvd-dqn: could not write {run_dir / 'best'} (No space left on device); the "
        f"best policy so far is kept as it was, training goes on\n"
    )
    assert (run_dir / "best" / "q_network.keras").read_bytes() == b"a" and kept.evaluation["env_steps"] == 100
    assert sorted(p.name for p in run_dir.iterdir()) == ["best", "config.json", "metrics.jsonl"]


def test_a_link_in_the_place_of_best_is_removed_and_never_followed(tmp_path):
    run_dir = _run_dir(tmp_path)
    elsewhere = tmp_path / "shared-models"
    elsewhere.mkdir()
    (elsewhere / "eval.json").write_text(json.dumps({"format": "hvd-dqn-best", "eval_return_mean": 1e9}))
    (elsewhere / "q_network.keras").write_bytes(b"someone else's")
    (run_dir / "best").symlink_to(elsewhere)
    kept = best.BestPolicy(run_dir, writer=True)
    kept.resume()
    assert kept.evaluation == {}  # not read through the link
    kept.keep({"env_steps": 100, "eval_return_mean": 10.0}, _model(b"ours"))
    assert not (run_dir / "best").is_symlink() and (run_dir / "best" / "q_network.keras").read_bytes() == b"ours"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["eval.json", "q_network.keras"]
    assert (elsewhere / "q_network.keras").read_bytes() == b"someone else's"


def test_restart_clears_best_as_a_runs_own_output(tmp_path):
    run_dir = _run_dir(tmp_path)
    best.write(run_dir, {"env_steps": 1, "eval_return_mean": 2.0}, _model(b"a"))
    (run_dir / ".best.tmp4242").mkdir()  # a write a killed process left
    assert rundir.clear_earlier_run(run_dir) == [".best.tmp4242", "best", "config.json", "metrics.jsonl"]
    assert list(run_dir.iterdir()) == []
