"""What a run on a shared cluster meets in its run dir (issue 32, item 3): a symlink that leads out of the run dir
is never followed by pruning, ``--restart`` or ``export``, and a metrics.jsonl whose last line a kill cut short is
read by ``plot`` and ``table`` without it, and appended to by a resumed run on a line of its own. The replay that
cannot fit the host's memory: tests/test_replay.py. ``--restart`` and links: tests/test_restart.py."""

import io
import json
import os
from pathlib import Path

import pytest

from hvd_dqn import checkpoint, cli, runlock, runsetup, trainstate
from hvd_dqn.errors import UserError
from hvd_dqn.metrics import RunLogger
from test_sweeps import finished, make_run


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: files with their bytes, links with their target, dirs as such."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = (
                ("-> " + os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
            )
    return out


def _complete_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "COMPLETE").write_text("{}")
    (path / "state.json").write_text('{"someone": "else"}')
    return path


# ---------------------------------------------------------------------------------------------- pruning
def test_pruning_deletes_nothing_in_a_checkpoints_dir_that_links_out_of_the_run_dir(tmp_path):
    """Another run's checkpoints, reached through RUN/checkpoints -> elsewhere: none is pruned, not even the
    leftovers of a write, which the lock's holder would otherwise remove."""
    elsewhere = tmp_path / "scratch" / "checkpoints"
    for step in (100, 200, 300):
        _complete_checkpoint(elsewhere / f"ckpt-{step}")
    (elsewhere / "ckpt-400.tmp").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(elsewhere)
    before = _tree(elsewhere)
    lock = runlock.RunLock(run_dir).acquire()
    try:
        checkpoint.prune(run_dir, keep=1, current=run_dir / "checkpoints" / "ckpt-300")
    finally:
        lock.release()
    assert _tree(elsewhere) == before


def test_a_link_named_like_a_checkpoint_is_not_one_of_the_runs(tmp_path):
    ours = tmp_path / "run" / "checkpoints"
    for step in (100, 200):
        _complete_checkpoint(ours / f"ckpt-{step}")
    theirs = _complete_checkpoint(tmp_path / "other-run" / "ckpt-900")
    (ours / "ckpt-900").symlink_to(theirs)
    (ours / "ckpt-950.tmp").symlink_to(theirs)
    run_dir = tmp_path / "run"
    # neither resumed from nor counted among the checkpoints kept
    assert checkpoint.listed(run_dir) == [ours / "ckpt-100", ours / "ckpt-200"]
    assert checkpoint.latest(run_dir) == ours / "ckpt-200"
    before = _tree(tmp_path / "other-run")
    lock = runlock.RunLock(run_dir).acquire()
    try:
        checkpoint.prune(run_dir, keep=1, current=ours / "ckpt-200")
    finally:
        lock.release()
    assert sorted(p.name for p in ours.iterdir()) == ["ckpt-200", "ckpt-900", "ckpt-950.tmp"]
    assert (ours / "ckpt-900").is_symlink() and (ours / "ckpt-950.tmp").is_symlink()
    assert _tree(tmp_path / "other-run") == before


@pytest.mark.parametrize("resume", [False, True])
def test_training_refuses_a_checkpoints_link_out_of_the_run_dir(tmp_path, resume):
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(UserError) as err:
        runsetup.resume_point(run_dir, resume)
    assert str(err.value) == (
        f"run dir {run_dir}: checkpoints is a symlink to {elsewhere}, outside the run dir; hvd-dqn deletes old "
        f"checkpoints in it and follows no link out of a run dir: remove the link, or give a --run-dir on that "
        f"filesystem"
    )
    # a link that stays inside the run dir is the run's own
    (run_dir / "checkpoints").unlink()
    (run_dir / "ckpts").mkdir()
    (run_dir / "checkpoints").symlink_to("ckpts")
    assert runsetup.resume_point(run_dir, False) is None


def test_train_into_a_run_dir_with_such_a_link_is_one_line_and_writes_nothing(tmp_path, capsys):
    elsewhere = tmp_path / "scratch"
    _complete_checkpoint(elsewhere / "ckpt-100")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(elsewhere)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("env_id: CartPole-v1\ntotal_env_steps: 400\nlearning_starts: 100\n")
    before = _tree(elsewhere)
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"hvd-dqn: error: run dir {run_dir}: checkpoints is a symlink to {elsewhere}, outside the run dir"
    ) and "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in run_dir.iterdir()) == [".hvd-dqn.lock", "checkpoints"]
    assert _tree(elsewhere) == before


# ---------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from hvd_dqn.checkpoint import save_keras_model
    from hvd_dqn.keras2 import keras

    path = tmp_path_factory.mktemp("model") / "q_network.keras"
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    save_keras_model(model, path)
    return path


def _export_run(tmp_path, model_file) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"env_id": "CartPole-v1"}\n')
    (run_dir / "q_network.keras").write_bytes(model_file.read_bytes())
    return run_dir


