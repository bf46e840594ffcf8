"""Full-state checkpoints on one rank, in process: exact round trips of replay, env and JSON state; what a
checkpoint directory holds; the one-line errors for damaged, truncated, foreign and incompatible checkpoints;
a failed write that leaves the previous checkpoint intact; a NaN stopping the run with the last one intact."""
import errno
import json
import shutil

import gymnasium as gym
import numpy as np
import pytest

from hvd_dqn import Config, Trainer, checkpoint, cli, envstate, trainstate
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.envs import make_vector_env
from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.prioritized import ReplayShard
from hvd_dqn.replay import ReplayBuffer

TINY = dict(env_id="CartPole-v1", seed=3, total_env_steps=1200, hidden_sizes=(16, 16), learning_starts=300,
            train_every=100, updates_per_train=10, target_update_every=20, eval_every=600, eval_episodes=2,
            log_every=600, batch_size=32, replay_capacity=2000, checkpoint_every=400, keep_checkpoints=2)


# ------------------------------------------------------------------ exact round trips
def _filled_shard(rng, capacity=37, n_envs=3, steps=20):
    """A prioritized shard with n-step discounts that has wrapped around, and an accumulator with pending starts."""
    shard = ReplayShard(ReplayBuffer(capacity, (4,)), 0.99 ** 3, prioritized=True)
    nstep = NStepAccumulator(n_envs, 3, 0.99)
    for _ in range(steps):
        obs = rng.normal(size=(n_envs, 4)).astype(np.float32)
        done = rng.random(n_envs) < 0.2
        ready = nstep.push(obs, rng.integers(0, 2, n_envs), rng.normal(size=n_envs), obs + 1, done, np.zeros(n_envs, bool))
        if ready is not None:
            shard.add(*ready)
        batch, _, _, idx = shard.sample(rng, (2, 5))
        shard.update_priorities(idx, rng.random((2, 5)) * 3)
    return shard, nstep


def test_replay_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    shard, nstep = _filled_shard(rng)
    assert len(shard) == shard.capacity and shard.buffer.pos != 0  # wrapped: pos matters
    assert any(len(p) for p in nstep._pending)
    checkpoint.write_arrays(tmp_path / "r.npz", trainstate.replay_arrays(shard, nstep))
    other, other_nstep = ReplayShard(ReplayBuffer(37, (4,)), 0.5, prioritized=True), NStepAccumulator(3, 3, 0.99)
    trainstate.load_replay_arrays(checkpoint.read_arrays(tmp_path, "r.npz"), other, other_nstep)

    for name, arr in shard.buffer._data.items():
        np.testing.assert_array_equal(other.buffer._data[name], arr, err_msg=name)
    assert (other.buffer.pos, other.buffer.size) == (shard.buffer.pos, shard.buffer.size)
    np.testing.assert_array_equal(other.discount, shard.discount)
    assert other.tree._tree.tobytes() == shard.tree._tree.tobytes()  # every partial sum, bit for bit
    assert other.max_priority == shard.max_priority
    for mine, theirs in zip(nstep._pending, other_nstep._pending):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1:] == b[1:]
    # and they behave the same from here on
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    s1, s2 = shard.sample(r1, (3, 8)), other.sample(r2, (3, 8))
    np.testing.assert_array_equal(s1[3], s2[3])
    np.testing.assert_array_equal(s1[2], s2[2])


def test_env_state_round_trip_continues_identically():
    envs = make_vector_env("CartPole-v1", 3)
    envs.reset(seed=[1, 2, 3])
    rng = np.random.default_rng(0)
    for _ in range(57):
        envs.step(rng.integers(0, 2, 3))
    saved = json.loads(json.dumps(envstate.capture(envs)))  # through the JSON text, as on disk
    other = make_vector_env("CartPole-v1", 3)
    other.reset(seed=[7, 8, 9])
    envstate.restore(other, saved)
    for _ in range(600):  # through many episode ends: physics, time limits and reset RNGs all restored
        actions = rng.integers(0, 2, 3)
        a, b = envs.step(actions), other.step(actions)
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y)


def test_env_state_of_an_uncapturable_env_is_none():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert envstate.capture(envs) is not None
    assert envstate.capture(gym.make_vec("CartPole-v1", 2, vectorization_mode="async")) is None


def test_json_values_round_trip_exactly():
    gen = np.random.default_rng(9)
    gen.random(3)
    value = {"a": np.float32(0.1), "b": np.arange(6, dtype=np.int16).reshape(2, 3), "c": (1, 2.5, None),
             "d": np.array([1e-300, np.pi]), "g": gen}
    back = checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json(value))))
    assert back["a"].dtype == np.float32 and back["a"] == value["a"]
    assert back["b"].dtype == np.int16 and (back["b"] == value["b"]).all()
    assert back["c"] == (1, 2.5, None)
    assert back["d"].tobytes() == value["d"].tobytes()
    assert back["g"].random() == gen.random()


# ------------------------------------------------------------------ a real run's checkpoints
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(Config(**TINY), run_dir=run_dir).train()
    return run_dir


def test_a_run_keeps_its_newest_complete_checkpoints(run_dir):
    # every 400 steps and at the end (1200): 400, 800, 1200, of which the newest 2 are kept
    assert [p.name for p in checkpoint.listed(run_dir)] == ["ckpt-800", "ckpt-1200"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    ckpt = run_dir / "checkpoints" / "ckpt-1200"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "COMPLETE", "model.data-00000-of-00001", "model.index", "rank0.json", "replay-rank0.npz", "state.json"]
    state = checkpoint.verify(ckpt)
    assert state["env_steps"] == 1200 and state["world_size"] == 1 and state["updates"] == 100
    assert state["config"]["hidden_sizes"] == [16, 16]
    replay = checkpoint.read_arrays(ckpt, "replay-rank0.npz")
    assert int(replay["size"]) == 1200 and replay["obs"].shape == (1200, 4)
    assert json.loads((ckpt / "rank0.json").read_text())["envs"] is not None


