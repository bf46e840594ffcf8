"""A user's own env (module:id, env_kwargs), the spaces it may have, and a user's own Q-network."""

import json
import os
import runpy
import sys

import numpy as np
import pytest

from conftest import BIN, HOROVODRUN, ROOT, TINY_RUN, main_here, run

USER_ENV = ROOT / "examples" / "user_env"
CORRIDOR = USER_ENV / "corridor.yaml"
TESTS = ROOT / "tests"


def _pythonpath(*dirs) -> str:
    return os.pathsep.join([str(ROOT), *map(str, dirs)])


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The work directory of one `horovodrun -np 2 --gloo` job of tests/mp_custom_resume.py, examples/user_env on
    the ranks' PYTHONPATH: `hvd-dqn train` of the corridor example with a user's own Q-network named by the config
    (run dir corridor/), then CartPole with that network trained whole, stopped and resumed. Its result.json:
    every rank's exit code of the corridor's `hvd-dqn train`, and the CartPole runs' summaries."""
    work = tmp_path_factory.mktemp("user-env")
    corridor = ["train", "--config", CORRIDOR, "--run-dir", work / "corridor"]
    corridor += ["--set", "q_network=custom_network:layer_norm_mlp"]
    cmd = [HOROVODRUN, "-np", "2", "--gloo", sys.executable, TESTS / "mp_custom_resume.py", work]
    cmd += [json.dumps([str(a) for a in corridor]), json.dumps(TINY_RUN)]
    proc = run(cmd, timeout=1800, PYTHONPATH=_pythonpath(USER_ENV, TESTS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, json.loads((work / "result.json").read_text())


# ---- 1. any gymnasium env a user has: module:id and env_kwargs, under horovodrun, then evaluate/export/serve


@pytest.mark.multiproc
def test_a_users_env_module_trains_on_two_ranks_evaluates_exports_and_serves(two_ranks, tmp_path, capsys, monkeypatch):
    """The corridor example under `horovodrun -np 2` as `hvd-dqn train` (two_ranks), the user's module on the
    ranks' PYTHONPATH, with a user's own Q-network named by the config (q_network: custom_network:layer_norm_mlp):
    both reach the ranks, the replicas end identical, and the run evaluates, exports and serves without the user's
    code."""
    work, result = two_ranks
    run_dir, out = work / "corridor", tmp_path / "export"
    assert result["cli_exit_codes"] == [0, 0]
    summary = _summary(run_dir)
    assert summary["world_size"] == 2 and summary["env_steps"] == 4000
    assert len(summary["replica_checksums"]) == 2 and len(set(summary["replica_checksums"])) == 1
    # the corridor of 8 cells (env_kwargs) is walked in the fewest steps: -7; the default length 8 is the
    # same, so a corridor of another length proves the keywords reached the env (below)
    assert summary["final_eval_return_mean"] == -7.0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_id"] == "mygrid:Corridor-v0" and config["env_kwargs"] == {"length": 8}
    assert config["q_network"] == "custom_network:layer_norm_mlp"

    # evaluate and export in this process, the user's module dir on sys.path as PYTHONPATH put it for the ranks
    monkeypatch.syspath_prepend(str(USER_ENV))
    proc = main_here(capsys, "evaluate", run_dir, "--episodes", "3")
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip().splitlines()[-1]
        == "mygrid:Corridor-v0: 3 episodes, mean -7.00, std 0.00, min -7.00, max -7.00"
    )

    proc = main_here(capsys, "export", run_dir, out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "export.json").read_text())
    assert meta["env_id"] == "mygrid:Corridor-v0" and meta["env_kwargs"] == {"length": 8}
    # served without the user's module (and without hvd_dqn): plain TensorFlow on one-hot cells
    serve = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "obs = tf.constant(np.eye(8, dtype=np.float32)[:7])\n"
        "print(m.signatures['greedy_action'](observation=obs)['action'].numpy().tolist())\n"
    )
    proc = run(
        [sys.executable, "-c", serve, out / "saved_model"],
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[1, 1, 1, 1, 1, 1, 1]"  # always right, towards the exit


def test_env_kwargs_reach_the_constructor_in_training_and_evaluation(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.syspath_prepend(str(USER_ENV))
    proc = main_here(
        capsys,
        "train",
        "--config",
        CORRIDOR,
        "--run-dir",
        run_dir,
        "--set",
        "env_kwargs={length: 5}",
        "--set",
        "reward_threshold=-4",
    )
    assert proc.returncode == 0, proc.stderr
    assert _summary(run_dir)["final_eval_return_mean"] == -4.0  # 4 steps: the corridor of 5
    proc = main_here(capsys, "evaluate", run_dir, "--episodes", "2")
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip().splitlines()[-1]
        == "mygrid:Corridor-v0: 2 episodes, mean -4.00, std 0.00, min -4.00, max -4.00"
    )


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["env_id=nosuch_module_xyz:Corridor-v0"],
            "env_id: cannot import module 'nosuch_module_xyz' of 'nosuch_module_xyz:Corridor-v0' (No module named "
            "'nosuch_module_xyz'); is it installed or on PYTHONPATH on every host?",
        ),
        (["env_id=mygrid:Nowhere-v0"], "env_id: module 'mygrid' registers no env 'Nowhere-v0'"),
        (
            ["env_kwargs={width: 3}"],
            "env 'mygrid:Corridor-v0' could not be made with env_kwargs {'width': 3}: TypeError: ",
        ),
        (
            ["env_kwargs={length: 1}"],
            "env 'mygrid:Corridor-v0' could not be made with env_kwargs {'length': 1}: ValueError: length must be at "
            "least 2, got 1",
        ),
        (["env_kwargs={1x: 3}"], "env_kwargs: '1x' is not a keyword name"),
        (["env_id=ALE/Pong-v5", "env_kwargs={mode: 1}"], "env_kwargs: Atari games take their options as config keys"),
    ],
)
def test_a_users_env_that_cannot_be_made_is_one_line(tmp_path, overrides, line, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_ENV))
    args = ["train", "--config", CORRIDOR, "--run-dir", tmp_path / "run"]
    for item in overrides:
        args += ["--set", item]
    _assert_refused(main_here(capsys, *args), line)


