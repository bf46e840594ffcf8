"""Preemption and exact resume through the CLI, for real: a run is stopped by a signal mid-training, writes a
checkpoint and exits with the documented code; `hvd-dqn train --resume` then ends with the same replica
checksums and the same saved policy (policy_ema's average) as an uninterrupted run of the same config.

Three jobs, each launched once per module and read by several tests:

- np=1, CartPole, Adam: SIGUSR1 to the rank itself, which must exit 75 even when SIGTERMed while closing.
- np=2, Atari (the gymnasium vector env, whose emulators the checkpoint holds), LAMB (Keras 3's optimizer, its
  moments and step count), mixed_bfloat16 with 2 CNN updates per learning phase, 3-step returns and
  prioritized replay: SIGTERM to launch/horovodrun.sh (gloo), which passes it on to the ranks as SIGUSR1; the
  checkpoint's manifest, written by rank 0 under Gloo, holds every rank's files and their sha256.
- np=2, CartPole under launch/mpirun.sh: SIGUSR1 to mpirun, which forwards it to the ranks; a same-size edit of
  rank 1's own file stops the resume (under MPI) on every rank, and once repaired the run resumes to its end.

Adam under Horovod's DistributedOptimizer at np=2 resumes bit-exactly in test_user_env's two-rank resume."""

import hashlib
import json
import re
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tf_keras as keras

from conftest import BIN, HOROVODRUN, QUICK_MPIRUN_END, ROOT, run, run_env, started
from run_schedule import expected_updates
from stopping import rank_pids, signal_held, wait_for_step

LAUNCH = ROOT / "launch"
PREEMPTED = 75
STOP_AT = 3000  # the CartPole runs are signalled once rank 0 has logged this step
RUN = {  # CartPole: periodic checkpoints (one before the stop, one after), as many steps after the stop as before
    "env_id": "CartPole-v1",
    "total_env_steps": 6000,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "train_every": 200,
    "updates_per_train": 10,
    "target_update_every": 30,
    "eval_every": 4000,
    "eval_episodes": 2,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
    "checkpoint_every": 2000,
    "seed": 11,
    "policy_ema": 0.9,
}
ATARI_STOP_AT = 400
ATARI_RUN = {  # Breakout (lives to lose) on the gymnasium vector env, whose state a checkpoint holds; no-ops and
    # sticky actions at their defaults; a 300-frame cap ends an episode every 75 steps or sooner, so the stop
    # lands mid-episode and episodes end and restart after it. 3-step returns and prioritized replay: the frame
    # replay saves the same arrays as a 1-step one (it reads n-step transitions off them when it samples), plus
    # the sum tree's priorities. LAMB in mixed_bfloat16 (slow on a CPU without bf16 units: few updates), 2 CNN
    # updates per learning phase.
    "env_id": "ALE/Breakout-v5",
    "atari_vector_env": "gymnasium",
    "total_env_steps": 800,
    "num_envs": 2,
    "max_episode_frames": 300,
    "terminal_on_life_loss": True,
    "n_step": 3,
    "prioritized_replay": True,
    "optimizer": "lamb",
    "precision": "mixed_bfloat16",
    "policy_ema": 0.9,
    "batch_size": 16,
    "replay_capacity": 1000,
    "learning_starts": 200,
    "train_every": 80,
    "updates_per_train": 2,
    "target_update_every": 10,
    "eval_every": 100000,
    "eval_episodes": 2,
    "log_every": 200,
    "checkpoint_every_minutes": None,
    "seed": 3,
}


def _config(path, settings):
    path.mkdir(parents=True, exist_ok=True)
    cfg = path / "config.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return cfg


