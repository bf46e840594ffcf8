"""The fault-injection switches (hvd_dqn.testing.faults) are test hooks: a production job neither reads nor forwards
them. Only HVD_DQN_TEST_HOOKS=1 (which conftest sets for this suite) turns them on."""

import os
import sys

import pytest

from conftest import BIN, ROOT, SMOKE, run
from hvd_dqn import Config, Trainer
from hvd_dqn.errors import UserError

TINY = SMOKE
HOOKS = {
    "HVD_DQN_FAULT": "0:300",
    "HVD_DQN_INJECT_NAN": "3",
    "HVD_DQN_PREEMPT_AT": "0:300",
    "HVD_DQN_HANG_IN_EVAL": "0:0",
    "HVD_DQN_DEADLOCK": "0:0",
}


def test_a_production_job_ignores_the_fault_variables(tmp_path):
    """Every fault variable set, the switch not: the run completes, and the test module is never imported."""
    code = (
        "import sys\n"
        "from hvd_dqn import Config, Trainer\n"
        f"summary = Trainer(Config(**{TINY!r}), run_dir={str(tmp_path / 'run')!r}).train()\n"
        "print('steps', summary['env_steps'], 'updates', summary['updates'], "
        "'imported', 'hvd_dqn.testing.faults' in sys.modules)\n"
    )
    proc = run([sys.executable, "-c", code], HVD_DQN_TEST_HOOKS="", **HOOKS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps 600 updates 25 imported False" in proc.stdout  # 5 updates at 200, 300, 400, 500 and 600


def test_the_switch_turns_them_on(tmp_path, monkeypatch):
    from hvd_dqn.testing import faults

    monkeypatch.setenv("HVD_DQN_TEST_HOOKS", "1")
    monkeypatch.setenv("HVD_DQN_FAULT", "0:300")
    with pytest.raises(RuntimeError, match=r"^injected fault at global env step 300 \(HVD_DQN_FAULT\)$"):
        Trainer(Config(**TINY), run_dir=tmp_path / "run").train()
    assert [type(cb) for cb in faults.from_env()] == [faults.RaiseAt]


def test_a_malformed_fault_variable_is_one_line(monkeypatch):
    from hvd_dqn.testing import faults

    monkeypatch.setenv("HVD_DQN_FAULT", "one:300")
    with pytest.raises(UserError, match=r"^HVD_DQN_FAULT: expected an integer, got 'one'$"):
        faults.from_env()


def test_mpirun_sh_exports_no_test_hook(tmp_path):
    """launch/mpirun.sh with a stand-in mpirun that prints its arguments: production variables are exported to the
    ranks on every host, the test hooks are not."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpirun").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "mpirun").chmod(0o755)
    (tmp_path / "c.yaml").write_text("env_id: CartPole-v1\n")
    env = {
        **HOOKS,
        "HVD_DQN_TEST_HOOKS": "1",
        "HVD_DQN_TERM_GRACE_S": "30",
        "HOROVOD_STALL_CHECK_TIME_SECONDS": "20",
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": BIN.parent,
    }
    proc = run(["bash", ROOT / "launch" / "mpirun.sh", tmp_path / "c.yaml"], timeout=60, **env)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    exported = {args[i + 1] for i, a in enumerate(args) if a == "-x"}
    assert {"HVD_DQN_TERM_GRACE_S", "HOROVOD_STALL_CHECK_TIME_SECONDS", "PATH", "PYTHONPATH"} <= exported
    assert not {name for name in exported if name.startswith("HVD_DQN_")} - {"HVD_DQN_TERM_GRACE_S"}, exported