def _assert_refused(proc, line):
    """Exit 2, one error line holding ``line``, no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("hvd-dqn: error")]
    assert len(errors) == 1 and line in errors[0], proc.stderr


def test_a_users_env_that_cannot_be_imported_is_one_line_from_the_command(tmp_path):
    """The same from a real `hvd-dqn` process, whose PYTHONPATH lacks the module."""
    proc = run(
        [
            BIN / "hvd-dqn",
            "train",
            "--config",
            CORRIDOR,
            "--run-dir",
            tmp_path / "run",
            "--set",
            "env_id=nosuch_module_xyz:Corridor-v0",
        ],
        PYTHONPATH=_pythonpath(USER_ENV),
    )
    _assert_refused(
        proc,
        "env_id: cannot import module 'nosuch_module_xyz' of 'nosuch_module_xyz:Corridor-v0' (No "
        "module named 'nosuch_module_xyz'); is it installed or on PYTHONPATH on every host?",
    )


def test_a_module_that_fails_on_import_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_envs.py").write_text("raise RuntimeError('no licence server')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = main_here(
        capsys, "train", "--config", CORRIDOR, "--run-dir", tmp_path / "run", "--set", "env_id=broken_envs:X-v0"
    )
    _assert_refused(
        proc, "env_id: importing module 'broken_envs' of 'broken_envs:X-v0' failed: RuntimeError: no licence server"
    )


# ---- 2. the spaces a user's env may have, and the network that fits


@pytest.fixture
def user_envs(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import user_envs  # noqa: F401  (registers the ids)


@pytest.mark.parametrize(
    "name, shape, dtype",
    [
        ("VectorF64", (3,), np.float32),  # cast for the MLP
        ("Grid", (6,), np.float32),  # a 2-D float Box, flattened
        ("DictObs", (6,), np.float32),  # one-hot cell (4) + speed (2), gymnasium's flatten
        ("TupleObs", (5,), np.float32),
        ("ImageHWC", (12, 12, 3), np.uint8),
        ("ImageCHW", (2, 40, 40), np.uint8),
        ("Image2D", (1, 10, 10), np.uint8),  # a channel axis added
    ],
)
def test_each_observation_space_becomes_what_a_network_takes(user_envs, name, shape, dtype):
    from hvd_dqn.envs import make_env

    env = make_env(f"user_envs:{name}-v0")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == shape and obs.shape == shape and obs.dtype == dtype


@pytest.mark.parametrize(
    "name, why",
    [
        ("ContinuousAction", "action space Box(-1.0, 1.0, (1,), float32) cannot be served: it is continuous"),
        ("MultiDiscreteAction", "action space MultiDiscrete([2 2]) cannot be served: DQN needs a single Discrete"),
        ("Text", "observation space Text(1, 5, "),
    ],
)
def test_a_space_the_trainer_cannot_serve_is_one_line(user_envs, tmp_path, name, why, capsys):
    proc = main_here(
        capsys,
        "train",
        "--config",
        CORRIDOR,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"env_id=user_envs:{name}-v0",
        "--set",
        "env_kwargs={}",
    )
    _assert_refused(proc, f"env 'user_envs:{name}-v0': {why}")


TINY = dict(
    total_env_steps=400,
    num_envs=2,
    learning_starts=100,
    train_every=100,
    updates_per_train=4,
    target_update_every=4,
    batch_size=8,
    replay_capacity=1000,
    eval_every=400,
    eval_episodes=2,
    log_every=400,
    hidden_sizes=(16,),
)


@pytest.mark.parametrize(
    "name, layers",
    [
        ("DictObs", {"InputLayer", "Dense"}),
        ("ImageHWC", {"InputLayer", "Rescaling", "Conv2D", "Flatten", "Dense"}),  # channels last: no Permute
        ("ImageCHW", {"InputLayer", "Permute", "Rescaling", "Conv2D", "Flatten", "Dense"}),
    ],
)
def test_a_users_env_of_each_kind_trains_the_network_that_fits(user_envs, tmp_path, name, layers):
    from hvd_dqn import Config, Trainer

    trainer = Trainer(Config(env_id=f"user_envs:{name}-v0", **TINY), tmp_path / "run")
    summary = trainer.train()
    # 4 learning phases (at 100, 200, 300 and 400 env steps) of 4 updates
    assert summary["env_steps"] == 400 and summary["updates"] == 16
    assert {type(layer).__name__ for layer in trainer.q_network.layers} == layers
    assert summary["final_eval_return_mean"] == 5.0  # action 1 at every step: the reward is not hard to find


# ---- 3. a user's own Q-network: through the API and through the config


def test_a_custom_network_through_the_api(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_ENV))
    from custom_network import layer_norm_mlp

    from hvd_dqn import Config, Trainer

    config = Config(env_id="CartPole-v1", **TINY)
    trainer = Trainer(config, tmp_path / "run", q_network=layer_norm_mlp)
    summary = trainer.train()
    assert summary["updates"] == 16
    kinds = [type(layer).__name__ for layer in trainer.q_network.layers]
    assert kinds == ["InputLayer", "Dense", "LayerNormalization", "Activation", "Dense"]
    # the saved model is the user's network, loadable without the user's code (built-in layers only)
    from hvd_dqn.keras2 import keras

    saved = keras.models.load_model(tmp_path / "run" / "q_network.keras", compile=False)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(saved(obs).numpy(), trainer.policy_network(obs).numpy())


def test_the_custom_network_example_runs(tmp_path, capsys, monkeypatch):
    """`python examples/user_env/custom_network.py 1000 RUN_DIR`, run as __main__ in this process (one rank)."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [str(USER_ENV / "custom_network.py"), "1000", str(run_dir)])
    capsys.readouterr()
    runpy.run_path(str(USER_ENV / "custom_network.py"), run_name="__main__")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[custom network]")]
    assert lines[0].startswith("[custom network] 150 updates, final greedy return ")  # 3 phases (500, 750, 1000) x 50
    assert lines[0].endswith("layers Activation, Dense, InputLayer, LayerNormalization")
    assert lines[1] == "[custom network] replicas equal: True"


