"""``export`` deletes nothing it did not create, and loading a model runs no code from the file: the OUT_DIRs
that are refused (the run dir, a dir around or inside it, a user's own dir or file, ``.``), an earlier export
replaced whole, and HDF5 or Lambda models refused before any of their code can run. Most commands run through
cli.main in this process (``hvd``); a few run as real hvd-dqn processes (``hvd_dqn``)."""

import json
import os
from pathlib import Path

import pytest

from conftest import BIN, SMOKE, main_here, run
from hvd_dqn import Config, Trainer, cli, serving
from hvd_dqn.errors import UserError
from test_user_surface import TF_CHATTER

TINY = {**SMOKE, "seed": 5, "replay_capacity": 600, "checkpoint_every": 300, "checkpoint_every_minutes": 30.0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "runs" / "x"
    Trainer(Config(**TINY), run_dir=run_dir).train()
    return run_dir


def hvd_dqn(*args, cwd=None):
    return run([BIN / "hvd-dqn", *args], timeout=300, cwd=cwd)


@pytest.fixture
def hvd(capsys):
    """``hvd(*args, cwd=None)``: hvd-dqn through cli.main in this process, in ``cwd`` (then back)."""

    def call(*args, cwd=None):
        with pytest.MonkeyPatch.context() as mp:
            if cwd is not None:
                mp.chdir(cwd)
            return main_here(capsys, *args)

    return call


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not TF_CHATTER.match(line)]
    assert len(lines) == 1 and lines[0].startswith("hvd-dqn: error: "), proc.stderr
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: what must come out of a refused export unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def _contents(path: Path):
    return tree(path) if path.is_dir() else path.read_bytes() if path.exists() else None


# ------------------------------------------------------------------ OUT_DIRs that are not ours to replace
@pytest.mark.parametrize(
    "where, fragment",
    [
        ("run", "is or contains the run dir"),
        ("parent", "is or contains the run dir"),
        ("inside", "is inside the run dir"),
        (
            "user_dir",
            "exists and is not an earlier hvd-dqn export (no export.json of ours): give a new path; "
            "nothing was written",
        ),
        ("user_file", "exists and is not an earlier hvd-dqn export"),
        ("export_plus_user_file", "is an earlier export but also holds 'notes.txt', which hvd-dqn did not write"),
    ],
)
def test_export_refuses_an_out_dir_it_did_not_create(run_dir, tmp_path, where, fragment, hvd):
    mine = tmp_path / "mydata"
    out = {
        "run": run_dir,
        "parent": run_dir.parent,
        "inside": run_dir / "export",
        "user_dir": mine,
        "user_file": tmp_path / "model.bin",
        "export_plus_user_file": tmp_path / "policy",
    }[where]
    if where == "user_dir":
        mine.mkdir()
        (mine / "thesis.tex").write_text("years of work")
    elif where == "user_file":
        out.write_bytes(b"someone's file")
    elif where == "export_plus_user_file":
        assert hvd("export", run_dir, out).returncode == 0
        (out / "notes.txt").write_text("mine")
    before_run, before_out = tree(run_dir), _contents(out)
    line = one_line_error(hvd("export", run_dir, out))
    assert f"export OUT_DIR {out} " in line and fragment in line, line
    assert tree(run_dir) == before_run  # the run's checkpoints, metrics, model: all still there
    assert len(before_run) > 5 and any(name.startswith("checkpoints/ckpt-600/") for name in before_run)
    assert _contents(out) == before_out  # "inside": still not there
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp dir left


def test_export_to_dot_is_a_one_line_error_not_a_traceback(run_dir, tmp_path, hvd):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("keep")
    line = one_line_error(hvd_dqn("export", run_dir, ".", cwd=cwd))
    assert line == (
        "hvd-dqn: error: export OUT_DIR . exists and is not an earlier hvd-dqn export (no export.json "
        "of ours): give a new path; nothing was written"
    )
    assert tree(cwd) == {"keep.txt": b"keep"}
    # "." inside the run dir, and the run dir's parent as ".": both refused before anything is written
    assert "is inside the run dir" in one_line_error(hvd("export", run_dir, ".", cwd=run_dir / "checkpoints"))
    assert "is or contains the run dir" in one_line_error(hvd("export", "x", ".", cwd=run_dir.parent))


