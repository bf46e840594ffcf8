"""Full-state checkpoints on one rank, in process: exact round trips of replay, env and JSON state; what a
checkpoint directory holds; the one-line errors for damaged, truncated, edited, foreign and incompatible
checkpoints, each naming the checkpoint to fall back to; a failed write (injected, or a real full disk) that
leaves the previous checkpoint intact and no .tmp; a failed final checkpoint that keeps the model and summary; a
NaN stopping the run with the last one intact."""

import errno
import hashlib
import json
import re
import shutil
import sys
from collections import deque

import gymnasium as gym
import numpy as np
import pytest

from conftest import TINY_RUN, run
from hvd_dqn import Callback, Config, Trainer, checkpoint, cli, envstate, jsoncodec
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.envs import make_vector_env
from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.replay import ReplayBuffer, ReplayShard
from test_user_surface import TF_CHATTER

TF_LOG = re.compile(TF_CHATTER.pattern.replace("[EW]", "[EWI]"))

TINY = {**TINY_RUN, "log_every": 600}


# ------------------------------------------------------------------ exact round trips
def _filled_shard(rng, capacity=37, n_envs=3, steps=20):
    """A prioritized shard with n-step discounts that has wrapped around, and an accumulator with pending starts."""
    shard = ReplayShard(ReplayBuffer(capacity, (4,)), 0.99**3, prioritized=True)
    nstep = NStepAccumulator(n_envs, 3, 0.99)
    for _ in range(steps):
        obs = rng.normal(size=(n_envs, 4)).astype(np.float32)
        done = rng.random(n_envs) < 0.2
        ready = nstep.push(
            obs, rng.integers(0, 2, n_envs), rng.normal(size=n_envs), obs + 1, done, np.zeros(n_envs, bool)
        )
        if ready is not None:
            shard.add(*ready)
        batch, _, _, idx = shard.sample(rng, (2, 5))
        shard.update_priorities(idx, rng.random((2, 5)) * 3)
    return shard, nstep


def test_replay_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    shard, nstep = _filled_shard(rng)
    assert len(shard) == shard.capacity and shard.buffer.pos != 0  # wrapped: pos matters
    assert any(nstep.pending_counts())
    checkpoint.write_arrays(tmp_path / "r.npz", {**shard.state_dict(), **nstep.state_dict()})
    other, other_nstep = ReplayShard(ReplayBuffer(37, (4,)), 0.5, prioritized=True), NStepAccumulator(3, 3, 0.99)
    arrays = checkpoint.read_arrays(tmp_path, "r.npz")
    other.load_state_dict(arrays)
    other_nstep.load_state_dict(arrays)

    for name, arr in shard.buffer._data.items():
        np.testing.assert_array_equal(other.buffer._data[name], arr, err_msg=name)
    assert (other.buffer.pos, other.buffer.size) == (shard.buffer.pos, shard.buffer.size)
    np.testing.assert_array_equal(other.discount, shard.discount)
    assert other.tree._tree.tobytes() == shard.tree._tree.tobytes()  # every partial sum, bit for bit
    assert other.max_priority == shard.max_priority
    assert other_nstep.pending_counts() == nstep.pending_counts()
    mine, theirs = nstep.state_dict(), other_nstep.state_dict()
    assert sorted(mine) == sorted(theirs) and len(mine) == 4  # lengths, obs, actions, rewards
    for name in mine:
        np.testing.assert_array_equal(theirs[name], mine[name], err_msg=name)
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
    other, legacy = make_vector_env("CartPole-v1", 3), make_vector_env("CartPole-v1", 3)
    other.reset(seed=[7, 8, 9])
    legacy.reset(seed=[4, 5, 6])
    envstate.restore(other, saved)
    envstate.restore(legacy, saved["envs"])  # the list checkpoints held before they kept the vector env's flags
    for _ in range(600):  # through many episode ends: physics, time limits and reset RNGs all restored
        actions = rng.integers(0, 2, 3)
        a, b, c = envs.step(actions), other.step(actions), legacy.step(actions)
        for x, y, z in zip(a[:4], b[:4], c[:4]):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)


