"""Bad input and faults a user can cause (issue 14, items 7-9): each is exactly one line on stderr, exit code 2, no
traceback, a short message whatever the size of the input, and nothing of the user's lost. Each row of the tables
below is a row of the reliability table (docs/reliability.md). The refusals run ``cli.main`` in this process (its
exit code and captured stderr); a bad config (``train``) and a malformed config.json (``export``) once more as a real
``hvd-dqn`` process: the exit code and the one line a user sees. A bad HVD_DQN_TERM_GRACE_S takes the same way out
of ``cli.main`` (UserError, one line, exit 2), after TensorFlow's import, whose start-up writes nothing on stderr in
a real process (test_quiet.py's one-rank run)."""

import errno
import hashlib
import json
import os
import shutil
import sys
import time

import pytest

from conftest import BIN, HOROVODRUN, main_here, run
from hvd_dqn import Config, Trainer, cli
from hvd_dqn.errors import UserError

GOOD = "env_id: CartPole-v1\ntotal_env_steps: 1000\nlearning_starts: 100\n"
BIG_INT = "1" + "0" * 4999  # 5,000 digits: past Python's int-to-str limit of 4,300
# "billion laughs": 410 bytes of nested aliases that expand to 9^9 strings (322 MB in one error line before)
BOMB = (
    "env_id: CartPole-v1\n"
    + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    + "seed: *i\n"
)
MAX_STDERR = 4096


