import sys

import pytest
from pydantic import ValidationError

from conftest import run
from hvd_dqn.config import Config
from hvd_dqn.errors import UserError

GOOD = "env_id: CartPole-v1\ntotal_env_steps: 1000\nlearning_starts: 100\n"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD + "hidden_sizes: [8, 8]\n")
    cfg = Config.from_yaml(path, ["seed=3", "learning_rate=0.01", "hidden_sizes=[4]"])
    assert (cfg.seed, cfg.learning_rate, cfg.hidden_sizes, cfg.total_env_steps) == (3, 0.01, (4,), 1000)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 4


def test_per_rank_split():
    cfg = Config(
        env_id="CartPole-v1",
        batch_size=64,
        replay_capacity=1001,
        total_env_steps=1000,
        num_envs=2,
        train_every=256,
        learning_starts=100,
    )
    per = cfg.per_rank(2)
    assert (per.batch_size, per.replay_capacity, per.vector_steps, per.vector_steps_per_train) == (32, 501, 250, 64)
    with pytest.raises(UserError, match="batch_size 64 is not divisible by the 3 ranks"):
        cfg.per_rank(3)


def test_weak_scaling_rule():
    cfg = Config(
        env_id="CartPole-v1",
        batch_size=128,
        learning_rate=2e-3,
        updates_per_train=128,
        target_update_every=64,
        train_every=256,
        num_envs=4,
        scaling="weak",
    )
    one, two = cfg.per_rank(1), cfg.per_rank(2)
    # on one rank weak scaling is the config as written, the same as strong
    assert one == cfg.replace(scaling="strong").per_rank(1)
    assert (one.batch_size, one.learning_rate, one.updates_per_phase, one.target_update_every) == (128, 2e-3, 128, 64)
    # N ranks: each rank's batch stays (N x the global batch), N x the step size, 1/N of the updates and target
    # period; replay ratio (samples replayed per env step, summed over ranks) and the phase interval stay
    assert (two.batch_size, two.learning_rate, two.updates_per_phase, two.target_update_every) == (128, 4e-3, 64, 32)
    assert two.vector_steps_per_train == 32 and one.vector_steps_per_train == 64

    def replayed(per, n):  # samples replayed per global env step
        return n * per.batch_size * per.updates_per_phase / (n * cfg.num_envs * per.vector_steps_per_train)

    assert replayed(one, 1) == replayed(two, 2)
    strong = cfg.replace(scaling="strong").per_rank(2)
    assert (strong.batch_size, strong.learning_rate, strong.updates_per_phase, strong.target_update_every) == (
        64,
        2e-3,
        128,
        64,
    )


