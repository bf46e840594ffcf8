"""Every launcher in launch/, for real, on 2 ranks: horovodrun (gloo and MPI controllers), mpirun, and sbatch on
a loopback SLURM cluster that the `local_slurm` fixture starts (installing SLURM if missing) and stops again."""

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BIN, ROOT, run
from run_schedule import expected_updates
from test_horovod_options import learner_allreduces

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc]
LAUNCH = ROOT / "launch"
LAUNCHERS = ["horovodrun-gloo", "horovodrun-mpi", "mpirun", "sbatch"]
PROFILED = "horovodrun-mpi"  # launch/horovodrun.sh as it runs by default, with TIMELINE and AUTOTUNE_LOG
HANG_S = 120  # rank 0's watchdog (hang_timeout_s) in the failing-rank job: the job's end if its launcher fails
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


def launch(launcher, cfg, run_dir, tmp_path, timeout=300, **env):
    """Run `cfg` on 2 ranks through launch/<launcher>; returns (exit status, all output, SLURM job or None)."""
    env = {"RUN_DIR": run_dir, "VIRTUAL_ENV": BIN.parent, **env}
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
        return proc.returncode, output, job
    script, extra = {
        "horovodrun-gloo": ("horovodrun.sh", {"CONTROLLER": "gloo"}),
        "horovodrun-mpi": ("horovodrun.sh", {"CONTROLLER": "mpi"}),
        "mpirun": ("mpirun.sh", {}),
    }[launcher]
    proc = run([LAUNCH / script, cfg, "--set", "seed=7"], timeout=timeout, NP=2, **extra, **env)
    return proc.returncode, proc.stdout + proc.stderr, None


@pytest.fixture(scope="module")
def short_run(request, tmp_path_factory):
    """SHORT_RUN through launch/<launcher> (the parameter), once for every test of that launcher: its run dir, exit
    status, output and SLURM job (or None); the PROFILED launcher's job also records a Horovod timeline and runs
    the autotuner (TIMELINE, AUTOTUNE_LOG), into the files ``timeline`` and ``autotune``."""
    launcher = request.param
    if launcher == "sbatch":
        request.getfixturevalue("local_slurm")
    tmp_path = tmp_path_factory.mktemp(launcher)
    files = {"TIMELINE": tmp_path / "timeline.json", "AUTOTUNE_LOG": tmp_path / "autotune.csv"}
    run_dir = tmp_path / "run"
    status, output, job = launch(
        launcher, _config(tmp_path), run_dir, tmp_path, **(files if launcher == PROFILED else {})
    )
    return SimpleNamespace(
        run_dir=run_dir,
        status=status,
        output=output,
        job=job,
        timeline=files["TIMELINE"],
        autotune=files["AUTOTUNE_LOG"],
    )


@pytest.mark.parametrize("short_run", LAUNCHERS, indirect=True)
def test_a_short_run_trains_in_lockstep(short_run):
    assert short_run.status == 0, short_run.output
    summary = json.loads((short_run.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 2 ranks: a phase of 5 updates every 125 vector steps (250 env steps), from 500 to 2000: 7 phases
    assert summary["env_steps"] == 2000 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 5 * 7
    assert json.loads((short_run.run_dir / "config.json").read_text())["seed"] == 7  # --set got through
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    if short_run.job is not None:
        assert short_run.job["JobState"] == "COMPLETED" and short_run.job["NumTasks"] == "2"


@pytest.mark.parametrize("short_run", [PROFILED], indirect=True)
def test_the_horovodrun_launcher_records_a_timeline_and_runs_the_autotuner(short_run):
    assert short_run.status == 0, short_run.output
    summary = json.loads((short_run.run_dir / "summary.json").read_text())
    events = json.loads(short_run.timeline.read_text())  # Horovod keeps the file valid JSON as it goes
    assert {"NEGOTIATE_ALLREDUCE", "ALLREDUCE"} <= {e.get("name") for e in events}
    per_tensor = learner_allreduces(short_run.timeline)
    # the MLP's 3 kernels and 3 biases, each allreduced once per gradient update of the run: 7 phases of 5
    assert len(per_tensor) == 6 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 35
    assert all(len(dtypes) == summary["updates"] for dtypes in per_tensor.values())
    assert short_run.autotune.read_text().splitlines()[0].startswith("hierarchical_allreduce,")  # the autotuner's


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_rank_ends_the_job(launcher, tmp_path, request):
    """Rank 1 raises mid-training while rank 0 waits in a collective: the launcher must end the job on rank 1's
    exit, non-zero, with rank 1's error in the job's output; a SLURM job ends FAILED. A launcher that did not
    would leave rank 0 waiting until its watchdog ends the job, hang_timeout_s after the fault, with a line that
    says so."""
    if launcher == "sbatch":
        request.getfixturevalue("local_slurm")
    cfg = _config(tmp_path, total_env_steps=200_000, hang_timeout_s=HANG_S)
    status, output, job = launch(launcher, cfg, tmp_path / "run", tmp_path, timeout=600, HVD_DQN_FAULT="1:2000")
    assert status != 0, output
    assert "injected fault at global env step" in output
    assert "rank 1 failed" in output
    if launcher.startswith("horovodrun"):  # hvd_dqn.launchout: no tags; rank 1's lines say whose they are
        lines = output.splitlines()
        assert not [line for line in lines if "]<std" in line], output
        assert "rank 1: Traceback (most recent call last):" in lines, output
        assert [line for line in lines if line.startswith("hvd-dqn: rank 1 failed: RuntimeError: injected")], output
    # ended by the launcher, not by rank 0's watchdog, which ends a job its launcher left hanging
    assert "made no progress" not in output, output
    assert not (tmp_path / "run" / "summary.json").exists()
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