def assert_one_line(proc, fragment):
    """Exit 2, one line on stderr (TensorFlow's start-up chatter aside), naming the problem; short and fast."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(proc.stderr) < MAX_STDERR, len(proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hvd-dqn")]
    assert len(lines) == 1 and lines[0].startswith("hvd-dqn: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ config errors, through `hvd-dqn train`
CONFIG_CASES = {
    # item 7: tracebacks before
    "5000-digit int in --set": (
        GOOD,
        ["--set", f"seed={BIG_INT}"],
        "--set 'seed': an integer with more than 4300 digits",
    ),
    "5000-digit int in YAML": (GOOD + f"seed: {BIG_INT}\n", [], "an integer with more than 4300 digits"),
    "priority_epsilon .inf": (
        GOOD + "prioritized_replay: true\npriority_epsilon: .inf\n",
        [],
        "priority_epsilon: Input should be a finite number",
    ),
    # item 8: silent successes before
    "learning_starts = total_env_steps": (
        GOOD,
        ["--set", "learning_starts=1000"],
        "learning_starts 1000 must be below total_env_steps 1000",
    ),
    "no learning phase before the end": (
        GOOD,
        ["--set", "learning_starts=900", "--set", "train_every=256"],
        "no learning phase falls due: the first would end at global env step 1,024",
    ),
    "adam_epsilon .inf": (GOOD + "adam_epsilon: .inf\n", [], "adam_epsilon: Input should be a finite number"),
    "huber_delta .inf": (GOOD, ["--set", "huber_delta=.inf"], "huber_delta: Input should be a finite number"),
    "max_grad_norm .inf": (GOOD, ["--set", "max_grad_norm=.inf"], "max_grad_norm: Input should be a finite number"),
    "epsilon_spread .inf": (GOOD, ["--set", "epsilon_spread=.inf"], "epsilon_spread: Input should be a finite number"),
    "learning_rate .nan": (GOOD, ["--set", "learning_rate=.nan"], "learning_rate: Input should be a finite number"),
    "hidden layer 8193 wide": (GOOD, ["--set", "hidden_sizes=[8193]"], "each layer at most 8192 wide, got 8193"),
    "9 hidden layers": (GOOD, ["--set", "hidden_sizes=[8,8,8,8,8,8,8,8,8]"], "at most 8 layers, got 9"),
    "eval_episodes 1001": (
        GOOD,
        ["--set", "eval_episodes=1001"],
        "eval_episodes: Input should be less than or equal to 1000",
    ),
    "2049 updates per target period": (
        GOOD,
        ["--set", "updates_per_train=2049", "--set", "target_update_every=2049", "--set", "learning_starts=0"],
        "each rank would sample 2,049 updates x 64 transitions = 131,136 at once",
    ),
    # item 9: bounded errors
    "YAML alias bomb": (BOMB, [], "YAML aliases (*a) are not allowed in a config"),
    "100k-character value": (
        GOOD,
        ["--set", "seed=" + "x" * 100_000],
        f"seed: Input should be a valid integer (got '{'x' * 59}... (100,002 characters))",
    ),
    "2 MB config file": (GOOD + "# padding\n" * 200_000, [], "too big for a config (at most 1,048,576)"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_is_one_short_line_exit_2(case, tmp_path, capsys):
    content, args, fragment = CONFIG_CASES[case]
    path = tmp_path / "c.yaml"
    path.write_text(content)
    started = time.monotonic()
    proc = main_here(capsys, "train", "--config", path, "--run-dir", tmp_path / "run", *args)
    line = assert_one_line(proc, fragment)
    assert len(line) < 600, line
    assert time.monotonic() - started < 60  # (the bomb took 10.7 s and 322 MB before)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_bad_config_is_one_short_line_exit_2_from_the_command(tmp_path):
    """The same from a real `hvd-dqn` process: a config refused before Horovod and TensorFlow start (the biggest
    case, the alias bomb; the message of each case is the same in this process)."""
    content, args, fragment = CONFIG_CASES["YAML alias bomb"]
    path = tmp_path / "c.yaml"
    path.write_text(content)
    proc = run(
        [sys.executable, "-m", "hvd_dqn.cli", "train", "--config", path, "--run-dir", tmp_path / "run", *args],
        timeout=120,
    )
    assert len(assert_one_line(proc, fragment)) < 600
    assert not (tmp_path / "run").exists()


def test_errors_quote_an_excerpt_of_a_huge_value():
    with pytest.raises(UserError) as err:
        Config.from_dict({"env_id": "CartPole-v1", "seed": "9" * 1_000_000})
    assert str(err.value) == (
        f"config: seed: Input should be a valid integer (got '{'9' * 59}... (1,000,002 characters))"
    )
    with pytest.raises(UserError) as err:  # a list of a million bad items: the first 3 errors, then a count
        Config.from_dict(
            {"env_id": "CartPole-v1", "hidden_sizes": [8] * 8, "bogus": 1, "seed": -1, "gamma": 2.0, "batch_size": "x"}
        )
    assert str(err.value).endswith("; and 1 more") and len(str(err.value)) < 400


@pytest.mark.parametrize(
    "field",
    [
        "adam_epsilon",
        "huber_delta",
        "max_grad_norm",
        "priority_epsilon",
        "epsilon_spread",
        "learning_rate",
        "reward_threshold",
        "checkpoint_every_minutes",
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_no_float_field_takes_inf_or_nan(field, value):
    with pytest.raises(UserError, match=f"{field}: Input should be a finite number"):
        Config.from_dict({"env_id": "CartPole-v1", field: value})


# ------------------------------------------------------------------ the environment
@pytest.mark.parametrize("value", ["abc", "-1", "inf", "0"])
def test_a_bad_grace_period_is_one_line(value, tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("HVD_DQN_TERM_GRACE_S", value)
    proc = main_here(capsys, "train", "--config", path, "--run-dir", tmp_path / "run")
    assert_one_line(proc, f"HVD_DQN_TERM_GRACE_S: expected a positive number of seconds, got '{value}'")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a learning_starts before a batch exists
def test_learning_waits_until_the_replay_holds_a_batch(tmp_path):
    """learning_starts 0, an update at every step, 3-step returns: the first n-step transition exists after 3
    steps, a batch of 32 after 32-34 (episode ends flush the pending ones): learning starts then, instead of
    sampling an empty replay. 300 steps -> one update at each of the last 267-269 of them."""
    cfg = Config(
        env_id="CartPole-v1",
        total_env_steps=300,
        learning_starts=0,
        train_every=1,
        updates_per_train=1,
        n_step=3,
        batch_size=32,
        hidden_sizes=(8,),
        eval_every=300,
        eval_episodes=1,
        log_every=300,
        checkpoint_every_minutes=None,
    )
    summary = Trainer(cfg, run_dir=tmp_path / "run").train()
    assert 267 <= summary["updates"] <= 269, summary["updates"]


@pytest.mark.multiproc
def test_two_ranks_wait_for_each_others_replay_in_lockstep(tmp_path):
    """The same on 2 ranks (horovodrun, MPI controller): each rank's episodes end elsewhere, so their replays fill
    differently; the allreduced decision starts both at the same step, the job ends and the replicas agree."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "env_id: CartPole-v1\ntotal_env_steps: 600\nlearning_starts: 0\ntrain_every: 2\n"
        "updates_per_train: 1\nn_step: 3\nbatch_size: 64\nhidden_sizes: [8]\neval_every: 600\n"
        "eval_episodes: 2\nlog_every: 600\ncheckpoint_every_minutes: null\n"
    )
    run_dir = tmp_path / "run"
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            "--mpi",
            "-H",
            "localhost:2",
            BIN / "hvd-dqn",
            "train",
            "--config",
            path,
            "--run-dir",
            run_dir,
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    # 300 vector steps of 2 ranks; 32 transitions per rank after 32-34 of them
    assert 267 <= summary["updates"] <= 269 and len(set(summary["replica_checksums"])) == 1, summary


