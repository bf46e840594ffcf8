"""The user's surface on one tiny CartPole run (trained once per module, in process, with callbacks):
callbacks, TensorBoard tags, ``evaluate``, ``export`` (loaded where Horovod cannot be imported),
``plot``, and the one-line errors of each command. The commands run through cli.main in this process; one refusal
runs as a real ``hvd-dqn`` process, for its exit code and TensorFlow's start-up noise kept off its stderr."""

import contextlib
import io
import json
import re
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, main_here, run
from hvd_dqn import Callback, Config, Trainer
from run_schedule import expected_updates

TINY = dict(
    env_id="CartPole-v1",
    seed=5,
    total_env_steps=1200,
    hidden_sizes=(16, 16),
    learning_starts=300,
    train_every=100,
    updates_per_train=10,
    target_update_every=20,
    eval_every=600,
    eval_episodes=4,
    log_every=300,
    batch_size=32,
    replay_capacity=2000,
)
NO_HOROVOD = "import sys\nraise ImportError('horovod is deliberately unavailable in this process')\n"
OBS = np.array([[0.01, -0.02, 0.03, 0.04], [0.1, 0.5, -0.05, -0.6], [-0.2, -1.0, 0.1, 1.5]], np.float32)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_log(self, trainer, row):
        self.calls.append(("log", dict(row)))

    def on_evaluation(self, trainer, result):
        self.calls.append(("evaluation", dict(result)))

    def on_checkpoint(self, trainer, path):
        self.calls.append(("checkpoint", (Path(path), Path(path).is_file())))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run_dir, summary, recorder, q-values of OBS from the trained Keras model)."""
    run_dir = tmp_path_factory.mktemp("surface") / "run"
    recorder = Recorder()
    trainer = Trainer(Config(**TINY), run_dir=run_dir, callbacks=[recorder])
    summary = trainer.train()
    q = trainer.q_network(OBS).numpy()
    return run_dir, summary, recorder, q


def hvd_dqn(*args, timeout=300):
    """A real ``hvd-dqn`` process."""
    return run([BIN / "hvd-dqn", *args], timeout=timeout)


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: ``hvd-dqn *args`` through cli.main in this process (conftest.main_here)."""
    return lambda *args: main_here(capsys, *args)


# ------------------------------------------------------------------ callbacks, TensorBoard
def test_callbacks_fire_at_every_log_evaluation_and_checkpoint(trained):
    run_dir, summary, recorder, _ = trained
    kinds = [kind for kind, _ in recorder.calls]
    logs = [arg for kind, arg in recorder.calls if kind == "log"]
    evals = [arg for kind, arg in recorder.calls if kind == "evaluation"]
    # log every 300 of 1200 steps: 4 rows; evaluation at 600 and 1200, each followed by its log row
    assert [row["env_steps"] for row in logs] == [300, 600, 900, 1200]
    assert [e["env_steps"] for e in evals] == [600, 1200]
    assert all({"eval_return_mean", "eval_return_std", "eval_return_min", "eval_return_max"} <= e.keys() for e in evals)
    assert evals[-1]["eval_return_mean"] == summary["final_eval_return_mean"]
    assert evals[-1]["eval_episodes"] == 4
    assert kinds[-1] == "checkpoint" and kinds.count("checkpoint") == 1
    path, existed = recorder.calls[-1][1]
    assert path == run_dir / "q_network.keras" and existed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [r["env_steps"] for r in logs]
    # learning_starts 300, a phase of 10 updates every 100 steps: 4 phases by step 600, 10 by the end
    assert (
        [row["updates"] for row in logs]
        == [expected_updates(TINY, until=row["env_steps"]) for row in logs]
        == [10, 40, 70, 100]
    )
    assert logs[-1]["updates"] == summary["updates"]


def test_runs_started_in_the_same_second_get_their_own_default_run_dirs(tmp_path, monkeypatch):
    import hvd_dqn.trainer

    monkeypatch.chdir(tmp_path)
    real = hvd_dqn.trainer.time.strftime
    monkeypatch.setattr(
        hvd_dqn.trainer.time,
        "strftime",  # the run dir's clock stands still: one second for all
        lambda fmt, *t: "20261201-120000" if fmt == "%Y%m%d-%H%M%S" and not t else real(fmt, *t),
    )
    short = dict(TINY, total_env_steps=400, eval_every=400, log_every=400)
    dirs = [Path(Trainer(Config(**short)).train()["run_dir"]) for _ in range(3)]
    assert dirs == [Path("runs") / f"CartPole-v1-20261201-120000{s}" for s in ("", "-2", "-3")]
    assert all((tmp_path / d / "summary.json").is_file() for d in dirs)


def test_callbacks_must_be_callback_instances():
    with pytest.raises(TypeError, match="hvd_dqn.Callback"):
        Trainer(Config(**TINY), callbacks=[lambda *a: None])


