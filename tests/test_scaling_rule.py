"""The adam_sqrt, lamb_sqrt and sqrt scaling rules' arithmetic (Config.per_rank) and their errors."""

import math

import pytest

from hvd_dqn.config import Config
from hvd_dqn.errors import UserError
from hvd_dqn.schedules import scheduled_learning_rate

BASE = dict(
    env_id="CartPole-v1",
    batch_size=128,
    learning_rate=2e-3,
    updates_per_train=128,
    target_update_every=128,
    train_every=256,
    num_envs=4,
    adam_epsilon=1e-7,
)


def test_one_rank_is_the_config_as_written():
    for boost in (1.0, 2.0, 3.0):
        cfg = Config(**BASE, scaling="adam_sqrt", scaling_replay_boost=boost)
        assert cfg.per_rank(1) == Config(**BASE, scaling="weak").per_rank(1) == Config(**BASE).per_rank(1)
    one = cfg.per_rank(1)
    assert (one.learning_rate, one.adam_beta1, one.adam_beta2, one.adam_epsilon) == (2e-3, 0.9, 0.999, 1e-7)


@pytest.mark.parametrize("n, k", [(2, 1), (4, 2), (8, 4), (16, 8)])
def test_n_ranks_with_a_replay_boost_of_two(n, k):
    per = Config(**BASE, scaling="adam_sqrt", scaling_replay_boost=2.0).per_rank(n)
    # the chain of updates is K = N / 2 times shorter: 128 / K updates per phase, target synced after each phase
    assert (per.updates_per_phase, per.target_update_every, per.batch_size) == (128 // k, 128 // k, 128)
    assert per.learning_rate == pytest.approx(2e-3 * math.sqrt(n), rel=1e-12)
    assert per.adam_epsilon == pytest.approx(1e-7 / math.sqrt(n), rel=1e-12)
    # Adam's memory spans the same env steps: one update at N ranks decays its averages as K updates at N = 1 do
    assert (per.adam_beta1, per.adam_beta2) == (pytest.approx(0.9**k), pytest.approx(0.999**k))
    # phases fall every 256 global env steps at any N; samples replayed per env step are twice N = 1's at N >= 2
    assert per.vector_steps_per_train * per.global_steps_per_vector_step == 256
    assert n * per.batch_size * per.updates_per_phase == 2 * 128 * 128


@pytest.mark.parametrize("n, k", [(1, 1), (2, 1), (4, 2), (8, 4), (16, 8)])
def test_lamb_sqrt_is_adam_sqrt_at_sqrt_n_k_times_the_learning_rate(n, k):
    lamb = Config(**BASE, optimizer="lamb", scaling="lamb_sqrt", scaling_replay_boost=2.0).per_rank(n)
    adam = Config(**BASE, scaling="adam_sqrt", scaling_replay_boost=2.0).per_rank(n)
    assert lamb.learning_rate == pytest.approx(2e-3 * math.sqrt(n * k), rel=1e-12)
    assert lamb.model_copy(update={"learning_rate": adam.learning_rate}) == adam  # the rest is adam_sqrt's


def test_without_a_boost_the_chain_is_n_times_shorter_and_uneven_divisions_round():
    per = Config(**BASE, scaling="adam_sqrt").per_rank(8)
    assert (per.updates_per_phase, per.adam_beta1) == (16, pytest.approx(0.9**8))
    per = Config(**BASE, scaling="adam_sqrt").per_rank(3)  # no divisibility needed: 128 / 3 = 42.7 -> 43
    assert (per.updates_per_phase, per.target_update_every) == (43, 43)
    assert Config(**{**BASE, "updates_per_train": 16}, scaling="adam_sqrt").per_rank(16).updates_per_phase == 1


def test_errors_are_one_line_and_name_the_key():
    with pytest.raises(UserError, match=r"scaling_replay_boost: Input should be greater than or equal to 1") as err:
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "adam_sqrt", "scaling_replay_boost": 0.5})
    assert "\n" not in str(err.value)
    with pytest.raises(
        UserError,
        match="scaling_replay_boost is a parameter of scaling: adam_sqrt, lamb_sqrt or sqrt, not of scaling: weak",
    ):
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "weak", "scaling_replay_boost": 2})
    with pytest.raises(
        UserError,
        match=r"scaling: lamb_sqrt is the rule for optimizer lamb, not adam \(use "
        r"adam_sqrt\)",
    ) as err:
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "lamb_sqrt"})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="scaling: adam_sqrt shortens the chain .* federated_every"):
        Config.from_dict(
            {"env_id": "CartPole-v1", "scaling": "adam_sqrt", "federated_every": 4, "target_update_every": 128}
        )
    # Atari's published 1 update per phase cannot get 4 times fewer: an error, not a silent half-applied rule
    atari = Config(
        env_id="CartPole-v1",
        train_every=4,
        updates_per_train=1,
        target_update_every=250,
        scaling="adam_sqrt",
        scaling_replay_boost=2,
    )
    assert atari.per_rank(2).updates_per_phase == 1  # K = 1 at N = 2
    with pytest.raises(
        UserError,
        match="updates_per_train 1 is less than the 4 times that scaling: adam_sqrt divides "
        "it by on 8 ranks; raise it .* or use scaling: sqrt",
    ) as err:
        atari.per_rank(8)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="lr_warmup_env_steps: Input should be greater than or equal to 0"):
        Config.from_dict({"env_id": "CartPole-v1", "scaling": "weak", "lr_warmup_env_steps": -1})
    with pytest.raises(
        UserError,
        match="lr_warmup_env_steps warms up to the learning rate of scaling weak, "
        "adam_sqrt, lamb_sqrt or sqrt; scaling: strong keeps learning_rate at "
        "any N",
    ) as err:
        Config.from_dict({"env_id": "CartPole-v1", "lr_warmup_env_steps": 1000})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="adam_beta2: Input should be less than 1"):
        Config.from_dict({"env_id": "CartPole-v1", "adam_beta2": 1.0})


