"""Federated averaging, per-rank exploration and soft targets under `horovodrun -np 2`, for real (one job)."""
import json
import sys

import numpy as np
import pytest

from conftest import BIN, ROOT, run

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def result():
    proc = run([BIN / "horovodrun", "-np", "2", "--gloo", sys.executable, ROOT / "tests" / "mp_algorithms.py"],
               timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(l for l in proc.stdout.splitlines() if "RESULT " in l)
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
    s = result["summary"]
    assert s["world_size"] == 2 and s["updates"] > 0 and s["env_steps"] >= 2400
    # every learning phase of 20 updates ends on an averaging (federated_every=10): replicas equal at the end
    assert s["replica_checksums"][0] == s["replica_checksums"][1]
    assert s["final_eval_return_mean"] is not None


def test_federated_k1_with_sgd_is_synchronous_data_parallelism(result):
    r = result["sgd_k1"]
    assert r["moved"] > 1e-3  # ten SGD steps did change the weights
    assert r["max_diff"] < 1e-5, r  # averaging weights after each step = averaging the gradients of that step
    assert r["checksums"][0] == r["checksums"][1]