def test_tensorboard_event_files_hold_the_expected_tags(trained):
    import tensorflow as tf

    run_dir = trained[0]
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    steps_by_tag = {}
    for f in files:
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for value in event.summary.value:
                steps_by_tag.setdefault(value.tag, []).append(event.step)
    expected = {
        "charts/episodic_return",
        "charts/epsilon",
        "losses/td_loss",
        "losses/q_mean",
        "eval_return_mean",
        "eval_return_std",
        "perf/env_steps_per_s",
        "perf/env_steps_per_s_per_rank",
        "perf/updates_per_s",
        "updates",
    }
    assert expected <= steps_by_tag.keys(), sorted(steps_by_tag)
    assert "perf/allreduce_ms" not in steps_by_tag  # one rank runs no allreduce: the row holds None, not 0
    assert sorted(steps_by_tag["eval_return_mean"]) == [600, 1200]
    assert sorted(steps_by_tag["charts/epsilon"]) == [300, 600, 900, 1200]


# ------------------------------------------------------------------ evaluate
EVAL_LINE = re.compile(r"^(\S+): (\d+) episodes, mean (-?[\d.]+), std ([\d.]+), min (-?[\d.]+), max (-?[\d.]+)$")


def parse_eval(stdout):
    m = EVAL_LINE.match(stdout.strip().splitlines()[-1])
    assert m, stdout
    return m.group(1), int(m.group(2)), *map(float, m.groups()[2:])


def test_evaluate_run_dir_is_seeded_and_summarises(trained, cli):
    run_dir = trained[0]
    first = cli("evaluate", run_dir, "--episodes", "3", "--seed", "7")
    assert first.returncode == 0, first.stderr
    env_id, n, mean, std, lo, hi = parse_eval(first.stdout)
    assert env_id == "CartPole-v1" and n == 3
    # the run's saved network, greedy, on CartPole seeded 7, 8, 9, played here one episode at a time
    returns = greedy_returns(run_dir / "q_network.keras", "CartPole-v1", [7, 8, 9])
    assert (mean, std, lo, hi) == tuple(
        round(float(x), 2) for x in (np.mean(returns), np.std(returns), np.min(returns), np.max(returns))
    )
    again = cli("evaluate", run_dir, "--episodes", "3", "--seed", "7")
    assert parse_eval(again.stdout) == parse_eval(first.stdout)


def greedy_returns(model_file, env_id, seeds):
    """Each seed's return of the greedy policy of a saved Q-network, with plain gymnasium and tf_keras."""
    import gymnasium as gym
    import tf_keras

    model = tf_keras.models.load_model(model_file, compile=False)
    returns = []
    for seed in seeds:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            q = model(np.asarray(obs, np.float32)[None], training=False).numpy()
            obs, reward, terminated, truncated, _ = env.step(int(np.argmax(q[0])))
            total, done = total + reward, terminated or truncated
        env.close()
        returns.append(total)
    return returns


def test_evaluate_records_one_video_per_episode(trained, tmp_path, cli):
    videos = tmp_path / "videos"
    with warnings.catch_warnings(record=True) as caught:  # gymnasium's RecordVideo warns through warnings
        warnings.simplefilter("always")
        proc = cli("evaluate", trained[0], "--episodes", "2", "--seed", "7", "--video", videos)
    assert proc.returncode == 0, proc.stderr
    assert "Overwriting" not in proc.stderr and not [w for w in caught if "Overwriting" in str(w.message)]
    files = sorted(videos.glob("*.mp4"))
    assert [f.name for f in files] == ["seed-7-episode-0.mp4", "seed-8-episode-0.mp4"]
    assert all(f.read_bytes()[4:8] == b"ftyp" for f in files)  # MP4 container


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """``hvd-dqn export`` of the trained run, through cli.main in this process."""
    from hvd_dqn import cli

    out = tmp_path_factory.mktemp("export") / "policy"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["export", str(trained[0]), str(out)])
    assert code == 0
    assert f"exported to {out}" in stdout.getvalue()
    return out


def test_export_writes_savedmodel_keras_and_metadata(exported, trained):
    assert (exported / "saved_model" / "saved_model.pb").is_file()
    assert (exported / "q_network.keras").is_file()
    meta = json.loads((exported / "export.json").read_text())
    assert meta["env_id"] == "CartPole-v1" and meta["observation_shape"] == [4] and meta["n_actions"] == 2
    assert not list(exported.parent.glob(".*tmp*"))


def test_evaluate_export_dir_matches_the_run_dir(trained, exported, cli):
    from_run = cli("evaluate", trained[0], "--episodes", "2", "--seed", "11")
    from_export = cli("evaluate", exported, "--episodes", "2", "--seed", "11")
    assert from_export.returncode == 0, from_export.stderr
    assert parse_eval(from_export.stdout) == parse_eval(from_run.stdout)
    keras_file = cli(
        "evaluate", exported / "q_network.keras", "--env", "CartPole-v1", "--episodes", "2", "--seed", "11"
    )
    assert keras_file.returncode == 0, keras_file.stderr
    assert parse_eval(keras_file.stdout) == parse_eval(from_run.stdout)