# ------------------------------------------------------------------ damaged files in run dirs
@pytest.fixture
def finished(tiny_run):
    """conftest's TINY_RUN: checkpoints at 800 and 1200."""
    return tiny_run


def _rewrite_state(ckpt, change):
    """state.json edited and the manifest updated to match, as a hand edit or a foreign tool would leave it."""
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    marker = json.loads((ckpt / "COMPLETE").read_text())
    marker["files"]["state.json"] = {
        "size": (ckpt / "state.json").stat().st_size,
        "sha256": hashlib.sha256((ckpt / "state.json").read_bytes()).hexdigest(),
    }
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda state: state.pop("training"), "state.json is damaged (no training)"),
        (lambda state: state.update(config=[1, 2]), "state.json is damaged (config is a list: [1, 2])"),
        (lambda state: state["training"].update(vstep="12"), "state.json is damaged (training.vstep is a str: '12')"),
    ],
)
def test_a_damaged_state_json_is_one_line_naming_it(finished, tmp_path, capsys, change, fragment):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    ckpt = run_dir / "checkpoints" / "ckpt-1200"
    _rewrite_state(ckpt, change)
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hvd-dqn: error: checkpoint {ckpt}: {fragment}"), err


MALFORMED_COMMANDS = ["evaluate", "export", "resume"]


def _malformed_config_json(finished, tmp_path, command):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "config.json").write_text('{"env_id": "CartPole-v1", ')
    args = {
        "evaluate": ["evaluate", run_dir, "--episodes", "1"],
        "export": ["export", run_dir, tmp_path / "out"],
        "resume": ["train", "--resume", run_dir],
    }[command]
    return run_dir, args


@pytest.mark.parametrize("command", MALFORMED_COMMANDS)
def test_a_malformed_config_json_is_one_line_naming_it(finished, tmp_path, command, capsys):
    run_dir, args = _malformed_config_json(finished, tmp_path, command)
    proc = main_here(capsys, *args)
    assert_one_line(proc, f"{run_dir / 'config.json'}: unreadable or not JSON (Expecting property name")
    assert not (tmp_path / "out").exists()


def test_a_malformed_config_json_is_one_line_from_the_command(finished, tmp_path):
    run_dir, args = _malformed_config_json(finished, tmp_path, "export")
    proc = run([BIN / "hvd-dqn", *args], timeout=300)
    assert_one_line(proc, f"{run_dir / 'config.json'}: unreadable or not JSON (Expecting property name")
    assert not (tmp_path / "out").exists()


def test_config_json_that_is_not_an_object(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "config.json").write_text("[1, 2]")
    proc = main_here(capsys, "evaluate", run_dir, "--episodes", "1")
    assert_one_line(proc, f"{run_dir / 'config.json'}: expected a JSON object, got list")


def test_evaluate_refuses_more_than_1000_episodes(finished, capsys):
    proc = main_here(capsys, "evaluate", finished, "--episodes", "1001")
    assert_one_line(proc, "--episodes must be 1 to 1000, got 1001")


def test_plot_to_a_directory_is_one_line_and_leaves_it_alone(finished, tmp_path, capsys):
    out = tmp_path / "plots"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = main_here(capsys, "plot", finished, "-o", out)
    assert_one_line(proc, f"-o {out}: is a directory; name the PNG file to write")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# ------------------------------------------------------------------ a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (needs root, as CI and this machine have), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], timeout=60).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    run(["umount", "-l", mnt], timeout=60, check=True)


def _fill(directory):
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_resume_on_a_full_disk_is_one_line_and_changes_nothing(finished, small_disk, capsys):
    run_dir = small_disk / "run"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "ckpt-1200")  # metrics rows after ckpt-800 are to be trimmed
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    _fill(small_disk)
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the lock file is the first thing a run writes into its run dir
    assert err == [
        f"hvd-dqn: error: run dir {run_dir}: cannot write its lock file .hvd-dqn.lock (No space left on "
        f"device); free space or make it writable, then run again"
    ], err
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # no stray .metrics.jsonl.tmp*, metrics.jsonl and checkpoints as they were
