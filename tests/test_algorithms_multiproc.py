"""Federated averaging, per-rank exploration, soft targets and weak scaling under `horovodrun -np 2`, for real
(one job)."""

import json
import sys

import numpy as np
import pytest

from conftest import HOROVODRUN, ROOT, run
from run_schedule import expected_updates

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def result():
    proc = run([HOROVODRUN, "-np", "2", "--gloo", sys.executable, ROOT / "tests" / "mp_algorithms.py"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "RESULT " in ln)
    out, _ = json.JSONDecoder().raw_decode(line.split("RESULT ", 1)[1])
    return out


def test_federated_replicas_differ_between_averagings_and_match_after(result):
    rounds = result["rounds"]
    assert len(rounds) == 3
    for r in rounds:
        assert r["before"][0] != r["before"][1]  # K local steps on different data, no gradient allreduce
        assert r["after"][0] == r["after"][1]  # bit-identical right after the averaging
        assert r["mean_error"] < 1e-6  # ... and what they hold is the mean of the two replicas
    assert len({r["after"][0] for r in rounds}) == 3  # training moved on between averagings


def test_each_rank_and_env_gets_its_own_apex_epsilon(result):
    eps = np.asarray(result["eps"])  # (ranks, envs): actor i = rank * 3 + env of N = 6
    expected = 0.4 ** (1 + 7.0 * np.arange(6) / 5)
    np.testing.assert_allclose(eps.ravel(), expected, rtol=1e-12)
    assert len(np.unique(eps)) == 6


def test_soft_targets_stay_identical_across_ranks_in_synchronous_mode(result):
    soft = result["soft_targets"]
    assert soft["end"][0] == soft["end"][1]
    assert soft["start"][0] != soft["end"][0]  # the soft updates did move the target
    # the policy's weight average is a function of the (identical) online weights: identical too, no collective
    assert soft["policy_end"][0] == soft["policy_end"][1] and soft["policy_end"][0] != soft["policy_start"][0]


def test_trainer_with_every_component_in_federated_mode(result):
    s, cfg = result["summary"], result["trainer_config"]
    # 2 ranks of 2 envs: a phase of 20 updates every 50 vector steps (200 env steps), from 400 to 2400: 11 phases
    assert s["world_size"] == 2 and s["env_steps"] == 2400
    assert s["updates"] == expected_updates(cfg, 2) == 20 * 11
    # every learning phase of 20 updates ends on an averaging (federated_every=10): replicas equal at the end
    assert s["replica_checksums"][0] == s["replica_checksums"][1]
    # 220 updates teach CartPole nothing yet (this checks that every component runs, not that they learn); the job
    # is deterministic (two runs: the same replica checksums), so the final greedy mean is exact for this config
    assert s["final_eval_return_mean"] == 9.0  # 2 episodes


def test_federated_k1_with_sgd_is_synchronous_data_parallelism(result):
    r = result["sgd_k1"]
    assert r["moved"] > 1e-3  # ten SGD steps did change the weights
    assert r["max_diff"] < 1e-5, r  # averaging weights after each step = averaging the gradients of that step
    assert r["checksums"][0] == r["checksums"][1]


def test_weak_scaling_two_ranks_take_half_the_updates_on_the_full_batch_at_twice_the_step(result):
    from hvd_dqn.config import Config

    weak = result["weak"]
    s, per = weak["summary"], weak["config_json"]["per_rank"]
    cfg = Config.from_dict({k: v for k, v in weak["config_json"].items() if k not in ("world_size", "per_rank")})
    one = cfg.per_rank(1)
    # phases fall at the same global env steps (every 200 from 400 to 2400: 11) at np=1 and np=2
    phases = (cfg.total_env_steps - cfg.learning_starts) // cfg.train_every + 1
    assert s["world_size"] == 2 and s["env_steps"] == 2400
    assert s["updates"] == phases * one.updates_per_phase // 2 == 110  # half of np=1's 220
    assert weak["sampled"] == [10, 32]  # the last chunk: 10 updates, each rank sampled the whole batch_size
    assert weak["lr"] == pytest.approx(2 * cfg.learning_rate, rel=1e-6)  # Adam's own variable, as the graph read it
    assert (per["batch_size"], per["updates_per_phase"], per["target_update_every"]) == (32, 10, 10)
    assert s["replica_checksums"][0] == s["replica_checksums"][1]  # still synchronous: one allreduce per update
