import numpy as np
import pytest

from hvd_dqn.errors import UserError
from hvd_dqn.replay import ReplayBuffer


def _add(buf, start, n, terminated=None, truncated=None):
    obs = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(2, axis=1)
    buf.add(
        obs,
        np.arange(start, start + n) % 3,
        np.arange(start, start + n, dtype=np.float32),
        obs + 1,
        terminated if terminated is not None else np.zeros(n, bool),
        truncated if truncated is not None else np.zeros(n, bool),
    )


def test_wraps_around_keeping_the_newest():
    buf = ReplayBuffer(5, (2,))
    _add(buf, 0, 3)
    assert len(buf) == 3 and buf.pos == 3
    _add(buf, 3, 4)  # 7 transitions into 5 slots: 0 and 1 are overwritten
    assert len(buf) == 5 and buf.pos == 2
    batch = buf.gather(np.arange(5))
    assert sorted(batch.reward.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    # each slot's columns still belong to the same transition
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.reward + 1)
    np.testing.assert_array_equal(batch.action, batch.reward.astype(int) % 3)


def test_terminated_and_truncated_kept_apart():
    buf = ReplayBuffer(8, (2,))
    _add(buf, 0, 4, terminated=np.array([0, 1, 0, 0], bool), truncated=np.array([0, 0, 1, 0], bool))
    b = buf.gather(np.arange(4))
    assert b.terminated.tolist() == [False, True, False, False]
    assert b.truncated.tolist() == [False, False, True, False]


def test_state_round_trip_is_exact():
    buf = ReplayBuffer(6, (2,))
    _add(buf, 0, 9)
    other = ReplayBuffer(6, (2,))
    other.load_state_dict(buf.state_dict())
    assert (other.pos, other.size) == (buf.pos, buf.size)
    for a, b in zip(buf.gather(np.arange(6)), other.gather(np.arange(6))):
        np.testing.assert_array_equal(a, b)


def test_refuses_a_buffer_that_cannot_fit():
    with pytest.raises(UserError, match="replay_capacity"):
        ReplayBuffer(10**12, (84, 84))


# ---------------------------------------------------------------------------------------------- every rank of a host
def test_the_shards_of_a_hosts_ranks_are_counted_together(monkeypatch):
    """One shard of 6 GiB fits in 10 GiB (90% of it usable), two on one host do not."""
    from hvd_dqn.replay import buffer

    monkeypatch.setattr(buffer, "available_memory", lambda: 10 * 2**30)
    buffer.check_fits(6 * 2**30, 1000, ranks_per_host=1)
    with pytest.raises(UserError) as err:
        buffer.check_fits(6 * 2**30, 1000, ranks_per_host=2)
    assert str(err.value) == (
        "replay: 1000 transitions need 6.00 GiB per rank x 2 ranks on this host but only "
        "10.00 GiB is available; lower replay_capacity or use more hosts"
    )


def _per_transition() -> int:
    """Bytes a CartPole transition takes in the ring buffer (observations of 4 float32, twice)."""
    return ReplayBuffer(10, (4,)).nbytes // 10


def test_the_refusal_is_the_jobs_before_the_shard_is_made():
    """Trainer setup's replay: refused by the host's ranks together (the local size), as a refusal of the whole
    job (every rank leaves with 2; rank 0 says it); one shard alone would fit."""
    from hvd_dqn import distributed, runsetup, tasks
    from hvd_dqn.config import Config
    from hvd_dqn.errors import JobRefused
    from hvd_dqn.replay import available_memory

    distributed.init()
    capacity = int(0.6 * available_memory() / _per_transition())  # 0.6 of memory: 1 shard fits, 2 do not
    task = tasks.for_config(Config(env_id="CartPole-v1"))
    alone = distributed.World(0, 1, 0, 1)
    assert runsetup.make_replay(task, 1000, (4,), alone).capacity == 1000
    with pytest.raises(
        JobRefused,
        match=r"^replay: \d+ transitions need [\d.]+ GiB per rank x 2 ranks on this host "
        r"but only [\d.]+ GiB is available; lower replay_capacity or use more hosts$",
    ) as err:
        runsetup.make_replay(task, capacity, (4,), distributed.World(0, 1, 0, 2))
    assert not err.value.quiet


@pytest.mark.multiproc
def test_two_ranks_whose_replays_do_not_fit_their_host_together_both_leave_with_2(tmp_path):
    """Under ``horovodrun -np 2`` each rank's shard fits alone, the two do not: each rank refuses before it
    allocates, one line says so (rank 0), both ranks exit 2 and none waits in a collective."""
    import re

    from conftest import BIN, HOROVODRUN, run
    from hvd_dqn.replay import available_memory

    per_rank = int(0.6 * available_memory() / _per_transition())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"env_id: CartPole-v1\ntotal_env_steps: 400\nlearning_starts: 100\nreplay_capacity: {2 * per_rank}\n"
    )
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            "--gloo",
            "-H",
            "localhost:2",
            BIN / "hvd-dqn",
            "train",
            "--config",
            cfg,
            "--run-dir",
            tmp_path / "run",
        ],
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if "replay_capacity" in line]
    assert len(lines) == 1, output
    assert re.search(
        rf"hvd-dqn: error: replay: {per_rank} transitions need [\d.]+ GiB per rank x 2 ranks on this "
        rf"host but only [\d.]+ GiB is available; lower replay_capacity or use more hosts$",
        lines[0],
    )
    codes = re.findall(r"(?:Exit code:|exit with status code)\s+(\d+)", output)
    assert proc.returncode != 0 and codes and set(codes) == {"2"}, output
    assert not re.search(r"^\[[\d,]+\]<stderr>:Traceback", output, re.M) and "failed" not in output, output
    assert not (tmp_path / "run" / "checkpoints").exists()