def _resume(run_dir, *extra):
    return cli.main(["train", "--resume", str(run_dir), *extra])


def _copy(run_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst, dst / "checkpoints" / "ckpt-1200"


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("damage, message", [
    ("no_marker", "missing COMPLETE marker (truncated write?); delete it to resume from ckpt-800"),
    ("truncated", "replay-rank0.npz is truncated or altered"),
    ("missing_file", "rank0.json is missing"),
    ("garbage_replay", "replay-rank0.npz is damaged"),
    ("garbage_model", "model (TF checkpoint) is damaged"),
    ("foreign", "not an hvd-dqn checkpoint"),
])
def test_a_damaged_checkpoint_is_a_one_line_error(run_dir, tmp_path, capsys, damage, message):
    run, ckpt = _copy(run_dir, tmp_path)
    if damage == "no_marker":
        (ckpt / "COMPLETE").unlink()
    elif damage == "truncated":
        data = (ckpt / "replay-rank0.npz").read_bytes()
        (ckpt / "replay-rank0.npz").write_bytes(data[: len(data) // 2])
    elif damage == "missing_file":
        (ckpt / "rank0.json").unlink()
    elif damage.startswith("garbage"):  # same size, so only the formats' own checksums can tell
        path = ckpt / ("replay-rank0.npz" if damage == "garbage_replay" else "model.data-00000-of-00001")
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    elif damage == "foreign":
        (ckpt / "COMPLETE").write_text('{"format": "someone-else", "files": {}}')
    assert _resume(run) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"hvd-dqn: error: checkpoint {ckpt}: ") and message in line, line


def test_resume_refuses_an_incompatible_config_or_world_size(run_dir, tmp_path, capsys):
    run, ckpt = _copy(run_dir, tmp_path)
    assert _resume(run, "--set", "hidden_sizes=[8]") == 2
    assert "incompatible config (hidden_sizes [16, 16] -> [8]); these keys must match" in _one_line_error(capsys)
    state = checkpoint.verify(ckpt)
    with pytest.raises(CheckpointError, match=r"written by 1 ranks, this job has 2: resume with 1 ranks"):
        checkpoint.check_compatible(ckpt, state, state["config"], 2)
    assert _resume(tmp_path / "nowhere") == 2
    assert "no config.json (not a run directory? give --config)" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((run / "config.json").read_text())
    assert _resume(tmp_path / "empty") == 2
    assert "no checkpoint in" in _one_line_error(capsys)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    """The second checkpoint's replay file fails half-way with ENOSPC: a clear error, and the first checkpoint
    is still complete, unchanged and the one a resume would use."""
    real = checkpoint.write_arrays
    calls = []

    def disk_full(path, arrays):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, arrays)

    monkeypatch.setattr(checkpoint, "write_arrays", disk_full)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError) as err:
        Trainer(Config(**TINY), run_dir=run_dir).train()
    msg = str(err.value)
    assert "ckpt-800: writing it failed on this rank: No space left on device" in msg
    assert "the previous checkpoint ckpt-400 is intact" in msg
    assert [p.name for p in checkpoint.listed(run_dir)] == ["ckpt-400"]
    assert checkpoint.find_for_resume(run_dir).name == "ckpt-400"
    assert checkpoint.verify(run_dir / "checkpoints" / "ckpt-400")["env_steps"] == 400


def test_nan_stops_the_run_naming_the_update_and_the_last_checkpoint_stays_good(tmp_path, monkeypatch):
    monkeypatch.setenv("HVD_DQN_INJECT_NAN", "57")
    run_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"at update 57; stopping"):
        Trainer(Config(**TINY), run_dir=run_dir).train()
    # updates 1-10 at 300, ... phase 6 (51-60) at 800: the checkpoint at 800 is written after it, so never
    assert [p.name for p in checkpoint.listed(run_dir)] == ["ckpt-400"]
    state = checkpoint.verify(run_dir / "checkpoints" / "ckpt-400")
    assert state["updates"] == 20
    monkeypatch.delenv("HVD_DQN_INJECT_NAN")
    summary = Trainer(Config(**TINY), run_dir=run_dir, resume=True).train()  # and the run continues from it
    assert summary["env_steps"] == 1200 and summary["updates"] == 100


def test_the_wall_clock_trigger_fires_only_at_decision_points(tmp_path):
    """checkpoint_every_minutes tiny: a checkpoint at every decision point (every learning-phase boundary,
    100 env steps here, the same iterations on every rank), none in between."""
    cfg = Config(**{**TINY, "checkpoint_every": None, "checkpoint_every_minutes": 1e-6, "keep_checkpoints": 100})
    Trainer(cfg, run_dir=tmp_path / "run").train()
    assert [p.name for p in checkpoint.listed(tmp_path / "run")] == [f"ckpt-{s}" for s in range(100, 1300, 100)]


def test_resume_drops_metrics_rows_logged_after_the_checkpoint(run_dir, tmp_path):
    """As after a kill -9 between checkpoints: rows past the newest checkpoint (and a half-written line) go, the
    resumed run logs those steps again, each step's row appears once."""
    run, ckpt = _copy(run_dir, tmp_path)
    shutil.rmtree(ckpt)  # the newest is now ckpt-800; the rows at 900..1200 were logged after it
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"env_steps": 1300, "wall_s"')
    assert _resume(run) == 0
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if r.get("event") != "resumed"]
    assert steps == sorted(set(steps)) and steps[-1] == 1200
    assert [r["env_steps"] for r in rows if r.get("event") == "resumed"] == [800]
