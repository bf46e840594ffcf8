"""`hvd-dqn train --restart` (what `make train` runs): a new run in a run dir that holds an earlier one deletes only
what a run writes there, under the run dir's lock, and refuses, deleting nothing, in every other case."""

import json
import os

import pytest

from conftest import BIN, HOROVODRUN, TINY_RUN, main_here, run
from hvd_dqn import Config, Trainer, cli
from hvd_dqn.runlock import RunLock

TINY = TINY_RUN  # seed 3


def _tree(root):
    """Every file under ``root`` with its bytes (symlinks as their target), to show that nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def _config_file(tmp_path, **changes):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "".join(f"{k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}\n" for k, v in {**TINY, **changes}.items())
    )
    return path


def _last_error(capsys):
    return _last_line(capsys.readouterr().err)


def _last_line(err):
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in "\n".join(lines)
    return lines[-1]


@pytest.fixture(scope="module")
def earlier(tiny_run, tmp_path_factory):
    """A finished run (conftest's, seed 3) and, for comparison, a fresh run of seed 4 in a dir of its own."""
    fresh = Trainer(Config(**{**TINY, "seed": 4}), run_dir=tmp_path_factory.mktemp("restart") / "fresh").train()
    return tiny_run, fresh


def _copy_of(earlier, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(earlier, dst, symlinks=True)
    return dst


def test_restart_replaces_the_earlier_run_with_a_fresh_one(earlier, tmp_path, capsys):
    run_dir = _copy_of(earlier[0], tmp_path)
    (run_dir / ".metrics.tmp4242.jsonl").write_text("half a file left by a killed process\n")
    assert (run_dir / "checkpoints" / "ckpt-1200").is_dir()
    cfg = _config_file(tmp_path, seed=4)
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--restart"]) == 0
    err = capsys.readouterr().err
    assert (
        f"hvd-dqn: run dir {run_dir}: --restart deleted the earlier run's .heartbeat, .metrics.tmp4242.jsonl, "
        f"best, checkpoints, config.json, metrics.jsonl, q_network.keras, summary.json, tensorboard"
    ) in err, err
    summary = json.loads((run_dir / "summary.json").read_text())
    fresh = earlier[1]
    # the same run as seed 4 trained into an empty dir: the same weights, and nothing of seed 3's left behind
    assert summary["replica_checksums"] == fresh["replica_checksums"]
    assert summary["final_eval_return_mean"] == fresh["final_eval_return_mean"]
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 4
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [300, 600, 900, 1200]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-1200", "ckpt-800"]
    assert not (run_dir / ".metrics.tmp4242.jsonl").exists()


def test_restart_into_a_new_or_empty_dir_is_a_plain_new_run(tmp_path, capsys):
    cfg = _config_file(tmp_path, total_env_steps=400, checkpoint_every=None, eval_every=400)
    (tmp_path / "empty").mkdir()
    for run_dir in (tmp_path / "empty", tmp_path / "new"):
        assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--restart"]) == 0
        assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 400
    assert "--restart deleted" not in capsys.readouterr().err


@pytest.mark.parametrize("stranger", ["notes.txt", "data/", "ckpt-1200.keras"])
def test_restart_refuses_a_dir_that_holds_anything_a_run_does_not_write(earlier, tmp_path, capsys, stranger):
    run_dir = _copy_of(earlier[0], tmp_path)
    if stranger.endswith("/"):
        (run_dir / stranger).mkdir()
        (run_dir / stranger / "kept.bin").write_bytes(b"\x00\x01")
    else:
        (run_dir / stranger).write_text("a user's own file\n")
    before = _tree(run_dir)
    cfg = _config_file(tmp_path, seed=4)
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--restart"]) == 2
    name = stranger.rstrip("/")
    assert _last_error(capsys) == (
        f"hvd-dqn: error: --restart: run dir {run_dir} holds {name!r}, which no hvd-dqn run writes; nothing was "
        f"deleted: move it away, or train into another --run-dir"
    )
    assert _tree(run_dir) == before


def test_restart_refuses_a_users_directory_naming_how_many_files_are_not_a_runs(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("thesis.tex", "figures", ".bashrc", "config.json"):
        (home / name).write_text(name)
    before = _tree(home)
    cfg = _config_file(tmp_path)
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(home), "--restart"]) == 2
    assert _last_error(capsys) == (
        f"hvd-dqn: error: --restart: run dir {home} holds '.bashrc' and 2 more, which no hvd-dqn run writes; "
        f"nothing was deleted: move it away, or train into another --run-dir"
    )
    assert _tree(home) == before


def test_restart_removes_a_symlink_and_never_what_it_points_to(earlier, tmp_path, capsys):
    """checkpoints/ and best/ moved out of the run dir and linked back: the links go, what they point to stays."""
    run_dir = _copy_of(earlier[0], tmp_path)
    links = {"checkpoints": tmp_path / "users-checkpoints", "best": tmp_path / "users-best"}
    for name, elsewhere in links.items():
        (run_dir / name).rename(elsewhere)
        (run_dir / name).symlink_to(elsewhere)
    before = {name: _tree(elsewhere) for name, elsewhere in links.items()}
    assert before["best"]  # the earlier run's best/ was there to move
    cfg = _config_file(tmp_path, seed=4)
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--restart"]) == 0
    assert not (run_dir / "checkpoints").is_symlink() and not (run_dir / "best").is_symlink()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-1200", "ckpt-800"]
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["config.json", "eval.json", "q_network.keras"]
    assert {name: _tree(elsewhere) for name, elsewhere in links.items()} == before


def test_restart_refuses_a_run_dir_that_a_job_holds(earlier, tmp_path, capsys):
    run_dir = _copy_of(earlier[0], tmp_path)
    before = _tree(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        cfg = _config_file(tmp_path, seed=4)
        assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--restart"]) == 2
        assert _last_error(capsys) == (
            f"hvd-dqn: error: run dir {run_dir} is in use by another run of this process (pid {os.getpid()})"
        )
    finally:
        lock.release()
    assert {k: v for k, v in _tree(run_dir).items() if k != ".hvd-dqn.lock"} == {
        k: v for k, v in before.items() if k != ".hvd-dqn.lock"
    }


@pytest.mark.parametrize("args", [["--resume", "RUN"], ["--elastic", "--run-dir", "RUN"], []])
def test_restart_needs_a_run_dir_and_no_resume_or_elastic(tmp_path, capsys, args):
    cfg = _config_file(tmp_path)
    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    assert cli.main(["train", "--config", str(cfg), "--restart", *args]) == 2
    assert _last_error(capsys) == (
        "hvd-dqn: error: --restart starts a new run in an existing --run-dir: it needs --run-dir, and neither "
        "--resume nor --elastic (an elastic job's new rank 0 would delete the job's own checkpoints)"
    )
    assert not (tmp_path / "run").exists()


def test_the_elastic_trainer_refuses_restart_in_the_python_api(tmp_path):
    from hvd_dqn.elastic import ElasticTrainer
    from hvd_dqn.errors import UserError

    with pytest.raises(
        UserError,
        match=r"^restart cannot be combined with elastic training \(an elastic job's new "
        r"rank 0 would delete the job's own checkpoints\)$",
    ):
        ElasticTrainer(Config(env_id="CartPole-v1"), tmp_path / "run", restart=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.multiproc
def test_two_ranks_restart_over_an_earlier_run(earlier, tmp_path, capsys):
    """Rank 0 deletes under the lock before any rank looks for checkpoints: both ranks start the new run (rank 1
    looking first would find the earlier run's checkpoints and refuse, or resume them). The earlier run is the
    session's one-rank run (conftest's tiny_run): what the ranks must not find is its checkpoints, whatever world
    size wrote them. Without --restart the same run dir is refused: shown in this process, since each rank refuses
    on its own, before any collective (runsetup.resume_point), and a refusal ending both ranks of a job is
    test_job_safety's."""
    run_dir = _copy_of(earlier[0], tmp_path)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-1200", "ckpt-800"]
    cfg = _config_file(tmp_path, total_env_steps=800, eval_every=800, checkpoint_every=400)
    train = ["train", "--config", cfg, "--run-dir", run_dir]
    refused = main_here(capsys, *train)
    assert refused.returncode == 2 and _last_line(refused.stderr) == (
        f"hvd-dqn: error: run dir {run_dir} holds the checkpoints of an earlier run: continue it with "
        f"--resume {run_dir}, or train into another --run-dir"
    )
    horovodrun = [HOROVODRUN, "-np", "2", "--mpi", "-H", "localhost:2", BIN / "hvd-dqn", *train]
    again = run([*horovodrun, "--restart", "--set", "seed=4"], timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    out = again.stdout + again.stderr
    assert out.count("--restart deleted the earlier run's") == 1, out  # rank 0 alone
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["env_steps"] == 800
    assert len(set(summary["replica_checksums"])) == 1
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-400", "ckpt-800"]