def _wrong_head(observation_space, n_actions, config):
    from hvd_dqn.keras2 import keras

    inputs = keras.Input(shape=observation_space.shape)
    return keras.Model(inputs, keras.layers.Dense(n_actions + 1)(inputs))


def test_a_custom_network_of_the_wrong_shape_is_one_line(tmp_path):
    from hvd_dqn import Config, Trainer
    from hvd_dqn.errors import UserError

    with pytest.raises(UserError) as err:
        Trainer(Config(env_id="CartPole-v1", **TINY), tmp_path / "run", q_network=_wrong_head).train()
    assert (
        str(err.value) == "q_network _wrong_head: its output shape is (None, 3), the env has 2 actions: it "
        "must be (None, 2)"
    )


@pytest.mark.parametrize(
    "ref, line",
    [
        ("custom_network", "q_network: 'custom_network' is not module:function (e.g. my_pkg.nets:build)"),
        ("custom_network:nothing_here", "q_network: module 'custom_network' has no function 'nothing_here'"),
        ("no_such_nets_xyz:build", "q_network: cannot import module 'no_such_nets_xyz'"),
    ],
)
def test_a_q_network_reference_that_does_not_resolve_is_one_line(tmp_path, ref, line, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_ENV))
    _assert_refused(
        main_here(capsys, "train", "--config", CORRIDOR, "--run-dir", tmp_path / "run", "--set", f"q_network={ref}"),
        line,
    )


@pytest.mark.multiproc
def test_a_custom_network_from_the_config_trains_on_two_ranks_and_resumes_bit_exactly(two_ranks):
    """Replicas identical, and a run preempted mid-way then resumed ends where the uninterrupted one does
    (CartPole: an env whose state a checkpoint captures; a user's own env restarts its episodes on resume): the
    three CartPole runs (whole, stopped, resumed; conftest's TINY_RUN, a checkpoint every 400 env steps) of
    two_ranks's job; the config's network through `hvd-dqn train --set q_network=...` under horovodrun is
    test_a_users_env_module_trains_on_two_ranks_evaluates_exports_and_serves's."""
    work, result = two_ranks
    expected = result["whole"]["replica_checksums"]
    assert result["whole"]["world_size"] == 2 and len(expected) == 2 and len(set(expected)) == 1
    assert result["layers"] == ["InputLayer", *["Dense", "LayerNormalization", "Activation"] * 2, "Dense"]
    assert result["stop"].startswith("stopped by HVD_DQN_PREEMPT_AT at global env step "), result["stop"]
    assert not result["summary_after_stop"]
    assert result["resumed"]["env_steps"] == result["whole"]["env_steps"] == 1200
    assert result["resumed"]["replica_checksums"] == expected
    rows = [json.loads(ln) for ln in (work / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in rows].count("resumed") == 1
