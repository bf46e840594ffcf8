"""The parameter server in process: its arithmetic and message layout, and the refusals (one rank, Gloo, keys
that need an allreduce). The protocol under a real launcher: test_paramserver_multiproc.py."""

import json
import re

import numpy as np
import pytest

from hvd_dqn import cli, psmath, trainstate
from hvd_dqn.config import Config
from hvd_dqn.errors import UserError


def test_gradient_message_round_trips_bit_for_bit():
    grad = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    version = 2**40 + 3  # past float32's integers: the version travels as the int64's bytes
    buf = psmath.pack_gradient(version, 1.5, -2.25, grad)
    assert buf.dtype == np.float32 and buf.shape == (psmath.GRAD_HEADER + 37,)
    v, loss, q, back = psmath.unpack_gradient(buf)
    assert (v, loss, q) == (version, 1.5, -2.25)
    assert back.tobytes() == grad.tobytes()


def test_reply_carries_weights_only_when_flagged():
    weights = np.arange(5, dtype=np.float32)
    buf = np.empty(psmath.REPLY_HEADER + 5, np.float32)
    short = psmath.pack_reply(buf, 9, psmath.CONTINUE)
    assert short.size == psmath.REPLY_HEADER
    assert psmath.unpack_reply(buf)[:2] == (9, psmath.CONTINUE) and psmath.unpack_reply(buf)[2] is None
    full = psmath.pack_reply(buf, 10, psmath.DONE, weights)
    assert full.size == psmath.REPLY_HEADER + 5
    version, flag, back = psmath.unpack_reply(full)
    assert (version, flag) == (10, psmath.DONE) and back.tobytes() == weights.tobytes()


def test_average_sums_in_worker_order():
    grads = [np.full(3, x, np.float32) for x in (1e8, 1.0, -1e8)]
    # float32: (1e8 + 1) - 1e8 == 0 in this order, (1e8 - 1e8) + 1 == 1 in another
    assert psmath.average(grads).tolist() == [0.0, 0.0, 0.0]
    assert psmath.average([grads[0], grads[2], grads[1]]).tolist() == [np.float32(1 / 3)] * 3
    assert psmath.average([np.array([1, 2], np.float32), np.array([3, 5], np.float32)]).tolist() == [2.0, 3.5]


def test_staleness_bound_and_pull_rule():
    assert psmath.accepted(10, 8, 2) and not psmath.accepted(10, 7, 2)
    assert psmath.accepted(10, 10, 0) and not psmath.accepted(11, 10, 0)
    assert not psmath.must_pull(10, 8, 2) and psmath.must_pull(11, 8, 2)
    count = psmath.StalenessCount()
    assert count.max is None
    for s in (0, 2, 2, 1, 0):
        count.add(s)
    count.rejected, count.dropped = 3, 1
    assert count.summary() == {
        "ps_staleness_max": 2,
        "ps_staleness_counts": [2, 1, 2],
        "ps_rejected": 3,
        "ps_dropped": 1,
    }


def test_staleness_counts_round_trip_through_a_checkpoints_json():
    count = psmath.StalenessCount()
    for s in (0, 3, 1):
        count.add(s)
    count.rejected, count.dropped = 4, 2
    back = psmath.StalenessCount()
    back.load_state_dict(json.loads(json.dumps(count.state_dict())))
    back.add(3)
    assert back.summary() == {
        "ps_staleness_max": 3,
        "ps_staleness_counts": [1, 1, 0, 2],
        "ps_rejected": 4,
        "ps_dropped": 2,
    }


@pytest.mark.parametrize(
    "state, fragment",
    [
        ({"counts": [1, "2"], "rejected": 0, "dropped": 0}, "counts[1] is '2'"),
        ({"counts": [1], "rejected": -1, "dropped": 0}, "rejected is -1"),
        ({"counts": [1], "rejected": 0, "dropped": True}, "dropped is True"),
        ({"counts": [1.5], "rejected": 0, "dropped": 0}, "counts[0] is 1.5"),
    ],
)
def test_staleness_counts_from_a_damaged_state_json_are_refused_naming_the_entry(state, fragment):
    count = psmath.StalenessCount()
    with pytest.raises(ValueError, match=re.escape(fragment + ", not a count")):
        count.load_state_dict(state)
    assert count.state_dict() == {"counts": [], "rejected": 0, "dropped": 0}  # nothing half-loaded


def test_state_json_holds_the_learners_extras_only_when_it_has_some():
    assert trainstate._learner_extras({"updates": 5, "since_sync": 1}) == {}
    staleness = {"counts": [2], "rejected": 0, "dropped": 1}
    extras = trainstate._learner_extras({"updates": 5, "since_sync": 1, "staleness": staleness})
    assert extras == {trainstate.LEARNER_KEY: {"staleness": staleness}}


@pytest.mark.parametrize("size, mpi, fragment", [(1, False, "needs at least 2 ranks"), (3, False, "runs on Gloo")])
def test_world_refusals(size, mpi, fragment):
    with pytest.raises(UserError, match=fragment):
        psmath.check_world("sync", size, mpi)
    psmath.check_world("none", size, mpi)
    psmath.check_world("async", 3, True)


@pytest.mark.parametrize(
    "extra",
    [
        {"federated_every": 8, "target_update_every": 64},
        {"target_tau": 0.01},
        {"backward_passes_per_step": 2},
        {"gradient_compression": "fp16"},
    ],
)
def test_config_refuses_allreduce_keys(extra):
    with pytest.raises(UserError, match="parameter_server: sync runs no allreduce"):
        Config.from_dict({"env_id": "CartPole-v1", "parameter_server": "sync", **extra})


def test_one_rank_is_refused_in_one_line(tiny_cartpole, tmp_path, capsys):
    code = cli.main(
        ["train", "--config", str(tiny_cartpole), "--run-dir", str(tmp_path / "run"), "--set", "parameter_server=async"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "parameter_server: async needs at least 2 ranks" in err[0], err
    assert not (tmp_path / "run").exists()