def test_env_state_of_an_uncapturable_env_is_none():
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1")], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    # the one env's state, layer by layer: TimeLimit, OrderEnforcing, PassiveEnvChecker, then CartPole itself
    assert [len(layers) for layers in envstate.capture(envs)["envs"]] == [4]
    assert envstate.capture(gym.make_vec("CartPole-v1", 2, vectorization_mode="async")) is None


def test_json_values_round_trip_exactly():
    gen = np.random.default_rng(9)
    gen.random(3)
    value = {
        "a": np.float32(0.1),
        "b": np.arange(6, dtype=np.int16).reshape(2, 3),
        "c": (1, 2.5, None),
        "d": np.array([1e-300, np.pi]),
        "g": gen,
        "q": deque([np.zeros(2, np.uint8), np.ones(2, np.uint8)], 2),
    }
    back = jsoncodec.from_json(json.loads(json.dumps(jsoncodec.to_json(value))))
    assert back["a"].dtype == np.float32 and back["a"] == value["a"]
    assert back["b"].dtype == np.int16 and (back["b"] == value["b"]).all()
    assert back["c"] == (1, 2.5, None)
    assert back["d"].tobytes() == value["d"].tobytes()
    assert back["g"].random() == gen.random()
    assert isinstance(back["q"], deque) and back["q"].maxlen == 2 and back["q"][1].dtype == np.uint8


# ------------------------------------------------------------------ a real run's checkpoints
@pytest.fixture
def run_dir(tiny_run):
    """conftest's TINY_RUN (this file's TINY, with a log row every 300 steps), shared with other files: read only
    here, copied by _copy before a test changes it."""
    return tiny_run


def test_a_run_keeps_its_newest_complete_checkpoints(run_dir):
    # every 400 steps and at the end (1200): 400, 800, 1200, of which the newest 2 are kept
    assert [p.name for p in checkpoint.listed(run_dir)] == ["ckpt-800", "ckpt-1200"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    ckpt = run_dir / "checkpoints" / "ckpt-1200"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "COMPLETE",
        "model.data-00000-of-00001",
        "model.index",
        "rank0.json",
        "replay-rank0.npz",
        "state.json",
    ]
    state = checkpoint.verify(ckpt)
    assert state["env_steps"] == 1200 and state["world_size"] == 1 and state["training"]["updates"] == 100
    assert state["config"]["hidden_sizes"] == [16, 16]
    replay = checkpoint.read_arrays(ckpt, "replay-rank0.npz")
    assert int(replay["size"]) == 1200 and replay["obs"].shape == (1200, 4)
    envs = json.loads((ckpt / "rank0.json").read_text())["envs"]["envs"]
    assert len(envs) == 1 and envs[0][-1]["state"]["shape"] == [4]  # the rank's one env, down to its physics state


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


def _reseal(ckpt, name):
    """Record ``name``'s current bytes in the manifest, as if the damage had happened before it was written."""
    marker = json.loads((ckpt / "COMPLETE").read_text())
    data = (ckpt / name).read_bytes()
    marker["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


FALLBACK = "; delete it to resume from ckpt-800, the next older complete checkpoint"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_marker", "missing COMPLETE marker (truncated write?)"),
        ("truncated", "replay-rank0.npz is truncated or altered"),
        ("missing_file", "rank0.json is missing"),
        ("garbage_replay", "replay-rank0.npz is altered or damaged (its sha256 differs from the manifest's)"),
        ("garbage_model", "model.data-00000-of-00001 is altered or damaged (its sha256 differs from the manifest's)"),
        ("garbage_replay_resealed", "replay-rank0.npz is damaged"),
        ("garbage_model_resealed", "model (TF checkpoint) is damaged"),
        ("state_same_size", "state.json is altered or damaged (its sha256 differs from the manifest's)"),
        ("foreign", "not an hvd-dqn checkpoint"),
    ],
)
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
        path = ckpt / ("replay-rank0.npz" if "replay" in damage else "model.data-00000-of-00001")
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        if damage.endswith("resealed"):  # past the manifest: the formats' own checks must catch it
            _reseal(ckpt, path.name)
    elif damage == "state_same_size":  # as a hand edit: env steps 1200 -> 9200, not a byte more or less
        text = (ckpt / "state.json").read_text()
        assert text.count('"env_steps": 1200') == 2
        (ckpt / "state.json").write_text(text.replace('"env_steps": 1200', '"env_steps": 9200'))
    elif damage == "foreign":
        (ckpt / "COMPLETE").write_text('{"format": "someone-else", "files": {}}')
    assert _resume(run) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"hvd-dqn: error: checkpoint {ckpt}: ") and message in line, line
    assert line.endswith(FALLBACK), line


