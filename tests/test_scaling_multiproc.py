"""scaling: adam_sqrt (and lamb_sqrt) under `horovodrun -np 2`, for real: the learning rate, betas and epsilon
that Adam (LAMB) read, the updates each rank took, and replicas still identical. One job trains the three runs in
turn (tests/mp_scaling.py); each test reads its run's result."""

import json
import math
import sys

import pytest

from conftest import HOROVODRUN, ROOT, run
from hvd_dqn.config import Config

pytestmark = pytest.mark.multiproc

CONFIG = dict(
    env_id="CartPole-v1",
    total_env_steps=1200,
    hidden_sizes=[32, 32],
    learning_starts=400,
    train_every=200,
    updates_per_train=20,
    target_update_every=20,
    eval_every=1200,
    eval_episodes=2,
    log_every=1200,
    batch_size=32,
    learning_rate=1e-3,
    replay_capacity=4000,
    num_envs=2,
    scaling="adam_sqrt",
)


# the runs of the one job, in order, by the name the tests read them by
RUNS = {
    "adam_sqrt": CONFIG,
    # 1,600 env steps of warm-up from learning_starts 400: the last phase, at 1,200, is half-way there
    "warm_up": {**CONFIG, "lr_warmup_env_steps": 1600},
    "lamb_sqrt": {**CONFIG, "optimizer": "lamb", "scaling": "lamb_sqrt"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{run name: its result} of one `horovodrun -np 2 --gloo` job of tests/mp_scaling.py that trains RUNS in turn."""
    work = tmp_path_factory.mktemp("scaling")
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            "--gloo",
            sys.executable,
            ROOT / "tests" / "mp_scaling.py",
            json.dumps(list(RUNS.values())),
            work,
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((work / "result.json").read_text())
    assert len(results) == len(RUNS)
    return dict(zip(RUNS, results))


def test_two_ranks_take_half_the_updates_with_adam_scaled_by_the_rule(runs):
    out = runs["adam_sqrt"]
    s, mine = out["summary"], out["rank0"]
    one = Config.from_dict(CONFIG).per_rank(1)
    phases = (1200 - 400) // 200 + 1  # learning phases at 400, 600, ..., 1200 global env steps: 5 at any N
    assert s["world_size"] == 2 and s["env_steps"] == 1200
    assert s["updates"] == phases * one.updates_per_phase // 2 == 50  # K = 2: half of np=1's 100
    assert mine["sampled"] == [10, 32]  # the last phase: 10 updates, each rank sampling the whole batch_size
    # what Adam itself held at the end, on both ranks (lr decays linearly to 1.0 x: lr_final_fraction defaults to 1)
    for lr, beta_1, beta_2, epsilon, updates in out["all"]:
        assert lr == pytest.approx(1e-3 * math.sqrt(2), rel=1e-6)
        assert beta_1 == pytest.approx(0.9**2, rel=1e-6) and beta_2 == pytest.approx(0.999**2, rel=1e-9)
        assert epsilon == pytest.approx(1e-7 / math.sqrt(2), rel=1e-6)
        assert updates == 50
    assert s["replica_checksums"][0] == s["replica_checksums"][1]  # still synchronous: one allreduce per update


def test_the_warm_up_reaches_the_rule_rate_over_its_env_steps(runs):
    # the last phase, at 1,200, is half-way from 1e-3 to the rule's 1e-3 x sqrt(2)
    out = runs["warm_up"]
    assert [row[0] for row in out["all"]] == [pytest.approx(1e-3 + 0.5 * (1e-3 * math.sqrt(2) - 1e-3), rel=1e-6)] * 2
    assert [row[4] for row in out["all"]] == [50, 50]
    assert out["summary"]["replica_checksums"][0] == out["summary"]["replica_checksums"][1]


def test_lamb_sqrt_gives_keras_3_s_lamb_its_rate_on_both_ranks(runs):
    # K = 2 at N = 2 without a boost: LAMB at sqrt(N * K) = 2 x the rate, with adam_sqrt's betas and epsilon
    out = runs["lamb_sqrt"]
    for lr, beta_1, beta_2, epsilon, updates in out["all"]:
        assert lr == pytest.approx(2e-3, rel=1e-6)
        assert beta_1 == pytest.approx(0.9**2, rel=1e-6) and beta_2 == pytest.approx(0.999**2, rel=1e-9)
        assert epsilon == pytest.approx(1e-7 / math.sqrt(2), rel=1e-6)
        assert updates == 50
    assert out["summary"]["replica_checksums"][0] == out["summary"]["replica_checksums"][1]
