"""Preemption and exact resume through the CLI, for real: a run is stopped by a signal mid-training, writes a
checkpoint and exits with the documented code; `hvd-dqn train --resume` then ends with the same replica
checksums as an uninterrupted run of the same config, at np=1 (SIGUSR1 to the rank) and np=2 (SIGTERM to
launch/horovodrun.sh, which passes it on to the ranks as SIGUSR1; Adam at np=1, LAMB at np=2), and the same saved
policy (policy_ema's average); likewise an Atari run on the gymnasium vector env at np=2, whose emulators the
checkpoint holds."""

import json
import signal
import sys
import time

import numpy as np
import pytest
import tf_keras as keras

from conftest import BIN, ROOT, run, run_env, started
from run_schedule import expected_updates

LAUNCH = ROOT / "launch"

PREEMPTED = 75
RUN = {  # long enough that a signal sent at step 4,000 lands mid-run (a few s at 6k steps/s), small enough for
    # seconds; periodic checkpoints too
    "env_id": "CartPole-v1",
    "total_env_steps": 30000,
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
    "checkpoint_every": 3000,
    "seed": 11,
    "policy_ema": 0.9,
}


def _config(tmp_path, settings=RUN):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return cfg


def _train_cmd(np_, *args):
    cmd = [BIN / "hvd-dqn", "train", *args]
    return [BIN / "horovodrun", "-np", "2", "--gloo", *cmd] if np_ == 2 else cmd


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _wait_for_row(run_dir, env_steps, proc, timeout=240):
    """Until rank 0 has logged the row at ``env_steps`` (training is under way, past XLA compilation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be signalled"
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(
            json.loads(ln)["env_steps"] >= env_steps for ln in metrics.read_text().splitlines()
        ):
            return
        time.sleep(0.2)
    raise AssertionError("no progress")


def _stop_mid_run(np_, cfg, run_dir, at_step):
    """The run of ``cfg`` signalled once rank 0 has logged ``at_step``: np=1 SIGUSR1 to the rank, np=2 SIGTERM to
    launch/horovodrun.sh (gloo), which passes it on to the ranks as SIGUSR1. They checkpoint and exit 75; returns
    the global env step of the stop."""
    if np_ == 1:
        cmd, env = _train_cmd(np_, "--config", cfg, "--run-dir", run_dir), run_env()
    else:
        cmd = [LAUNCH / "horovodrun.sh", cfg]
        env = run_env(NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent, CONTROLLER="gloo")
    with started(cmd, env=env) as job:
        _wait_for_row(run_dir, at_step, job)
        if np_ == 1:
            job.send_signal(signal.SIGUSR1)
        else:
            assert len(_rank_pids(job.pid)) == 2
            job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=120)
    # one rank: our exit code; horovodrun reports the ranks' 75 in its error and exits 1 itself
    assert job.returncode == (PREEMPTED if np_ == 1 else 1), output
    if np_ == 2:
        assert "Exit code: 75" in output, output
        assert "hvd-dqn launcher: SIGTERM: asking the ranks to checkpoint and stop" in output
    assert "hvd-dqn: stopped by SIGUSR1 at global env step" in output, output
    assert not (run_dir / "summary.json").exists()
    return int(output.split("at global env step ")[1].split(";")[0])


def _rank_pids(launcher_pid):
    """The hvd-dqn processes under the launcher (horovodrun's middlemen start them through a shell)."""
    out = run(["ps", "-ww", "-e", "-o", "pid=,ppid=,args="], timeout=60).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    children = {}
    for pid, ppid, args in rows:
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, todo = [], [launcher_pid]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            todo.append(pid)
            if "hvd-dqn train" in args and "python" in args.split()[0] and "horovodrun" not in args:
                found.append(pid)
    return found


@pytest.mark.multiproc
@pytest.mark.parametrize("np_, optimizer", [(1, "adam"), (2, "lamb")])
def test_a_signalled_run_resumes_bit_exactly(np_, optimizer, tmp_path):
    # lamb: Keras 3's optimizer, whose moments and step count (its bias correction) the checkpoint must hold too.
    # Adam under Horovod's DistributedOptimizer at np=2 resumes bit-exactly in test_user_env's two-rank resume
    cfg = _config(tmp_path, {**RUN, "optimizer": optimizer})
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = run(_train_cmd(np_, "--config", cfg, "--run-dir", whole), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = _summary(whole)["replica_checksums"]
    assert len(expected) == np_ and len(set(expected)) == 1

    step = _stop_mid_run(np_, cfg, stopped, 4000)
    assert 4000 <= step < RUN["total_env_steps"]
    ckpts = sorted((stopped / "checkpoints").iterdir())
    assert ckpts[-1].name == f"ckpt-{step}" and (ckpts[-1] / "COMPLETE").is_file()
    assert sorted(p.name for p in ckpts[-1].iterdir() if p.name.startswith("replay-rank")) == [
        f"replay-rank{r}.npz" for r in range(np_)
    ]

    proc = run(_train_cmd(np_, "--resume", stopped), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(stopped)
    assert summary["env_steps"] == RUN["total_env_steps"] and summary["world_size"] == np_
    assert summary["replica_checksums"] == expected  # bit-exact, every replica
    # ... and the policy's weight average (saved as the model) too: it was in the checkpoint
    saved = [keras.models.load_model(d / "q_network.keras").get_weights() for d in (whole, stopped)]
    assert all(np.array_equal(a, b) for a, b in zip(*saved))
    # a phase of 10 updates every 200 env steps, from 600 to 30000: 148 phases, however the run was split
    assert _summary(whole)["updates"] == summary["updates"] == expected_updates(RUN, np_) == 10 * 148
    rows = [json.loads(ln) for ln in (stopped / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["env_steps"] == step and resumed[0]["resume_gap_s"] > 0
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)


ATARI_RUN = {  # Breakout (lives to lose) on the gymnasium vector env, whose state a checkpoint holds; no-ops and
    # sticky actions at their defaults; a 300-frame cap ends an episode every 75 steps or sooner, so the stop
    # lands mid-episode and episodes end and restart after it; a few seconds between the signal and the end
    "env_id": "ALE/Breakout-v5",
    "atari_vector_env": "gymnasium",
    "total_env_steps": 2000,
    "num_envs": 2,
    "max_episode_frames": 300,
    "terminal_on_life_loss": True,
    "batch_size": 16,
    "replay_capacity": 1000,
    "learning_starts": 400,
    "train_every": 40,
    "updates_per_train": 1,
    "target_update_every": 10,
    "eval_every": 100000,
    "eval_episodes": 2,
    "log_every": 200,
    "seed": 3,
}


def _trained_rows(run_dir, after):
    """metrics.jsonl's rows past env step ``after``, without the timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k != "wall_s" and not k.startswith("perf/")}
        for r in rows
        if r["env_steps"] > after and "event" not in r
    ]


@pytest.mark.multiproc
def test_a_signalled_atari_run_resumes_bit_exactly(tmp_path):
    """The emulators (with their RNG and sticky actions), frame stacks, lives and frame replay are in the
    checkpoint: the resumed run plays on the same games and ends with the same replicas as one never stopped.
    3-step returns and prioritized replay: the frame replay saves the same arrays as a 1-step one (it reads n-step
    transitions off them when it samples), plus the sum tree's priorities."""
    cfg = _config(tmp_path, {**ATARI_RUN, "n_step": 3, "prioritized_replay": True})
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = run(_train_cmd(2, "--config", cfg, "--run-dir", whole), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = _summary(whole)["replica_checksums"]
    assert len(set(expected)) == 1

    step = _stop_mid_run(2, cfg, stopped, 600)
    assert 600 <= step < ATARI_RUN["total_env_steps"]
    proc = run(_train_cmd(2, "--resume", stopped), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "start afresh" not in proc.stdout + proc.stderr
    assert _summary(stopped)["replica_checksums"] == expected
    # the same episodes after the stop: returns, episode counts, losses, evaluation
    assert _trained_rows(stopped, step) == _trained_rows(whole, step) != []


@pytest.mark.multiproc
def test_sigusr1_to_mpirun_stops_every_rank_with_a_checkpoint(tmp_path):
    """The signal to the launcher, not to the ranks: mpirun (launch/mpirun.sh execs it) forwards SIGUSR1 to its
    ranks, which checkpoint and exit 75, and so does mpirun; the same launcher then resumes the run to its end."""
    cfg, run_dir = _config(tmp_path), tmp_path / "run"
    env = run_env(NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent)
    with started([LAUNCH / "mpirun.sh", cfg], env=env) as job:
        _wait_for_row(run_dir, 4000, job)
        job.send_signal(signal.SIGUSR1)
        output, _ = job.communicate(timeout=120)
    assert job.returncode == PREEMPTED, output
    assert output.count("hvd-dqn: stopped by SIGUSR1 at global env step") == 1, output  # rank 0 says it
    step = int(output.split("at global env step ")[1].split(";")[0])
    assert 4000 <= step < RUN["total_env_steps"]
    ckpt = run_dir / "checkpoints" / f"ckpt-{step}"
    assert all((ckpt / name).is_file() for name in ("COMPLETE", "replay-rank0.npz", "replay-rank1.npz"))

    proc = run(
        [LAUNCH / "mpirun.sh", cfg, "--resume", run_dir], timeout=600, NP=2, RUN_DIR=run_dir, VIRTUAL_ENV=BIN.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(run_dir)
    assert summary["env_steps"] == RUN["total_env_steps"] and len(set(summary["replica_checksums"])) == 1


def test_a_preempted_rank_exits_75_even_if_terminated_while_closing(tmp_path):
    """Once its checkpoint is written, a rank must exit 75 whatever the launcher sends while it shuts down: srun
    --kill-on-bad-exit SIGTERMs the ranks still closing as soon as one has exited, and a rank killed by it made
    the step FAILED and SLURM never requeued the job. The interpreter restores the default action of its
    handled signals when it finalizes, so the CLI ignores them from then on; here SIGTERM comes right after."""
    code = (
        "import os, signal, sys\n"
        "from hvd_dqn.cli import main\n"
        f"status = main(['train', '--config', {str(_config(tmp_path))!r}, "
        f"'--run-dir', {str(tmp_path / 'run')!r}])\n"
        "print('ignored', signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(status)\n"
    )
    proc = run([sys.executable, "-c", code], HVD_DQN_PREEMPT_AT="0:4000")
    assert proc.returncode == PREEMPTED, proc.stdout + proc.stderr
    assert "ignored True" in proc.stdout and "stopped by HVD_DQN_PREEMPT_AT at global env step" in proc.stderr
