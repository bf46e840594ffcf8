"""The parameter server under `horovodrun -np 3 --mpi` (rank 0 serves, two workers), for real: one launch
(tests/mp_paramserver.py) that several tests read."""

import json
import sys

import numpy as np
import psutil
import pytest

from conftest import BIN, ROOT, run

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp("ps")
    proc = run(
        [BIN / "horovodrun", "-np", "3", "--mpi", sys.executable, ROOT / "tests" / "mp_paramserver.py", work],
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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


def test_async_staleness_never_exceeds_the_bound(launched):
    s = launched[0]["summaries"]["async"]
    assert s["parameter_server"] == "async" and s["updates"] == 260
    counts = s["ps_staleness_counts"]
    assert sum(counts) == 260  # every applied gradient counted once
    assert len(counts) - 1 == s["ps_staleness_max"] <= 1
    assert len(set(s["replica_checksums"])) == 1  # every rank holds the server's weights at the end


@pytest.mark.parametrize("rank, who", [(0, "the server"), (1, "a worker")])
def test_a_failing_rank_ends_the_job_naming_it(tiny_cartpole, tmp_path, rank, who):
    run_dir = tmp_path / "run"
    proc = run(
        [
            BIN / "horovodrun",
            "-np",
            "3",
            "--mpi",
            BIN / "hvd-dqn",
            "train",
            "--config",
            tiny_cartpole,
            "--run-dir",
            run_dir,
            "--set",
            "parameter_server=async",
        ],
        timeout=900,
        HVD_DQN_FAULT=f"{rank}:1000",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    failed = [ln for ln in out.splitlines() if "failed: RuntimeError: injected fault" in ln]
    assert len(failed) == 1 and f"hvd-dqn: rank {rank} failed" in failed[0], (who, out[-3000:])
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert left == [], f"{who}'s failure left processes: {left}"