def test_a_damaged_checkpoint_without_an_older_one_says_there_is_none(run_dir, tmp_path, capsys):
    run, ckpt = _copy(run_dir, tmp_path)
    shutil.rmtree(run / "checkpoints" / "ckpt-800")
    (ckpt / "rank0.json").write_text((ckpt / "rank0.json").read_text().replace('"rank": 0', '"rank": 7'))
    assert _resume(run) == 2
    assert _one_line_error(capsys) == (
        f"hvd-dqn: error: checkpoint {ckpt}: rank0.json is altered or damaged (its sha256 differs from the "
        f"manifest's); there is no older complete checkpoint to fall back to"
    )


def test_the_manifest_records_each_files_size_and_sha256(run_dir):
    ckpt = run_dir / "checkpoints" / "ckpt-1200"
    marker = json.loads((ckpt / "COMPLETE").read_text())
    assert marker["version"] == 3
    assert sorted(marker["files"]) == sorted(p.name for p in ckpt.iterdir() if p.name != "COMPLETE")
    for name, entry in marker["files"].items():
        data = (ckpt / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


def test_a_version_1_checkpoint_sizes_only_still_resumes(run_dir, tmp_path):
    run, ckpt = _copy(run_dir, tmp_path)
    marker = json.loads((ckpt / "COMPLETE").read_text())
    marker.update(version=1, files={name: e["size"] for name, e in marker["files"].items()})
    (ckpt / "COMPLETE").write_text(json.dumps(marker))
    assert checkpoint.verify(ckpt)["env_steps"] == 1200


@pytest.mark.parametrize(
    "override, change",
    [
        ("optimizer=sgd", "optimizer 'adam' -> 'sgd'"),
        ("frame_stack=2", "frame_stack 4 -> 2"),
        # mixed_float16's loss scale is optimizer state a float32 run lacks
        ("precision=mixed_float16", "precision 'float32' -> 'mixed_float16'"),
    ],
)
def test_resume_refuses_a_changed_optimizer_or_frame_stack(run_dir, tmp_path, capsys, override, change):
    run, ckpt = _copy(run_dir, tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert _resume(run, "--set", override) == 2
    assert _one_line_error(capsys) == (
        f"hvd-dqn: error: checkpoint {ckpt}: incompatible config ({change}); these keys must match the checkpoint's"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_refuses_an_incompatible_config_or_an_atari_world_size(run_dir, tmp_path, capsys):
    run, ckpt = _copy(run_dir, tmp_path)
    assert _resume(run, "--set", "hidden_sizes=[8]") == 2
    assert "incompatible config (hidden_sizes [16, 16] -> [8]); these keys must match" in _one_line_error(capsys)
    state = checkpoint.verify(ckpt)
    checkpoint.check_compatible(ckpt, state, state["config"], 2)  # classic control: dealt out to 2 ranks
    with pytest.raises(CheckpointError, match=r"written by 1 ranks, this job has 2: resume with 1 ranks"):
        checkpoint.check_compatible(ckpt, state, state["config"], 2, resizable=False)
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
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # the half-written one is gone
    assert checkpoint.find_for_resume(run_dir).name == "ckpt-400"
    assert checkpoint.verify(run_dir / "checkpoints" / "ckpt-400")["env_steps"] == 400


class _ReplaceCheckpointsDirWithAFile(Callback):
    """At the final evaluation, before the final checkpoint: ``checkpoints`` becomes a file, so creating
    ``checkpoints/ckpt-N.tmp`` fails for real (ENOTDIR), as it would for root, whom chmod does not stop."""

    def on_evaluation(self, trainer, result):
        if result["env_steps"] == trainer.config.total_env_steps:
            (trainer.run_dir / "checkpoints").write_text("not a directory")


def test_a_failed_final_checkpoint_keeps_the_model_and_summary(tmp_path):
    cfg = Config(**{**TINY, "checkpoint_every": None, "checkpoint_every_minutes": None})  # the final one only
    run_dir = tmp_path / "run"
    trainer = Trainer(cfg, run_dir=run_dir, callbacks=[_ReplaceCheckpointsDirWithAFile()])
    with pytest.raises(CheckpointError) as err:
        trainer.train()
    assert str(err.value) == (
        f"checkpoint {run_dir}/checkpoints/ckpt-1200: writing it failed on this rank: Not a directory "
        f"({run_dir}/checkpoints/ckpt-1200.tmp); no earlier checkpoint exists; the finished run's "
        f"q_network.keras and summary.json are saved in {run_dir}"
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1200 and summary["updates"] == 100
    from hvd_dqn.keras2 import keras

    saved = keras.models.load_model(run_dir / "q_network.keras", compile=False)
    for a, b in zip(saved.get_weights(), trainer.policy_network.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert (run_dir / "checkpoints").read_text() == "not a directory"  # and nothing of ours overwrote it


FILL_DISK = """
import os, sys
from hvd_dqn import Callback, Config, Trainer
from hvd_dqn.errors import UserError

class FillDisk(Callback):
    def on_log(self, trainer, row):
        if row["env_steps"] == 600:  # after ckpt-400, before ckpt-800: nothing else is written in between
            with open(os.path.join(sys.argv[1], "filler"), "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"x" * 4096)
                except OSError:  # full: not a byte left for the checkpoint at 800
                    pass

try:
    Trainer(Config(**{tiny}), run_dir=os.path.join(sys.argv[1], "run"), callbacks=[FillDisk()]).train()
except UserError as exc:
    print(f"hvd-dqn: error: {{exc}}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB filesystem (tmpfs), mounted for the test and unmounted after; skipped where mounting is not
    allowed (not root, or no CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], timeout=60)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    run(["umount", "-l", disk], timeout=60, check=True)


def test_a_save_on_a_full_disk_removes_its_tmp_and_says_one_line(small_disk):
    from conftest import run

    proc = run([sys.executable, "-c", FILL_DISK.format(tiny=repr(TINY)), small_disk])
    assert proc.returncode == 2, proc.stderr
    ckpts = small_disk / "run" / "checkpoints"
    # TF's C++ log lines (XLA's start-up notice among them) aside, the one line and nothing else
    lines = [line for line in proc.stderr.strip().splitlines() if not TF_LOG.match(line)]
    assert lines == [
        f"hvd-dqn: error: checkpoint {ckpts}/ckpt-800: writing it failed on this rank: No space "
        f"left on device ({ckpts}/ckpt-800.tmp); the previous checkpoint ckpt-400 is intact"
    ], proc.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-400"]  # no ckpt-800.tmp
    assert checkpoint.verify(ckpts / "ckpt-400")["env_steps"] == 400


def test_nan_stops_the_run_naming_the_update_and_the_last_checkpoint_stays_good(tmp_path, monkeypatch):
    monkeypatch.setenv("HVD_DQN_INJECT_NAN", "57")
    run_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"at update 57; stopping"):
        Trainer(Config(**TINY), run_dir=run_dir).train()
    # updates 1-10 at 300, ... phase 6 (51-60) at 800: the checkpoint at 800 is written after it, so never
    assert [p.name for p in checkpoint.listed(run_dir)] == ["ckpt-400"]
    state = checkpoint.verify(run_dir / "checkpoints" / "ckpt-400")
    assert state["training"]["updates"] == 20
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
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if r.get("event") != "resumed"]
    assert steps == sorted(set(steps)) and steps[-1] == 1200
    assert [r["env_steps"] for r in rows if r.get("event") == "resumed"] == [800]