def test_export_loads_and_serves_without_horovod(trained, exported, tmp_path):
    """A process where horovod cannot be imported loads the export (SavedModel signatures, q_network.keras) and
    the run dir's own q_network.keras with plain TensorFlow and tf_keras: the trained network's Q-values."""
    blocker = tmp_path / "blocker" / "horovod"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(NO_HOROVOD)
    code = f"""
import json, sys
import numpy as np
try:
    import horovod
    sys.exit("horovod imported")
except ImportError:
    pass
import tensorflow as tf, tf_keras
obs = tf.constant({OBS.tolist()}, tf.float32)
loaded = tf.saved_model.load({str(exported / "saved_model")!r})
q = loaded.signatures["q_values"](observation=obs)["q_values"].numpy()
default = loaded.signatures["serving_default"](observation=obs)["q_values"].numpy()
action = loaded.signatures["greedy_action"](observation=obs)["action"].numpy()
k = tf_keras.models.load_model({str(exported / "q_network.keras")!r}, compile=False)(obs).numpy()
run_k = tf_keras.models.load_model({str(trained[0] / "q_network.keras")!r})(obs).numpy()
print("OUT", json.dumps({{"q": q.tolist(), "default": default.tolist(), "action": action.tolist(),
                         "keras": k.tolist(), "run_keras": run_k.tolist(), "dtype": str(action.dtype),
                         "hvd": "horovod" in sys.modules}}))
"""
    proc = run([sys.executable, "-c", code], PYTHONPATH=str(tmp_path / "blocker"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.split("OUT ", 1)[1])
    q_trained = trained[3]
    np.testing.assert_allclose(out["q"], q_trained, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["default"], q_trained, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["keras"], q_trained, rtol=1e-5, atol=1e-6)
    # the run dir's model: the same Q-values as loaded where Horovod is at hand (this process)
    import tf_keras

    assert out["run_keras"] == tf_keras.models.load_model(trained[0] / "q_network.keras")(OBS).numpy().tolist()
    assert out["action"] == np.argmax(q_trained, axis=1).tolist() and out["dtype"] == "int32"
    assert not out["hvd"]


# ------------------------------------------------------------------ plot
def test_plot_writes_a_png_of_the_expected_size(trained, tmp_path, cli):
    png = tmp_path / "curves" / "x.png"
    proc = cli("plot", trained[0], trained[0], "-o", png)
    assert proc.returncode == 0, proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 450)
    assert data[-8:-4] == b"IEND"


# ------------------------------------------------------------------ errors a person can act on
# TensorFlow's C++ start-up chatter (written before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot
# silence it): the CLI filters it (hvd_dqn.quiet); tests of commands run outside the CLI may still see it.
TF_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[EW]\d{4} [\d:.]+ +\d+ \S+:\d+\])")


def assert_one_line_error(proc, *fragments):
    """Exit code 2 and exactly one line on stderr, ours (in a real process: TensorFlow's start-up noise is filtered
    even where the command loaded it)."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvd-dqn: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", ["evaluate", "export", "plot"])
def test_missing_run_dir(command, tmp_path, cli):
    missing = tmp_path / "nope"
    args = {"evaluate": [missing], "export": [missing, tmp_path / "out"], "plot": [missing, "-o", tmp_path / "p.png"]}
    assert_one_line_error(cli(command, *args[command]), str(missing))


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_run_dir_without_a_model(command, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"evaluate": [empty], "export": [empty, tmp_path / "out"]}
    assert_one_line_error(cli(command, *args[command]), str(empty), "no model")


def test_plot_of_a_dir_without_metrics(tmp_path, cli):
    assert_one_line_error(cli("plot", tmp_path, "-o", tmp_path / "p.png"), "no metrics.jsonl")


@pytest.mark.parametrize(
    "env_id, fragment, real",
    [("MountainCar-v0", "shape (2,) and 3 actions", True), ("Acrobot-v1", "shape (6,) and 3 actions", False)],
)
def test_evaluate_on_an_env_that_does_not_match_the_model(trained, env_id, fragment, real, cli):
    """MountainCar as a real `hvd-dqn` process (the suite's one here): exit code 2 and one stderr line although
    the command loaded TensorFlow and the model; Acrobot through cli.main."""
    assert_one_line_error(
        (hvd_dqn if real else cli)("evaluate", trained[0], "--env", env_id, "--episodes", "1"),
        env_id,
        fragment,
        "expects shape (4,) and 2 actions",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--episodes", "0"], "--episodes"),
        (["--episodes", "-3"], "--episodes"),
        (["--epsilon", "1.5"], "--epsilon"),
        (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
    ],
)
def test_evaluate_bad_options(trained, args, fragment, cli):
    assert_one_line_error(cli("evaluate", trained[0], *args), fragment)


def test_evaluate_a_file_that_is_not_a_model(tmp_path, cli):
    bogus = tmp_path / "model.keras"
    bogus.write_text("not a model")
    assert_one_line_error(cli("evaluate", bogus, "--env", "CartPole-v1"), str(bogus))
