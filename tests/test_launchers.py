"""Every launcher in launch/, for real, on 2 ranks: horovodrun (gloo and MPI controllers), mpirun, and sbatch on
a loopback SLURM cluster that the `local_slurm` fixture starts (installing SLURM if missing) and stops again."""

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import slurm_jobs
from conftest import BIN, QUICK_MPIRUN_END, ROOT, run
from run_schedule import expected_updates
from test_horovod_options import learner_allreduces

pytestmark = [pytest.mark.cluster, pytest.mark.multiproc]
LAUNCH = ROOT / "launch"
LAUNCHERS = ["horovodrun-gloo", "horovodrun-mpi", "mpirun", "sbatch"]  # mpirun: across two hosts (netns_hosts)
NETNS_AGENT = LAUNCH / "netns-agent.sh"  # mpirun's way into the second host's network namespace
PROFILED = "horovodrun-mpi"  # launch/horovodrun.sh as it runs by default, with TIMELINE and AUTOTUNE_LOG
HANG_S = 120  # rank 0's watchdog (hang_timeout_s) in the failing-rank job: the job's end if its launcher fails
FAULT_AT = 2500  # where rank 1 of the failing-rank job raises: a phase past the end of SHORT_RUN's schedule
# HVD_DQN_TERM_GRACE_S of the failing-rank jobs whose launcher SIGTERMs rank 0, blocked in its collective, and
# lets it end itself: srun (SIGKILL only KillWait, 30 s, later) and horovodrun --gloo (5 s). The default's 10 s
# is kept under mpirun, which SIGKILLs the survivors 1 s after its SIGTERM, before any grace could end them.
GRACE_S = {"sbatch": 1, "horovodrun-gloo": 1}
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


