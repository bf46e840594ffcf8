"""Resuming onto another number of ranks, for real under horovodrun (issue 17): configs/cartpole.yaml stopped at np=2
(MPI controller) mid-run, then resumed at np=1 and at np=4 (Gloo); each completes the run and still solves it, with
the update count the two world sizes' schedules add up to, and says in one line and in its metrics where the world
size changed. The np=1 resume is done twice up to its first learning phase, stopped there by the test hook's stop
request: the two checkpoints are the same bit for bit (weights, replay, actor), so the N -> N' resume is
deterministic; one of them then runs on to the end (a same-size resume continues bit for bit:
test_checkpoint_resume). Atari and a step the new world size cannot reach are refused in one line. The runs at np=1
need no launcher: they run through cli.main in this process, as `hvd-dqn train` at np=1 would."""

import json
import re
import shutil

import pytest

from conftest import BIN, HOROVODRUN, ROOT, main_here, run
from hvd_dqn.checkpoint import CheckpointError, check_compatible
from hvd_dqn.config import Config
from run_schedule import learning_phases, updates_per_phase

CONFIG = ROOT / "configs" / "cartpole.yaml"
STOP_AT = 20000  # rank 0 asks to stop at the first decision point from here: a checkpoint, then exit 75


def _hvd(np_, *args, controller="gloo"):
    """`hvd-dqn train ARGS` on ``np_`` > 1 ranks under horovodrun (np=1 runs in process: main_here)."""
    return [HOROVODRUN, "-np", str(np_), f"--{controller}", "-H", f"localhost:{np_}", BIN / "hvd-dqn", "train", *args]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def stopped_at_np2(tmp_path_factory):
    """configs/cartpole.yaml (seed 0) under horovodrun -np 2 --mpi, stopped mid-run by the test hook's stop request
    (HVD_DQN_PREEMPT_AT): its run dir and step. Copy it before resuming it."""
    run_dir = tmp_path_factory.mktemp("default-cartpole") / "np2"
    proc = run(
        _hvd(2, "--config", CONFIG, "--run-dir", run_dir, controller="mpi"),
        timeout=900,
        HVD_DQN_TEST_HOOKS="1",
        HVD_DQN_PREEMPT_AT=f"0:{STOP_AT}",
    )
    output = proc.stdout + proc.stderr
    assert set(re.findall(r"Exit code:\s+(\d+)", output)) == {"75"}, output  # mpirun's report of the ranks' exits
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").is_file()
    step = int(ckpts[0].name.split("-")[1])
    assert step == -(-STOP_AT // 256) * 256  # decision points fall every train_every = 256 global env steps
    return run_dir, step


def _resume_copy(stopped, tmp_path, name, np_, capsys=None, code=0):
    """A copy of ``stopped`` resumed at np ``np_``: under horovodrun, or at np=1 through cli.main in this process
    (``capsys``); it must exit with ``code``. (Its run dir, its output.)"""
    run_dir = tmp_path / name
    shutil.copytree(stopped, run_dir)
    return run_dir, _resume(run_dir, np_, capsys, code)


def _resume(run_dir, np_, capsys=None, code=0):
    if np_ == 1:
        proc = main_here(capsys, "train", "--resume", run_dir)
    else:
        proc = run(_hvd(np_, "--resume", run_dir), timeout=900)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _bits(ckpt):
    """What a checkpoint holds of the run, bit for bit: its manifest's digests (the replay, the actor's and the
    model's files) and state.json's weight checksum and training counters (its own digest also covers the write
    times)."""
    files = json.loads((ckpt / "COMPLETE").read_text())["files"]
    state = json.loads((ckpt / "state.json").read_text())
    training = {k: v for k, v in state["training"].items() if "wall" not in k}
    digests = {name: entry["sha256"] for name, entry in files.items() if name != "state.json"}
    return digests, state["weights_checksum"], training


def _expected_updates(step, new_np):
    cfg = Config.from_yaml(CONFIG)
    before = len(learning_phases(cfg, 2, until=step)) * updates_per_phase(cfg, 2)
    after = len([s for s in learning_phases(cfg, new_np) if s > step]) * updates_per_phase(cfg, new_np)
    return before + after


@pytest.mark.multiproc
def test_np2_resumed_at_np1_twice_completes_solves_and_is_deterministic(stopped_at_np2, tmp_path, capsys, monkeypatch):
    stopped, step = stopped_at_np2
    phase = step + 256  # the first learning phase after the resume: train_every 256 global env steps
    monkeypatch.setenv("HVD_DQN_PREEMPT_AT", f"0:{step + 1}")
    first, output = _resume_copy(stopped, tmp_path, "a", 1, capsys, code=75)
    second, _ = _resume_copy(stopped, tmp_path, "b", 1, capsys, code=75)
    ckpt = [first / "checkpoints" / f"ckpt-{phase}", second / "checkpoints" / f"ckpt-{phase}"]
    assert all((c / "COMPLETE").is_file() for c in ckpt)
    digests, checksum, training = _bits(ckpt[0])
    assert {"replay-rank0.npz", "rank0.json"} <= digests.keys() and training["env_steps"] == phase
    assert _bits(ckpt[1]) == (digests, checksum, training)  # the same N -> N' resume twice: the same run
    monkeypatch.delenv("HVD_DQN_PREEMPT_AT")
    _resume(first, 1, capsys)
    a = _summary(first)
    assert a["world_size"] == 1 and a["env_steps"] == 50000
    assert a["solved_env_steps"] is not None and a["solved_env_steps"] > step  # it still learns the task
    assert a["updates"] == _expected_updates(step, 1)
    # the one line: what moved where (the 2 ranks' replay onto 1, rank 1's pending 3-step starts flushed)
    line = next(ln for ln in output.splitlines() if "was written by 2 ranks" in ln)
    assert line.startswith(f"hvd-dqn: ckpt-{step} was written by 2 ranks, this job has 1: ")
    assert (
        "n-step starts of the envs that ended) dealt out to 1 rank; rank 1's envs ended; the scaling rule "
        "is recomputed for 1 rank" in line
    )
    rows = [json.loads(ln) for ln in (first / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert [(r["env_steps"], r["checkpoint_world_size"], r["world_size"]) for r in resumed] == [
        (step, 2, 1),
        (phase, 1, 1),
    ]


@pytest.mark.multiproc
def test_np2_resumed_at_np4_completes_and_solves(stopped_at_np2, tmp_path):
    """Stopped under the MPI controller, resumed under Gloo: the checkpoint does not depend on the controller."""
    stopped, step = stopped_at_np2
    run_dir, output = _resume_copy(stopped, tmp_path, "c", 4)
    s = _summary(run_dir)
    assert s["world_size"] == 4 and s["env_steps"] == 50000 and len(set(s["replica_checksums"])) == 1
    assert s["solved_env_steps"] is not None and s["solved_env_steps"] > step
    assert s["updates"] == _expected_updates(step, 4)
    assert "this job has 4: " in output and "ranks 2..3 start new envs" in output
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["checkpoint_world_size"], r["world_size"]) for r in rows if r.get("event") == "resumed"] == [(2, 4)]


def test_a_step_the_new_world_size_cannot_reach_is_refused_in_one_line(tmp_path, tiny_cartpole, capsys):
    """1 env per rank, 1,001 steps at np=1 (through cli.main here): 2 ranks (horovodrun) step 2 at a time and
    never stand at step 1,001."""
    run_dir = tmp_path / "run"
    proc = main_here(capsys, "train", "--config", tiny_cartpole, "--run-dir", run_dir, "--set", "total_env_steps=1001")
    assert proc.returncode == 0, proc.stderr
    proc = run(_hvd(2, "--resume", run_dir), timeout=300)
    assert proc.returncode != 0
    assert (
        "written at global env step 1001, which 2 ranks of 1 envs (2 env steps per vector step) cannot reach; "
        "resume with 1 ranks, or from a checkpoint at a learning phase's end"
    ) in proc.stdout + proc.stderr
    assert "<stderr>:Traceback" not in proc.stdout + proc.stderr  # none from the ranks (horovodrun prints its own)


def test_atari_checkpoints_keep_their_world_size():
    state = {"world_size": 2, "config": {}}
    check_compatible(ROOT, state, {}, 2, resizable=False)  # same size: fine
    check_compatible(ROOT, state, {}, 4, resizable=True)  # classic control: dealt out
    with pytest.raises(
        CheckpointError,
        match="written by 2 ranks, this job has 4: resume with 2 ranks .*frame "
        "replay .* cannot be dealt out to another number of ranks",
    ):
        check_compatible(ROOT, state, {}, 4, resizable=False)