def test_an_earlier_export_is_replaced_whole(run_dir, tmp_path, hvd):
    out = tmp_path / "policy"
    first = hvd("export", run_dir, out)
    assert first.returncode == 0, first.stderr
    meta = json.loads((out / "export.json").read_text())
    assert meta["format"] == "hvd-dqn-export" and meta["n_actions"] == 2
    inode = out.stat().st_ino
    (out / "export.json").write_text(json.dumps({**meta, "env_id": "stale"}))
    again = hvd("export", run_dir, out)
    assert again.returncode == 0, again.stderr
    assert out.stat().st_ino != inode  # a new directory renamed into place, not the old one rewritten
    assert json.loads((out / "export.json").read_text())["env_id"] == "CartPole-v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # nothing left beside it


def test_an_export_that_fails_midway_leaves_the_earlier_one_untouched(run_dir, tmp_path, monkeypatch, capsys):
    """Single process, in process: the SavedModel write fails after the temp dir exists."""
    import tensorflow as tf

    out = tmp_path / "policy"
    serving.export(run_dir, out)
    before = tree(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        serving.export(run_dir, out)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    # the CLI says it in one line, no traceback
    assert cli.main(["export", str(run_dir), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hvd-dqn: error: export failed: [Errno 28] No space left on device"], err
    assert tree(out) == before


# ------------------------------------------------------------------ models that would run code when loaded
def _model_with_marker_lambda(marker: Path):
    from hvd_dqn.keras2 import keras

    touch = eval(f"lambda x: (open({str(marker)!r}, 'a').close(), x)[1]")  # noqa: S307 - the test's own code
    return keras.Sequential([keras.Input((4,)), keras.layers.Lambda(touch), keras.layers.Dense(2)])


@pytest.fixture
def hdf5_run(run_dir, tmp_path):
    """A copy of the run whose q_network.keras is an HDF5 file with a Lambda that creates ``marker``."""
    import shutil

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model = _model_with_marker_lambda(marker)
    model.save(tmp_path / "evil.h5")
    os.replace(tmp_path / "evil.h5", run / "q_network.keras")
    marker.unlink()  # building the model ran the Lambda once, here
    assert (run / "q_network.keras").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    return run, marker


@pytest.mark.parametrize("command", ["evaluate", "export", "evaluate_file"])
def test_an_hdf5_model_is_refused_and_its_code_never_runs(hdf5_run, tmp_path, command, hvd):
    run, marker = hdf5_run
    model = run / "q_network.keras"
    args = {
        "evaluate": ["evaluate", run, "--episodes", "1"],
        "export": ["export", run, tmp_path / "out"],
        "evaluate_file": ["evaluate", model, "--env", "CartPole-v1", "--episodes", "1"],
    }[command]
    line = one_line_error(hvd(*args))
    assert line == (
        f"hvd-dqn: error: {model}: refused: an HDF5 file, not the .keras zip format (only that "
        f"format is loaded, because loading the others can run code stored in the file)"
    )
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_keras_zip_with_a_lambda_is_refused(tmp_path):
    marker = tmp_path / "marker"
    model_file = tmp_path / "lambda.keras"
    _model_with_marker_lambda(marker).save(model_file)
    marker.unlink()
    line = one_line_error(hvd_dqn("evaluate", model_file, "--env", "CartPole-v1", "--episodes", "1"))
    assert line == (
        f"hvd-dqn: error: {model_file}: refused: the model holds a Lambda layer, whose Python code would run on loading"
    )
    assert not marker.exists()


def test_a_keras_zip_naming_an_object_outside_keras_is_refused_before_keras_reads_it(tmp_path):
    """tf_keras' safe_mode would import an activation from any module a config names; ours refuses it."""
    import zipfile

    from hvd_dqn.keras2 import keras

    good = tmp_path / "good.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(good)
    serving._check_keras_zip(good)  # a plain model passes
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"]["activation"] = {
                    "module": "os",
                    "class_name": "function",
                    "config": "system",
                    "registered_name": None,
                }
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(UserError, match=r"refused: the model names os.function, which is not part of Keras"):
        serving.load_policy(bad)


def test_a_loaded_policy_is_traced_once_for_every_batch_size(tmp_path):
    """`evaluate` plays its episodes as one shrinking batch: one TF trace must serve every batch size, or TF
    retraces per size and prints its retracing warning into the evaluation's output."""
    import logging

    import numpy as np

    from hvd_dqn.keras2 import keras

    model_file = tmp_path / "q.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(model_file)
    policy = serving.load_policy(model_file)
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for n in range(12, 0, -1):
            assert policy.q_fn(np.zeros((n, 4), np.float32)).shape == (n, 2)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen if "retracing" in r.getMessage()] == []