def _horovodrun(*args):
    return [HOROVODRUN, "-np", "2", "--gloo", BIN / "hvd-dqn", "train", *args]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _rows(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(run_dir):
    """The run's checkpoint directories, oldest first."""
    found = [p for p in (run_dir / "checkpoints").iterdir() if re.fullmatch(r"ckpt-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _stop_step(output):
    return int(output.split("at global env step ")[1].split(";")[0])


def _held_and_signalled(job, run_dir, at_step, nranks, send):
    """Once rank 0 has logged ``at_step``, the job's ranks (``nranks`` of them under a launcher, else the job
    itself) get the stop through ``send()`` (see stopping)."""
    wait_for_step(run_dir, 0, lambda: job.poll() is None)
    pids = rank_pids(str(run_dir)) if nranks else [job.pid]
    assert len(pids) == (nranks or 1), pids
    wait_for_step(run_dir, at_step, lambda: job.poll() is None)
    signal_held(pids, send)
    output, _ = job.communicate(timeout=300)
    return output


def _same_weights(a, b):
    saved = [keras.models.load_model(d / "q_network.keras").get_weights() for d in (a, b)]
    return len(saved[0]) == len(saved[1]) and all(np.array_equal(x, y) for x, y in zip(*saved))


def _assert_resumed_row(run_dir, step):
    rows = _rows(run_dir)
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["env_steps"] == step and resumed[0]["resume_gap_s"] > 0
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)


# ------------------------------------------------------------------------------------------ np=1, SIGUSR1
@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """RUN at np=1 with Adam: whole (uninterrupted, beside the next), stopped (cli.main in a Python that, once main
    has returned, prints whether SIGTERM is ignored and SIGTERMs itself, as srun --kill-on-bad-exit would) by
    SIGUSR1 to the rank at STOP_AT, then resumed with `hvd-dqn train --resume`."""
    tmp = tmp_path_factory.mktemp("one-rank")
    cfg = _config(tmp, {**RUN, "optimizer": "adam"})
    whole, stopped = tmp / "whole", tmp / "stopped"
    code = (
        "import os, signal, sys\n"
        "from hvd_dqn.cli import main\n"
        f"status = main(['train', '--config', {str(cfg)!r}, '--run-dir', {str(stopped)!r}])\n"
        "print('ignored', signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(status)\n"
    )
    reference_cmd = [BIN / "hvd-dqn", "train", "--config", cfg, "--run-dir", whole]
    with started(reference_cmd, output=tmp / "whole.out") as reference:
        with started([sys.executable, "-c", code]) as job:
            stop_output = _held_and_signalled(job, stopped, STOP_AT, 0, lambda: job.send_signal(signal.SIGUSR1))
        reference.wait(timeout=600)
    assert reference.returncode == 0, (tmp / "whole.out").read_text()
    summary_at_stop = (stopped / "summary.json").exists()
    stopped_after = {p.name: sorted(q.name for q in p.iterdir()) for p in _checkpoints(stopped)}
    resume = run([BIN / "hvd-dqn", "train", "--resume", stopped], timeout=600)
    return SimpleNamespace(
        whole=whole,
        stopped=stopped,
        job=job,
        output=stop_output,
        summary_at_stop=summary_at_stop,
        ckpts=stopped_after,
        resume=resume,
    )


@pytest.mark.multiproc
def test_sigusr1_to_a_single_rank_stops_it_with_a_checkpoint(one_rank):
    assert one_rank.job.returncode == PREEMPTED, one_rank.output
    assert "hvd-dqn: stopped by SIGUSR1 at global env step" in one_rank.output, one_rank.output
    assert not one_rank.summary_at_stop
    step = _stop_step(one_rank.output)
    assert STOP_AT <= step < RUN["total_env_steps"]
    newest = list(one_rank.ckpts)[-1]
    assert newest == f"ckpt-{step}" and "COMPLETE" in one_rank.ckpts[newest]
    assert [n for n in one_rank.ckpts[newest] if n.startswith("replay-rank")] == ["replay-rank0.npz"]


@pytest.mark.multiproc
def test_a_preempted_rank_exits_75_even_if_terminated_while_closing(one_rank):
    """Once its checkpoint is written, a rank must exit 75 whatever the launcher sends while it shuts down: srun
    --kill-on-bad-exit SIGTERMs the ranks still closing as soon as one has exited, and a rank killed by it made
    the step FAILED and SLURM never requeued the job. The interpreter restores the default action of its
    handled signals when it finalizes, so the CLI ignores them from then on; here SIGTERM comes right after."""
    assert "ignored True" in one_rank.output and one_rank.job.returncode == PREEMPTED, one_rank.output


@pytest.mark.multiproc
def test_a_resumed_adam_run_ends_bit_exactly_as_one_never_stopped(one_rank):
    proc = one_rank.resume
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected, summary = _summary(one_rank.whole), _summary(one_rank.stopped)
    assert len(expected["replica_checksums"]) == 1
    assert summary["env_steps"] == RUN["total_env_steps"] and summary["world_size"] == 1
    assert summary["replica_checksums"] == expected["replica_checksums"]
    assert _same_weights(one_rank.whole, one_rank.stopped)  # the policy's average was in the checkpoint
    # a phase of 10 updates every 200 env steps, from 600 to 6000: 28 phases, however the run was split
    assert expected["updates"] == summary["updates"] == expected_updates(RUN, 1) == 10 * 28
    _assert_resumed_row(one_rank.stopped, _stop_step(one_rank.output))


# ------------------------------------------------------------------- np=2, Atari, SIGTERM to horovodrun.sh
@pytest.fixture(scope="module")
def atari(tmp_path_factory):
    """ATARI_RUN at np=2: whole under horovodrun, stopped through launch/horovodrun.sh (gloo) by SIGTERM once rank
    0 has logged ATARI_STOP_AT (the stopped checkpoint's files and manifest read before the resume), resumed."""
    tmp = tmp_path_factory.mktemp("atari")
    cfg = _config(tmp, ATARI_RUN)
    whole, stopped = tmp / "whole", tmp / "stopped"
    reference = run(_horovodrun("--config", cfg, "--run-dir", whole), timeout=900)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    env = run_env(NP=2, RUN_DIR=stopped, VIRTUAL_ENV=BIN.parent, CONTROLLER="gloo")
    with started([LAUNCH / "horovodrun.sh", cfg], env=env) as job:
        output = _held_and_signalled(job, stopped, ATARI_STOP_AT, 2, lambda: job.send_signal(signal.SIGTERM))
    summary_at_stop = (stopped / "summary.json").exists()
    newest = _checkpoints(stopped)[-1]
    files = {p.name: p.read_bytes() for p in newest.iterdir() if p.is_file()}
    resume = run(_horovodrun("--resume", stopped), timeout=900)
    return SimpleNamespace(
        whole=whole,
        stopped=stopped,
        job=job,
        output=output,
        summary_at_stop=summary_at_stop,
        newest=newest.name,
        files=files,
        resume=resume,
    )


@pytest.mark.multiproc
def test_sigterm_to_horovodrun_sh_stops_both_ranks_with_a_checkpoint(atari):
    out = atari.output
    # horovodrun reports the ranks' 75 in its error and exits 1 itself
    assert atari.job.returncode == 1 and "Exit code: 75" in out, out
    assert "hvd-dqn launcher: SIGTERM: asking the ranks to checkpoint and stop" in out
    assert "hvd-dqn: stopped by SIGUSR1 at global env step" in out, out
    assert not atari.summary_at_stop
    step = _stop_step(out)
    assert ATARI_STOP_AT <= step < ATARI_RUN["total_env_steps"]
    assert atari.newest == f"ckpt-{step}" and "COMPLETE" in atari.files
    assert sorted(n for n in atari.files if n.startswith("replay-rank")) == ["replay-rank0.npz", "replay-rank1.npz"]


@pytest.mark.multiproc
def test_the_manifest_holds_every_ranks_files_with_their_sha256(atari):
    """Rank 0 writes it (under Gloo here) with the hashes gathered from the ranks that wrote the files."""
    manifest = json.loads(atari.files["COMPLETE"])["files"]
    assert {"replay-rank0.npz", "replay-rank1.npz", "rank0.json", "rank1.json", "state.json"} <= manifest.keys()
    assert manifest.keys() == atari.files.keys() - {"COMPLETE"}
    for name, entry in manifest.items():
        data = atari.files[name]
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


@pytest.mark.multiproc
def test_a_resumed_atari_run_plays_the_same_games_and_ends_bit_exactly(atari):
    """The emulators (with their RNG and sticky actions), frame stacks, lives, frame replay with its priorities,
    LAMB's moments and step count and the policy average are in the checkpoint: the resumed run plays on the same
    games and ends with the same replicas and saved policy as one never stopped."""
    proc = atari.resume
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "start afresh" not in proc.stdout + proc.stderr
    expected = _summary(atari.whole)["replica_checksums"]
    assert len(expected) == 2 and len(set(expected)) == 1
    assert _summary(atari.stopped)["replica_checksums"] == expected
    assert _same_weights(atari.whole, atari.stopped)
    # the same episodes after the stop: returns, episode counts, losses
    step = _stop_step(atari.output)
    assert _trained_rows(atari.stopped, step) == _trained_rows(atari.whole, step) != []


@pytest.mark.multiproc
def test_a_resumed_atari_run_counts_its_updates_and_logs_the_resume(atari):
    assert atari.resume.returncode == 0, atari.resume.stdout[-3000:] + atari.resume.stderr[-3000:]
    summary = _summary(atari.stopped)
    assert summary["env_steps"] == ATARI_RUN["total_env_steps"] and summary["world_size"] == 2
    # a phase of 2 updates every 80 env steps from 240 to 800: 8 phases, however the run was split
    assert summary["updates"] == _summary(atari.whole)["updates"] == expected_updates(ATARI_RUN, 2) == 2 * 8
    assert json.loads((atari.stopped / "config.json").read_text())["precision"] == "mixed_bfloat16"
    _assert_resumed_row(atari.stopped, _stop_step(atari.output))


def _trained_rows(run_dir, after):
    """metrics.jsonl's rows past env step ``after``, without the timings."""
    return [
        {k: v for k, v in r.items() if k != "wall_s" and not k.startswith("perf/")}
        for r in _rows(run_dir)
        if r["env_steps"] > after and "event" not in r
    ]


# -------------------------------------------------------------------------- np=2, SIGUSR1 to mpirun
@pytest.fixture(scope="module")
def mpirun_job(tmp_path_factory):
    """RUN under launch/mpirun.sh (it execs mpirun), SIGUSR1 to mpirun at STOP_AT; then the resume of the stopped
    checkpoint with rank1.json edited (same size), refused; then, the file put back, the resume to the end."""
    tmp = tmp_path_factory.mktemp("mpirun")
    cfg, run_dir = _config(tmp, RUN), tmp / "run"
    quick = QUICK_MPIRUN_END  # the stop exits 75, the refusal 2
    env = run_env(NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent, **quick)
    with started([LAUNCH / "mpirun.sh", cfg], env=env) as job:
        output = _held_and_signalled(job, run_dir, STOP_AT, 2, lambda: job.send_signal(signal.SIGUSR1))
    summary_at_stop = (run_dir / "summary.json").exists()
    ckpts = _checkpoints(run_dir)
    newest = ckpts[-1]
    newest_files = sorted(p.name for p in newest.iterdir())
    damaged = newest / "rank1.json"
    text = damaged.read_text()
    assert text.count('"rank": 1') == 1
    damaged.write_text(text.replace('"rank": 1', '"rank": 3'))  # same size
    resume = [LAUNCH / "mpirun.sh", cfg, "--resume", run_dir]
    refused = run(resume, timeout=600, NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent, **quick)
    summary_after_refusal = (run_dir / "summary.json").exists()
    damaged.write_text(text)
    resumed = run(resume, timeout=600, NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent, **quick)
    return SimpleNamespace(
        run_dir=run_dir,
        job=job,
        output=output,
        summary_at_stop=summary_at_stop,
        ckpts=[p.name for p in ckpts],
        newest_files=newest_files,
        refused=refused,
        summary_after_refusal=summary_after_refusal,
        resumed=resumed,
    )


@pytest.mark.multiproc
def test_sigusr1_to_mpirun_stops_every_rank_with_a_checkpoint(mpirun_job):
    """The signal to the launcher, not to the ranks: mpirun forwards SIGUSR1 to its ranks, which checkpoint and
    exit 75, and so does mpirun."""
    out = mpirun_job.output
    assert mpirun_job.job.returncode == PREEMPTED, out
    assert out.count("hvd-dqn: stopped by SIGUSR1 at global env step") == 1, out  # rank 0 says it
    step = _stop_step(out)
    assert STOP_AT <= step < RUN["total_env_steps"]
    assert mpirun_job.ckpts[-1] == f"ckpt-{step}" and len(mpirun_job.ckpts) >= 2 and not mpirun_job.summary_at_stop
    assert {"COMPLETE", "replay-rank0.npz", "replay-rank1.npz"} <= set(mpirun_job.newest_files)


@pytest.mark.multiproc
def test_an_altered_rank_file_stops_the_resume_on_every_rank(mpirun_job):
    """rank1.json is read and hashed by rank 1 alone: its verdict reaches rank 0 (under MPI), which names the file
    and the checkpoint to fall back to; no rank trains."""
    out = mpirun_job.refused.stdout + mpirun_job.refused.stderr
    assert mpirun_job.refused.returncode != 0, out
    assert "hvd_dqn/" not in out, out  # no traceback of ours
    ckpt = mpirun_job.run_dir / "checkpoints" / mpirun_job.ckpts[-1]
    assert (
        f"checkpoint {ckpt}: rank1.json is altered or damaged (its sha256 differs from the manifest's); "
        f"delete it to resume from {mpirun_job.ckpts[-2]}, the next older complete checkpoint"
    ) in out, out
    assert not mpirun_job.summary_after_refusal


@pytest.mark.multiproc
def test_mpirun_resumes_the_stopped_run_to_its_end(mpirun_job):
    proc = mpirun_job.resumed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(mpirun_job.run_dir)
    assert summary["env_steps"] == RUN["total_env_steps"] and summary["world_size"] == 2
    assert len(summary["replica_checksums"]) == 2 and len(set(summary["replica_checksums"])) == 1
    _assert_resumed_row(mpirun_job.run_dir, _stop_step(mpirun_job.output))