def test_export_does_not_read_a_model_through_a_link_out_of_the_run_dir(tmp_path, model_file, capsys):
    run_dir = _export_run(tmp_path, model_file)
    (run_dir / "q_network.keras").unlink()
    (run_dir / "q_network.keras").symlink_to(model_file)
    assert cli.main(["export", str(run_dir), str(tmp_path / "policy")]) == 2
    assert capsys.readouterr().err == (
        f"hvd-dqn: error: {run_dir / 'q_network.keras'}: a symlink to {model_file}, outside the run dir; hvd-dqn "
        f"reads a run's own files only and follows no link out of a run dir\n"
    )
    assert not (tmp_path / "policy").exists()


def test_export_does_not_write_through_a_link_in_the_run_dir(tmp_path, model_file, capsys):
    """RUN/tensorboard -> a shared dir that holds an earlier export (someone else's): ``export RUN
    RUN/tensorboard/policy`` is an export into the run dir, refused; the shared dir is left as it was."""
    run_dir = _export_run(tmp_path, model_file)
    shared = tmp_path / "shared"
    (shared / "policy").mkdir(parents=True)
    (shared / "policy" / "export.json").write_text(json.dumps({"format": "hvd-dqn-export", "from_run": "theirs"}))
    (run_dir / "tensorboard").symlink_to(shared)
    before = _tree(shared)
    out = run_dir / "tensorboard" / "policy"
    assert cli.main(["export", str(run_dir), str(out)]) == 2
    assert capsys.readouterr().err == (
        f"hvd-dqn: error: export OUT_DIR {out} is inside the run dir {run_dir}: give a directory outside it\n"
    )
    assert _tree(shared) == before
    # a run dir reached through a link of its own is still the run dir: its files are read, the export is made
    (tmp_path / "latest").symlink_to(run_dir)
    assert cli.main(["export", str(tmp_path / "latest"), str(tmp_path / "policy")]) == 0
    assert (tmp_path / "policy" / "q_network.keras").read_bytes() == model_file.read_bytes()


# ---------------------------------------------------------------------------------------------- a cut last line
CUT = '{"env_steps": 3500, "wall_s": 7.5, "charts/episo'


def _cut_run(tmp_path) -> Path:
    run_dir = make_run(
        tmp_path / "runs",
        "cp-seed0",
        [(1000, 2.0, 10.0), (2000, 4.0, 200.0), (3000, 6.0, 500.0)],
        finished(3000, 6.0, 500.0),
        exp_name="cp",
        seed=0,
    )
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(CUT)
    return run_dir


def test_table_and_plot_leave_out_a_cut_last_line_with_a_note(tmp_path, capsys):
    run_dir = _cut_run(tmp_path)
    note = (
        f"hvd-dqn: {run_dir / 'metrics.jsonl'}: its last line (line 7) is cut short, as a run killed while "
        f"writing it leaves it; left out\n"
    )
    assert cli.main(["table", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == "| cp | 1 | 2 | 475 | 1/1 | 3,000 | 6.0 | 500.0 (500.0 to 500.0) |"
    assert out.err == note
    png = tmp_path / "curves.png"
    assert cli.main(["plot", str(run_dir), "-o", str(png)]) == 0
    assert capsys.readouterr().err == note and png.stat().st_size > 10_000
    assert cli.main(["plot", "--group", str(run_dir), "-o", str(png)]) == 0
    assert capsys.readouterr().err == note


def test_a_line_that_is_not_json_before_the_last_is_still_an_error(tmp_path, capsys):
    run_dir = _cut_run(tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"env_steps": 3500, "wall_s": 8.0}) + "\n")
    assert cli.main(["table", str(run_dir)]) == 2
    assert capsys.readouterr().err == f"hvd-dqn: error: {run_dir / 'metrics.jsonl'}: line 7 is not JSON\n"


@pytest.mark.parametrize("trim", [True, False])
@pytest.mark.parametrize("last", [CUT, json.dumps({"env_steps": 3000, "wall_s": 6.5})])
def test_rows_appended_after_a_cut_line_start_lines_of_their_own(tmp_path, last, trim):
    """As a resumed run does (metrics trimmed to its checkpoint, then appended to; the trim alone already
    dropped half a row) and an elastic job's new rank 0 (appended to): half a row is dropped, a whole row that
    lost only its newline is kept."""
    run_dir = _cut_run(tmp_path)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[: -len(CUT)] + last)
    whole = last != CUT
    if trim:
        trainstate.trim_metrics(run_dir, run_dir / "checkpoints" / "ckpt-3000")
    logger = RunLogger(run_dir, enabled=True, tensorboard=False, stream=io.StringIO())
    logger.log({"env_steps": 3000, "wall_s": 9.0, "event": "resumed"})
    logger.close()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [950, 1000, 1950, 2000, 2950, 3000] + [3000] * whole + [3000]
    assert rows[-1]["event"] == "resumed"


def test_end_cut_line_leaves_a_whole_file_as_it_is(tmp_path):
    path = tmp_path / "metrics.jsonl"
    from hvd_dqn.metrics import end_cut_line

    end_cut_line(path)  # no file: nothing to do, nothing created
    assert not path.exists()
    for text in ("", '{"a": 1}\n', '{"a": 1}\n{"b": 2}\n'):
        path.write_text(text)
        end_cut_line(path)
        assert path.read_text() == text
    path.write_text('{"a": 1}\n{"b"')
    end_cut_line(path)
    assert path.read_text() == '{"a": 1}\n'
    path.write_text('{"a"')
    end_cut_line(path)
    assert path.read_text() == ""