def test_the_warm_up_rises_from_the_config_rate_to_the_rule_and_then_decays():
    # Goyal et al.'s gradual warm-up: from N = 1's rate at learning_starts to the rule's over 4,000 env steps
    rule = 2e-3 * math.sqrt(8)
    at = lambda step, final=1.0: scheduled_learning_rate(step, 2e-3, rule, 4000, 1000, final, 50_000)  # noqa: E731
    assert at(0) == at(1000) == 2e-3  # no update has been made yet: the config's own rate
    assert at(3000) == pytest.approx(2e-3 + 0.5 * (rule - 2e-3), rel=1e-12)
    assert at(5000) == at(50_000) == rule
    # the decay over training multiplies whatever the warm-up has reached
    assert at(3000, final=0.0) == pytest.approx((2e-3 + 0.5 * (rule - 2e-3)) * (1 - 3000 / 50_000), rel=1e-12)
    assert at(25_000, final=0.0) == pytest.approx(rule / 2, rel=1e-12)
    # where the rule keeps the config's rate (N = 1), the warm-up is the identity, bit for bit
    for step in (0, 1500, 3000, 49_999):
        assert scheduled_learning_rate(step, 2e-3, 2e-3, 4000, 1000, 0.0, 50_000) == scheduled_learning_rate(
            step, 2e-3, 2e-3, 0, 1000, 0.0, 50_000
        )


# ------------------------------------------------------------------ sqrt: adam_sqrt for Adam or RMSProp
MINATAR = dict(
    env_id="CartPole-v1",
    optimizer="rmsprop",
    learning_rate=0.00025,
    rmsprop_decay=0.95,
    rmsprop_epsilon=0.01,
    batch_size=32,
    train_every=1,
    updates_per_train=1,
    target_update_every=1000,
    num_envs=1,
    scaling="sqrt",
)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_sqrt_divides_a_phase_of_one_update_per_env_step(n):
    """The MinAtar reference's one update per env step: at N ranks a vector step brings N env steps, N updates as
    the config is written; sqrt makes it one update of N times the batch, so the chain is N times shorter and the
    samples replayed per env step stay 32."""
    per = Config(**MINATAR).per_rank(n)
    assert (per.updates_per_phase, per.vector_steps_per_train, per.global_steps_per_vector_step) == (1, 1, n)
    assert (per.batch_size, per.target_update_every) == (32, round(1000 / n))
    assert per.learning_rate == pytest.approx(0.00025 * math.sqrt(n), rel=1e-12)
    assert per.rmsprop_decay == pytest.approx(0.95**n, rel=1e-12)
    assert per.rmsprop_epsilon == pytest.approx(0.01 / math.sqrt(n), rel=1e-12)
    strong = Config(**{**MINATAR, "scaling": "strong"}).per_rank(n)
    assert (strong.updates_per_phase, strong.rmsprop_decay, strong.rmsprop_epsilon) == (n, 0.95, 0.01)


def test_sqrt_with_a_boost_and_another_exponent():
    per = Config(**MINATAR, scaling_replay_boost=2.0, scaling_lr_exponent=0.25).per_rank(8)
    assert (per.updates_per_phase, per.target_update_every) == (2, 250)  # K = 4
    assert per.learning_rate == pytest.approx(0.00025 * 8**0.25, rel=1e-12)
    assert per.rmsprop_decay == pytest.approx(0.95**4, rel=1e-12)
    assert per.rmsprop_epsilon == pytest.approx(0.01 / math.sqrt(8), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16])
def test_sqrt_is_adam_sqrt_for_adam_where_adam_sqrt_applies(n):
    adam = Config(**BASE, scaling="adam_sqrt", scaling_replay_boost=2.0).per_rank(n)
    assert Config(**BASE, scaling="sqrt", scaling_replay_boost=2.0).per_rank(n) == adam


def test_sqrt_errors_are_one_line():
    cases = [
        (
            {"scaling": "sqrt", "optimizer": "sgd"},
            r"scaling: sqrt is the rule for optimizer adam or rmsprop, "
            r"not sgd \(use weak\)",
        ),
        ({"scaling": "sqrt", "optimizer": "lamb"}, r"not lamb \(use lamb_sqrt\)"),
        ({"scaling": "adam_sqrt", "optimizer": "rmsprop"}, "optimizer rmsprop takes scaling sqrt, strong or weak"),
        (
            {"scaling": "weak", "scaling_lr_exponent": 1.0},
            "scaling_lr_exponent is a parameter of scaling: sqrt, not of scaling: weak",
        ),
        (
            {"scaling": "sqrt", "scaling_lr_exponent": 1.5},
            "scaling_lr_exponent: Input should be less than or equal to 1",
        ),
    ]
    for keys, message in cases:
        with pytest.raises(UserError, match=message) as err:
            Config.from_dict({"env_id": "CartPole-v1", **keys})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("n, every", [(2, 8), (4, 16), (8, 32), (16, 64)])
def test_sqrt_lengthens_the_periods_where_a_phase_has_fewer_updates_than_k(n, every):
    """Atari's one update every 4 env steps: a phase at N ranks holds fewer than K updates, so the phases fall K
    times less often; the samples replayed per env step stay 32 / 4."""
    per = Config(**{**MINATAR, "train_every": 4, "target_update_every": 250}).per_rank(n)
    assert per.updates_per_phase == 1
    assert per.vector_steps_per_train * per.global_steps_per_vector_step == every
    assert n * per.batch_size * per.updates_per_phase / every == 8
    assert per.target_update_every == round(250 / n)
