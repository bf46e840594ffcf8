"""The parameter server under `horovodrun -np 3 --mpi` (rank 0 serves, two workers), for real: one launch
(tests/mp_paramserver.py) that several tests read; and a failing rank under the other launchers, mpirun and srun
(launch/mpirun.sh, launch/slurm.sbatch on the loopback SLURM cluster of test_launchers.py's fixture)."""

import json
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

import slurm_jobs
from conftest import BIN, HOROVODRUN, QUICK_MPIRUN_END, ROOT, run
from test_launchers import LAUNCH, local_slurm  # noqa: F401 (local_slurm: the session fixture)

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp("ps")
    proc = run(
        [HOROVODRUN, "-np", "3", "--mpi", sys.executable, ROOT / "tests" / "mp_paramserver.py", work],
        timeout=1500,
    )
    output = proc.stdout + proc.stderr
    # the job ends at its last step, the resume of a damaged checkpoint that every rank refuses (exit 2)
    assert (work / "result.json").is_file() and proc.returncode != 0, output[-6000:]
    (work / "job.out").write_text(output)
    return json.loads((work / "result.json").read_text()), work


def test_sync_step_equals_numpy(launched):
    result, _ = launched
    p = result["protocol"]
    before, after = np.array(p["before"], np.float32), np.array(p["after"], np.float32)
    grads = [np.array(g, np.float32) for g in p["grads"]]
    assert len(grads) == 2
    expected = before - np.float32(p["lr"]) * ((grads[0] + grads[1]) / np.float32(2))
    np.testing.assert_array_equal(after, expected)
    assert p["replicas_equal"] and p["counts"] == [1]


def test_sync_training_counts_and_replicas(launched):
    s = launched[0]["summaries"]["sync"]
    # 2 workers: a phase of 20 updates every 100 vector steps (200 env steps), from 600 to 3000: 13 phases
    assert s["world_size"] == 3 and s["env_steps"] == 3000 and s["updates"] == 260
    assert s["parameter_server"] == "sync" and s["ps_staleness_counts"] == [260]
    assert (s["ps_rejected"], s["ps_dropped"]) == (0, 0)
    assert len(set(s["replica_checksums"])) == 1


def test_sync_resume_is_bit_exact(launched):
    result, work = launched
    summaries = result["summaries"]
    assert summaries["preempted"] is not None and "ckpt" in summaries["preempted"]
    resumed, straight = summaries["sync_resumed"], summaries["sync"]
    assert resumed["updates"] == straight["updates"] == 260
    # the server's optimizer state came back with the weights: the same bytes as the run that never stopped
    assert resumed["replica_checksums"] == straight["replica_checksums"]
    # the staleness counts came back too: the summary counts the whole run's 260 updates, not the 160 after 1500
    assert resumed["ps_staleness_counts"] == straight["ps_staleness_counts"] == [260]
    assert (resumed["ps_staleness_max"], resumed["ps_rejected"], resumed["ps_dropped"]) == (0, 0, 0)
    rows = [json.loads(ln) for ln in (work / "sync_resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in rows].count("resumed") == 1


def test_a_damaged_learner_entry_is_refused_on_every_rank(launched):
    """state.json's staleness counts, which only the server loads, damaged in a copy of the stopped run (its
    manifest rewritten to match), resumed as the launch's last step: the server names the entry, the workers its
    failure, each in one line, and the job ends (exit 2 on every rank) with no traceback."""
    output = (launched[1] / "job.out").read_text()
    failed = sorted(line.split("<stderr>:", 1)[-1] for line in output.splitlines() if "failed: CheckpointError" in line)
    assert len(failed) == 3, output[-6000:]
    assert "damaged or foreign contents (ValueError: staleness counts[0] is 'many', not a count)" in failed[0]
    assert failed[0].startswith("hvd-dqn: rank 0 failed: CheckpointError: checkpoint ") and "ckpt-1600" in failed[0]
    for rank, line in ((1, failed[1]), (2, failed[2])):
        assert line.startswith(f"hvd-dqn: rank {rank} failed: CheckpointError: checkpoint "), line
        assert "another rank could not load its part" in line, line
    assert "Traceback" not in output


def test_async_staleness_never_exceeds_the_bound(launched):
    s = launched[0]["summaries"]["async"]
    assert s["parameter_server"] == "async" and s["updates"] == 260
    counts = s["ps_staleness_counts"]
    assert sum(counts) == 260  # every applied gradient counted once
    assert len(counts) - 1 == s["ps_staleness_max"] <= 1
    assert len(set(s["replica_checksums"])) == 1  # every rank holds the server's weights at the end


def _fault_launch(launcher: str, config, run_dir, tmp_path, rank: int):
    """``config`` with parameter_server async on 3 ranks through launch/mpirun.sh or launch/slurm.sbatch (srun
    over PMIx), rank ``rank`` raising at env step 1000: (exit status, all output)."""
    env = {"RUN_DIR": run_dir, "VIRTUAL_ENV": BIN.parent, "HVD_DQN_FAULT": f"{rank}:1000"}
    args = [config, "--set", "parameter_server=async"]
    if launcher == "mpirun":
        env.update(QUICK_MPIRUN_END)
        proc = run([LAUNCH / "mpirun.sh", *args], timeout=900, NP=3, HOSTS="localhost:3", **env)
        return proc.returncode, proc.stdout + proc.stderr
    out = tmp_path / "job-%j.out"
    # 3 tasks on this machine's 2 cores: the job's 2-task allocation, srun starting 3 in it with --overcommit
    # (sbatch refuses 3 tasks per node on a node of 2 CPUs, --overcommit or not)
    job_id = slurm_jobs.submit(
        [f"--output={out}", LAUNCH / "slurm.sbatch", *args], SRUN_ARGS="-n 3 --overcommit", **env
    )
    (job,) = slurm_jobs.wait(job_id, 900)
    assert job["JobState"] == "FAILED", job
    return slurm_jobs.exit_status([job]), Path(str(out).replace("%j", job_id)).read_text()


# the two other launchers than the 3-rank launch's horovodrun: the server fails under mpirun, a worker under srun
@pytest.mark.parametrize(
    "launcher, rank, who",
    [("mpirun", 0, "the server"), pytest.param("srun", 1, "a worker", marks=pytest.mark.cluster)],
)
def test_a_failing_rank_ends_the_job_naming_it(tiny_cartpole, tmp_path, request, launcher, rank, who):
    if launcher == "srun":
        request.getfixturevalue("local_slurm")
    run_dir = tmp_path / "run"
    status, out = _fault_launch(launcher, tiny_cartpole, run_dir, tmp_path, rank)
    assert status != 0, out
    failed = [ln for ln in out.splitlines() if "failed: RuntimeError: injected fault" in ln]
    assert len(failed) == 1 and f"hvd-dqn: rank {rank} failed" in failed[0], (who, out[-3000:])
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert left == [], f"{who}'s failure left processes: {left}"
