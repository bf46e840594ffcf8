"""The progress output of RunLogger on rank 0: plain lines on a pipe or under a launcher, a tqdm bar on a terminal;
nothing from the other ranks."""

import io


def _row(steps):
    return {
        "env_steps": steps,
        "wall_s": steps / 100,
        "charts/episodic_return": 21.5,
        "losses/td_loss": 0.25,
        "charts/epsilon": 0.5,
        "perf/env_steps_per_s": 1234.0,
    }


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path):
    from hvd_dqn.metrics import RunLogger

    stream = io.StringIO()
    logger = RunLogger(tmp_path, enabled=True, total_env_steps=1000, stream=stream, tensorboard=False)
    logger.log(_row(500))
    logger.log({**_row(1000), "eval_return_mean": 200.0})
    logger.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("hvd-dqn | steps") for line in lines)
    assert "return    21.5" in lines[0] and "1,234 steps/s" in lines[0] and "eps 0.500" in lines[0]
    assert "eval   200.0" in lines[1] and "\r" not in stream.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_tqdm_bar_on_a_terminal(tmp_path, monkeypatch):
    from hvd_dqn.metrics import LAUNCHER_ENV, RunLogger

    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    stream = Terminal()
    logger = RunLogger(tmp_path, enabled=True, total_env_steps=1000, stream=stream, tensorboard=False)
    logger.log(_row(500))
    logger.log({**_row(1000), "eval_return_mean": 200.0})
    logger.close()
    out = stream.getvalue()
    assert "\r" in out and "hvd-dqn | steps" not in out  # a redrawn bar, not lines
    last = out.split("\r")[-1]
    assert "1.00k/1.00k" in last and "100%" in last and "return=21.5" in last and "eval=200.0" in last


def test_progress_is_plain_lines_under_a_launcher_even_on_a_tty(tmp_path, monkeypatch):
    """mpirun hands its ranks a pty but passes their output on by lines: a bar would show nothing."""
    from hvd_dqn.metrics import RunLogger

    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    stream = Terminal()
    logger = RunLogger(tmp_path, enabled=True, total_env_steps=1000, stream=stream, tensorboard=False)
    logger.log(_row(500))
    logger.close()
    assert stream.getvalue().startswith("hvd-dqn | steps") and "\r" not in stream.getvalue()


def test_other_ranks_write_nothing(tmp_path):
    from hvd_dqn.metrics import RunLogger

    stream = io.StringIO()
    logger = RunLogger(tmp_path / "r1", enabled=False, total_env_steps=1000, stream=stream)
    logger.log(_row(500))
    logger.close()
    assert stream.getvalue() == "" and not (tmp_path / "r1").exists()
