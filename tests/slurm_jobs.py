"""Batch jobs on the loopback SLURM cluster (test_launchers.py's ``local_slurm``), submitted with ``sbatch
--parsable`` and waited for by asking scontrol every half second. ``sbatch --wait`` polls as well, but backs off
(it sleeps 2, 8, then 32 s between looks, SLURM's MAX_WAIT_SLEEP_TIME): a job done in 15 s is seen done at 42 s."""

import re
import time

from conftest import run

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def records(job_id: str) -> list[dict]:
    """scontrol's records of job ``job_id`` as key=value dicts: one, or one per task of an array job."""
    text = run(["scontrol", "show", "job", "-o", job_id], timeout=60).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]


def submit(args, **env) -> str:
    """``sbatch --parsable *args`` with ``env`` added to the environment it passes on: the job id."""
    proc = run(["sbatch", "--parsable", *args], timeout=60, **env)
    job_id = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job_id.isdigit(), proc.stdout + proc.stderr
    return job_id


def wait(job_id: str, timeout: float) -> list[dict]:
    """The records of job ``job_id`` once every one has finished; cancels the job after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(job_id)
        if found and all(r.get("JobState") in FINISHED for r in found):
            return found
        if time.monotonic() > deadline:
            run(["scancel", job_id], timeout=60)
            raise AssertionError(f"job {job_id} not finished within {timeout} s: {found}")
        time.sleep(0.5)


def exit_status(found: list[dict]) -> int:
    """The exit status ``sbatch --wait`` gives for these records: the highest of theirs, 1 for one ended by a
    signal (scontrol's ExitCode=STATUS:SIGNAL)."""
    codes = []
    for record in found:
        status, signal = record["ExitCode"].split(":")
        codes.append(int(status) if signal == "0" else 1)
    return max(codes)
