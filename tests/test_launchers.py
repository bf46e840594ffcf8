"""Every launcher in launch/, for real, on 2 ranks: horovodrun (gloo and MPI controllers), mpirun, and sbatch on
a loopback SLURM cluster that the `local_slurm` fixture starts (installing SLURM if missing) and stops again."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, run
from run_schedule import expected_updates

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc]
LAUNCH = ROOT / "launch"
LAUNCHERS = ["horovodrun-gloo", "horovodrun-mpi", "mpirun", "sbatch"]
SHORT_RUN = {  # a few thousand steps with several learning phases, kept small: TensorFlow start-up dominates
    "env_id": "CartPole-v1",
    "total_env_steps": 2000,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "train_every": 250,
    "updates_per_train": 5,
    "target_update_every": 50,
    "eval_every": 2000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
}


def _started(script: str, start: str, stop: str, why_root: str):
    """Run launch/<script> START, yield, then STOP: set-ups of machine state that the scripts undo themselves."""
    if os.geteuid() != 0:
        pytest.skip(why_root)
    for action in (start, stop):
        proc = run([LAUNCH / script, action], timeout=600, env=dict(os.environ), cwd=None)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if action == start:
            yield


@pytest.fixture(scope="session")
def local_slurm():
    """A running single-node SLURM on loopback; stops (only) the daemons it started at the end of the session."""
    yield from _started("local-slurm.sh", "start", "stop", "the local SLURM cluster needs root")


@pytest.fixture(scope="session")
def netns_hosts():
    """Two hosts on this machine, network namespaces hvdA (10.250.0.1) and hvdB (10.250.0.2); removed at the end."""
    yield from _started("netns-hosts.sh", "up", "down", "network namespaces need root")


def _config(tmp_path, **overrides) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**SHORT_RUN, **overrides}.items()))
    return cfg


def _job(job_id: str) -> dict:
    text = run(["scontrol", "show", "job", job_id], timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _seconds(hms: str) -> int:  # scontrol's RunTime, [days-]hh:mm:ss
    days, _, hms = hms.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def launch(launcher, cfg, run_dir, tmp_path, timeout=300, **env):
    """Run `cfg` on 2 ranks through launch/<launcher>; returns (exit status, all output, seconds, job or None).
    For sbatch the seconds are the job's own run time (sbatch --wait polls at growing intervals)."""
    env = {"RUN_DIR": run_dir, "VIRTUAL_ENV": BIN.parent, **env}
    job = None
    t0 = time.monotonic()
    if launcher == "sbatch":
        out = tmp_path / "hvd-dqn-%j.out"
        proc = run(
            ["sbatch", "--wait", "--parsable", f"--output={out}", LAUNCH / "slurm.sbatch", cfg, "--set", "seed=7"],
            timeout=timeout,
            **env,
        )
        job_id = proc.stdout.strip().split(";")[0]
        assert job_id.isdigit(), proc.stdout + proc.stderr
        job = _job(job_id)
        output = proc.stderr + Path(str(out).replace("%j", job_id)).read_text()
        return proc.returncode, output, _seconds(job["RunTime"]), job
    script, extra = {
        "horovodrun-gloo": ("horovodrun.sh", {"CONTROLLER": "gloo"}),
        "horovodrun-mpi": ("horovodrun.sh", {"CONTROLLER": "mpi"}),
        "mpirun": ("mpirun.sh", {}),
    }[launcher]
    proc = run([LAUNCH / script, cfg, "--set", "seed=7"], timeout=timeout, NP=2, **extra, **env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0, job


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_short_run_trains_in_lockstep(launcher, tmp_path, request):
    if launcher == "sbatch":
        request.getfixturevalue("local_slurm")
    run_dir = tmp_path / "run"
    status, output, _, job = launch(launcher, _config(tmp_path), run_dir, tmp_path)
    assert status == 0, output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 2 ranks: a phase of 5 updates every 125 vector steps (250 env steps), from 500 to 2000: 7 phases
    assert summary["env_steps"] == 2000 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 5 * 7
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 7  # --set got through the launcher
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    if job is not None:
        assert job["JobState"] == "COMPLETED" and job["NumTasks"] == "2"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_rank_ends_the_job(launcher, tmp_path, request):
    """Rank 1 raises mid-training while rank 0 waits in a collective: the job must end, non-zero, in < 60 s
    after the fault, with rank 1's error in the job's output; a SLURM job ends FAILED."""
    if launcher == "sbatch":
        request.getfixturevalue("local_slurm")
    cfg = _config(tmp_path, total_env_steps=200_000)
    status, output, seconds, job = launch(
        launcher, cfg, tmp_path / "run", tmp_path, timeout=240, HVD_DQN_FAULT="1:2000"
    )
    assert status != 0, output
    assert "injected fault at global env step" in output
    assert "rank 1 failed" in output
    if launcher.startswith("horovodrun"):  # hvd_dqn.launchout: no tags; rank 1's lines say whose they are
        lines = output.splitlines()
        assert not [line for line in lines if "]<std" in line], output
        assert "rank 1: Traceback (most recent call last):" in lines, output
        assert [line for line in lines if line.startswith("hvd-dqn: rank 1 failed: RuntimeError: injected")], output
    assert seconds < 60 + 20, seconds  # 60 s after the fault, plus start-up of TensorFlow in both ranks
    if job is not None:
        assert job["JobState"] == "FAILED", job


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh", "slurm.sbatch"])
def test_a_missing_config_is_a_one_line_error(script, tmp_path):
    proc = run(["bash", LAUNCH / script, tmp_path / "nope.yaml"], timeout=30)
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_mpirun_across_two_hosts(netns_hosts, tmp_path):
    """One rank in each network namespace, mpirun reaching the second through the netns launch agent, all MPI and
    Horovod traffic on the hosts' own 10.250.0.0/24 link."""
    run_dir = tmp_path / "run"
    net = "--mca btl_tcp_if_include 10.250.0.0/24 --mca oob_tcp_if_include 10.250.0.0/24"
    proc = run(
        ["ip", "netns", "exec", "hvdA", LAUNCH / "mpirun.sh", _config(tmp_path)],
        timeout=300,
        NP=2,
        HOSTS="hvdA:1,hvdB:1",
        RUN_DIR=run_dir,
        VIRTUAL_ENV=BIN.parent,
        MPIRUN_ARGS=f"--display-map --mca plm_rsh_agent {LAUNCH / 'netns-agent.sh'} {net}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # one rank on each host: rank 0 where mpirun runs (inside hvdA, which mpirun names by the machine's own
    # hostname), rank 1 started in hvdB through the agent; mpirun prints the map once per stream
    nodes = set(re.findall(r"Data for node: (\S+)\s+Num slots: \d+\s+Max slots: \d+\s+Num procs: (\d+)", output))
    assert len(nodes) == 2 and ("hvdB", "1") in nodes and all(n == "1" for _, n in nodes), output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 5 * 7
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