def _job(job_id: str) -> dict:  # for test_checkpoint_slurm.py and test_paramserver_multiproc.py
    text = run(["scontrol", "show", "job", job_id], timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def launch(launcher, cfg, run_dir, tmp_path, timeout=300, **env):
    """Run `cfg` on 2 ranks through launch/<launcher> (mpirun: on the two hosts of netns_hosts); returns (exit
    status, all output, SLURM job or None)."""
    env = {"RUN_DIR": run_dir, "VIRTUAL_ENV": BIN.parent, **env}
    if launcher == "sbatch":
        out = tmp_path / "hvd-dqn-%j.out"
        job_id = slurm_jobs.submit([f"--output={out}", LAUNCH / "slurm.sbatch", cfg, "--set", "seed=7"], **env)
        (job,) = slurm_jobs.wait(job_id, timeout)
        output = Path(str(out).replace("%j", job_id)).read_text()
        return slurm_jobs.exit_status([job]), output, job
    if launcher == "mpirun":  # across the two hosts of netns_hosts
        net = "--mca btl_tcp_if_include 10.250.0.0/24 --mca oob_tcp_if_include 10.250.0.0/24"
        cmd = ["ip", "netns", "exec", "hvdA", LAUNCH / "mpirun.sh"]
        env.update(HOSTS="hvdA:1,hvdB:1", MPIRUN_ARGS=f"--display-map --mca plm_rsh_agent {NETNS_AGENT} {net}")
    else:
        cmd = [LAUNCH / "horovodrun.sh"]
        env["CONTROLLER"] = launcher.removeprefix("horovodrun-")
    proc = run([*cmd, cfg, "--set", "seed=7"], timeout=timeout, NP=2, **env)
    return proc.returncode, proc.stdout + proc.stderr, None


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    """SHORT_RUN through the PROFILED launcher, to its end, recording a Horovod timeline and running the
    autotuner (TIMELINE, AUTOTUNE_LOG) into the files ``timeline`` and ``autotune``: its run dir, exit status and
    output."""
    tmp_path = tmp_path_factory.mktemp("profiled")
    files = {"TIMELINE": tmp_path / "timeline.json", "AUTOTUNE_LOG": tmp_path / "autotune.csv"}
    run_dir = tmp_path / "run"
    status, output, _ = launch(PROFILED, _config(tmp_path), run_dir, tmp_path, **files)
    return SimpleNamespace(
        run_dir=run_dir, status=status, output=output, timeline=files["TIMELINE"], autotune=files["AUTOTUNE_LOG"]
    )


def test_a_short_run_trains_in_lockstep(profiled_run):
    """launch/horovodrun.sh as it runs by default (the MPI controller) takes a run to its end, exit 0: both ranks
    through the whole schedule, --set passed on, the replicas equal at the end (horovodrun --mpi runs mpirun). The
    other launchers' jobs are failing_job's, which train through SHORT_RUN's schedule before their fault
    (test_each_launcher_trains_in_lockstep_until_the_fault)."""
    assert profiled_run.status == 0, profiled_run.output
    summary = json.loads((profiled_run.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 2 ranks: a phase of 5 updates every 125 vector steps (250 env steps), from 500 to 2000: 7 phases
    assert summary["env_steps"] == 2000 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 5 * 7
    assert json.loads((profiled_run.run_dir / "config.json").read_text())["seed"] == 7  # --set got through
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]


def test_the_horovodrun_launcher_records_a_timeline_and_runs_the_autotuner(profiled_run):
    assert profiled_run.status == 0, profiled_run.output
    summary = json.loads((profiled_run.run_dir / "summary.json").read_text())
    events = json.loads(profiled_run.timeline.read_text())  # Horovod keeps the file valid JSON as it goes
    assert {"NEGOTIATE_ALLREDUCE", "ALLREDUCE"} <= {e.get("name") for e in events}
    per_tensor = learner_allreduces(profiled_run.timeline)
    # the MLP's 3 kernels and 3 biases, each allreduced once per gradient update of the run: 7 phases of 5
    assert len(per_tensor) == 6 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 35
    assert all(len(dtypes) == summary["updates"] for dtypes in per_tensor.values())
    assert profiled_run.autotune.read_text().splitlines()[0].startswith("hierarchical_allreduce,")  # the autotuner's


@pytest.fixture(scope="module")
def failing_job(request, tmp_path_factory):
    """SHORT_RUN's schedule in a run 100 times as long, through launch/<launcher> (the parameter): rank 1 raises at
    the first vector step from FAULT_AT, past SHORT_RUN's end, while rank 0 goes on to wait in a collective; rank
    0's watchdog would end the job HANG_S after the fault if the launcher did not. Its launcher, run dir, exit
    status, output and SLURM job (or None)."""
    launcher = request.param
    if launcher in ("sbatch", "mpirun"):
        request.getfixturevalue({"sbatch": "local_slurm", "mpirun": "netns_hosts"}[launcher])
    tmp_path = tmp_path_factory.mktemp(f"failing-{launcher}")
    cfg = _config(tmp_path, total_env_steps=100 * FAULT_AT, hang_timeout_s=HANG_S)
    run_dir = tmp_path / "run"
    env = {"HVD_DQN_FAULT": f"1:{FAULT_AT}"}
    if launcher in GRACE_S:
        env["HVD_DQN_TERM_GRACE_S"] = GRACE_S[launcher]
    if launcher in ("mpirun", "horovodrun-mpi"):
        env.update(QUICK_MPIRUN_END)  # the launcher still ends the job, not rank 0's watchdog
    status, output, job = launch(launcher, cfg, run_dir, tmp_path, timeout=600, **env)
    return SimpleNamespace(launcher=launcher, run_dir=run_dir, status=status, output=output, job=job)


@pytest.mark.parametrize("failing_job", LAUNCHERS, indirect=True)
def test_each_launcher_trains_in_lockstep_until_the_fault(failing_job):
    """Through each launcher, both ranks train through SHORT_RUN's schedule before the fault: a world of 2 with
    --set's seed, and the log rows at 1,000 and 2,000 (rank 0's counters, written after the row's collectives over
    both ranks) at SHORT_RUN's updates; a SLURM job runs its 2 tasks. The replicas' checksums at a run's end:
    test_a_short_run_trains_in_lockstep."""
    config = json.loads((failing_job.run_dir / "config.json").read_text())
    assert (config["world_size"], config["seed"]) == (2, 7)  # --set got through
    lines = (failing_job.run_dir / "metrics.jsonl").read_text().splitlines()
    updates = {row["env_steps"]: row["updates"] for row in map(json.loads, lines) if "updates" in row}
    # 2 ranks: a phase of 5 updates every 125 vector steps (250 env steps), from 500: 3 phases by 1000, 7 by 2000
    assert updates[1000] == expected_updates(SHORT_RUN, 2, until=1000) == 5 * 3, updates
    assert updates[2000] == expected_updates(SHORT_RUN, 2) == 5 * 7, updates
    assert sorted(updates) == [1000, 2000], updates  # and none from rank 0 after the fault
    if failing_job.job is not None:
        assert failing_job.job["NumTasks"] == "2", failing_job.job


@pytest.mark.parametrize("failing_job", LAUNCHERS, indirect=True)
def test_a_failing_rank_ends_the_job(failing_job):
    """Rank 1 raises mid-training while rank 0 waits in a collective: the launcher must end the job on rank 1's
    exit, non-zero, with rank 1's error in the job's output; a SLURM job ends FAILED. A launcher that did not
    would leave rank 0 waiting until its watchdog ends the job, hang_timeout_s after the fault, with a line that
    says so."""
    status, output, job = failing_job.status, failing_job.output, failing_job.job
    assert status != 0, output
    assert "injected fault at global env step" in output
    assert "rank 1 failed" in output
    if failing_job.launcher.startswith("horovodrun"):  # hvd_dqn.launchout: no tags; rank 1's lines say whose they are
        lines = output.splitlines()
        assert not [line for line in lines if "]<std" in line], output
        assert "rank 1: Traceback (most recent call last):" in lines, output
        assert [line for line in lines if line.startswith("hvd-dqn: rank 1 failed: RuntimeError: injected")], output
    # ended by the launcher, not by rank 0's watchdog, which ends a job its launcher left hanging
    assert "made no progress" not in output, output
    assert not (failing_job.run_dir / "summary.json").exists()
    if job is not None:
        assert job["JobState"] == "FAILED", job
        # srun's SIGTERM reached rank 0 in its collective, and its grace (passed on by sbatch) ended it
        grace = f"0: hvd-dqn: SIGTERM, and the ranks did not agree on a stop within {GRACE_S['sbatch']} s"
        assert grace in output, output


@pytest.mark.parametrize("script", ["horovodrun.sh", "mpirun.sh", "slurm.sbatch"])
def test_a_missing_config_is_a_one_line_error(script, tmp_path):
    proc = run(["bash", LAUNCH / script, tmp_path / "nope.yaml"], timeout=30)
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def two_host_run(netns_hosts, tmp_path_factory):
    """SHORT_RUN through launch/mpirun.sh across the two hosts of netns_hosts, to its end: run dir, status, output."""
    tmp_path = tmp_path_factory.mktemp("two-hosts")
    run_dir = tmp_path / "run"
    status, output, _ = launch("mpirun", _config(tmp_path), run_dir, tmp_path)
    return SimpleNamespace(run_dir=run_dir, status=status, output=output)


def test_mpirun_across_two_hosts(two_host_run):
    """launch/mpirun.sh takes a run to its end, exit 0, with one rank in each network namespace, mpirun reaching
    the second through the netns launch agent, all MPI and Horovod traffic on the hosts' own 10.250.0.0/24 link,
    and the replicas equal at the end across the link (rank 1's failure on the second host ending the job:
    test_a_failing_rank_ends_the_job[mpirun])."""
    output = two_host_run.output
    assert two_host_run.status == 0, output
    # one rank on each host: rank 0 where mpirun runs (inside hvdA, which mpirun names by the machine's own
    # hostname), rank 1 started in hvdB through the agent; mpirun prints the map once per stream
    nodes = set(re.findall(r"Data for node: (\S+)\s+Num slots: \d+\s+Max slots: \d+\s+Num procs: (\d+)", output))
    assert len(nodes) == 2 and ("hvdB", "1") in nodes and all(n == "1" for _, n in nodes), output
    summary = json.loads((two_host_run.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["updates"] == expected_updates(SHORT_RUN, 2) == 35
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