def test_weak_scaling_errors_are_one_line():
    cfg = Config(env_id="CartPole-v1", updates_per_train=128, target_update_every=100, scaling="weak")
    with pytest.raises(UserError, match="updates_per_train 128 is not divisible by the 3 ranks") as err:
        cfg.per_rank(3)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="target_update_every 100 is not divisible by the 8 ranks"):
        cfg.per_rank(8)
    with pytest.raises(
        UserError, match="scaling: Input should be 'strong', 'weak', 'adam_sqrt', 'lamb_sqrt' or 'sqrt'"
    ):
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "linear"})
    with pytest.raises(UserError, match="scaling: weak .* federated_every"):
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "weak", "federated_every": 4, "target_update_every": 128})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"env_id": "CartPole-v1", "bogus": 1}, "bogus: unknown key"),
        ({"env_id": "CartPole-v1", "seed": "abc"}, "seed: Input should be a valid integer"),
        ({"env_id": "CartPole-v1", "gamma": 1.5}, "gamma: Input should be less than or equal to 1"),
        ({"env_id": "CartPole-v1", "total_env_steps": 0}, "total_env_steps: Input should be greater than 0"),
        ({"env_id": "CartPole-v1", "double_dqn": "yes"}, "double_dqn: Input should be a valid boolean"),
        ({"env_id": "CartPole-v1", "hidden_sizes": [64, 0]}, "hidden_sizes: must be a non-empty list"),
        ({"env_id": "NoSuchEnv-v0"}, "env_id: unknown gymnasium env id 'NoSuchEnv-v0'"),
        ({"seed": 1}, "env_id: required key is missing"),
        ({"env_id": "CartPole-v1", "eps_start": 0.1, "eps_end": 0.5}, "eps_end must not exceed eps_start"),
        (
            {"env_id": "CartPole-v1", "precision": "bfloat16"},
            "precision: Input should be 'float32', 'mixed_bfloat16' or 'mixed_float16' (got 'bfloat16')",
        ),
        (
            {"env_id": "CartPole-v1", "precision": "mixed_float16", "backward_passes_per_step": 2},
            "precision mixed_float16 with backward_passes_per_step > 1",
        ),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(UserError) as err:
        Config.from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, args, message",
    [
        (GOOD + "bogus_key: 3\n", [], "bogus_key: unknown key"),
        (GOOD + "learning_rate: fast\n", [], "learning_rate: Input should be a valid number"),
        (GOOD, ["--set", "batch_size=-4"], "batch_size: Input should be greater than or equal to 1"),
        (GOOD, ["--set", "nonsense"], "--set 'nonsense': expected key=value"),
        (GOOD, ["--set", "precision=float16"], "precision: Input should be 'float32', 'mixed_bfloat16' or"),
        ("env_id: Nope-v9\n", [], "unknown gymnasium env id 'Nope-v9'"),
        ("env_id: [CartPole\n", [], "malformed YAML at line"),
        ("- just\n- a list\n", [], "expected a mapping"),
        (None, [], "config file not found"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(tmp_path, content, args, message):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    proc = run([sys.executable, "-m", "hvd_dqn.cli", "train", "--config", path, *args], timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and lines[0].startswith("hvd-dqn: error:")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_hang_timeout_is_bounded():
    """The watchdog's bound (docs/reliability.md): 10 s up to a week, or null for none."""
    assert Config.from_dict({"env_id": "CartPole-v1"}).hang_timeout_s == 300.0
    assert Config.from_dict({"env_id": "CartPole-v1", "hang_timeout_s": None}).hang_timeout_s is None
    assert Config.from_dict({"env_id": "CartPole-v1", "hang_timeout_s": 10}).hang_timeout_s == 10.0
    for bad, why in [
        (5, "greater than or equal to 10"),
        (float("inf"), "finite number"),
        (10**6, "less than or equal to 604800"),
        (float("nan"), "hang_timeout_s"),
        ("soon", "hang_timeout_s"),
    ]:
        with pytest.raises(UserError, match=why) as err:
            Config.from_dict({"env_id": "CartPole-v1", "hang_timeout_s": bad})
        assert "\n" not in str(err.value)
    # the bound on one piece of long local work (an evaluation, a checkpoint write): an hour unless set
    assert Config.from_dict({"env_id": "CartPole-v1"}).busy_timeout_s == 3600.0
    assert Config.from_dict({"env_id": "CartPole-v1", "busy_timeout_s": None}).busy_timeout_s is None
    with pytest.raises(UserError, match="busy_timeout_s.*greater than or equal to 10"):
        Config.from_dict({"env_id": "CartPole-v1", "busy_timeout_s": 1})


CP = {"env_id": "CartPole-v1"}


@pytest.mark.parametrize(
    "data, message",
    [
        ({**CP, "allreduce_op": "sum"}, "allreduce_op: Input should be 'average' or 'adasum'"),
        ({**CP, "gradient_compression": "int8"}, "gradient_compression: Input should be 'none' or 'fp16'"),
        ({**CP, "backward_passes_per_step": 0}, "backward_passes_per_step: Input should be greater than or equal to 1"),
        (
            {**CP, "average_aggregated_gradients": True},
            "average_aggregated_gradients needs backward_passes_per_step > 1",
        ),
        (
            {**CP, "allreduce_op": "adasum", "backward_passes_per_step": 2},
            "backward_passes_per_step > 1 needs allreduce_op: average",
        ),
        (
            {**CP, "federated_every": 4, "target_update_every": 128, "gradient_compression": "fp16"},
            "federated_every runs none: use one of the two",
        ),
        ({**CP, "target_tau": 0.01, "backward_passes_per_step": 2}, "target_tau moves the target after every update"),
    ],
)
def test_horovod_keys_are_validated(data, message):
    with pytest.raises(UserError) as err:
        Config.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_backward_passes_per_step_must_divide_the_phase_and_the_target_period():
    cfg = Config(
        env_id="CartPole-v1",
        updates_per_train=128,
        target_update_every=64,
        train_every=256,
        num_envs=4,
        scaling="weak",
        backward_passes_per_step=4,
    )
    assert cfg.per_rank(8).updates_per_phase == 16  # 16 and 8 per rank: multiples of 4
    with pytest.raises(UserError) as err:
        cfg.per_rank(32)  # 4 updates per phase, but a target period of 2
    assert (
        str(err.value) == "config: target_update_every is 2 per rank at 32 rank(s), not a multiple of "
        "backward_passes_per_step 4"
    )
    with pytest.raises(UserError, match="updates per learning phase is 6 per rank at 1 rank"):
        cfg.replace(updates_per_train=6, target_update_every=8, scaling="strong").per_rank(1)


def test_elastic_refuses_local_gradient_aggregation(tmp_path):
    """The gradients a rank sums between two allreduces are not in an elastic commit: a reset would leave the
    ranks' sums out of step."""
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    proc = run(
        [
            sys.executable,
            "-m",
            "hvd_dqn.cli",
            "train",
            "--elastic",
            "--config",
            path,
            "--run-dir",
            tmp_path / "run",
            "--set",
            "backward_passes_per_step=2",
        ],
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr  # (TensorFlow's own start-up warnings come first)
    assert (
        proc.stderr.strip().splitlines()[-1] == "hvd-dqn: error: --elastic needs backward_passes_per_step: 1 (the "
        "gradients a rank sums between two allreduces are not part of the committed state)"
    )
