"""The training state: one record of the run's counters, its dict (state.json's ``training``, an elastic commit's
fields), and the checkpoints of the earlier layout, which still resume.

tests/data/checkpoint-v2 is a run dir written by hvd-dqn 68a999a (checkpoint version 2, the counters under
``loop``, ``updates`` and ``evaluator_count``): conftest's TINY_RUN stopped by HVD_DQN_PREEMPT_AT=0:800 after its
checkpoint at global env step 800, as a user's preempted job is left. Only ckpt-800, config.json and metrics.jsonl
were kept."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import TINY_RUN, run
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.trainingstate import FIELD_TYPES, TrainingState, from_version2
from hvd_dqn.trainstate import read_training_state

V2_RUN = Path(__file__).parent / "data" / "checkpoint-v2"

STATE = TrainingState(
    vstep=800,
    env_steps=800,
    updates=60,
    since_sync=0,
    evaluations=1,
    train_stats={"td_loss": 0.25, "q_mean": 1.5},
    last_eval={"eval_return_mean": 9.0, "eval_episodes": 2},
    solved_env_steps=None,
    solved_wall_s=None,
)


def test_the_record_goes_to_a_dict_of_json_values_and_back():
    data = STATE.to_dict()
    assert list(data) == list(FIELD_TYPES)
    assert json.loads(json.dumps(data)) == data
    assert TrainingState.from_dict(data) == STATE
    data["train_stats"]["td_loss"] = 7.0  # a copy: the record does not change with its dict
    assert STATE.train_stats["td_loss"] == 0.25


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("updates"), "no training.updates"),
        (lambda d: d.update(vstep="12"), "training.vstep is a str: '12'"),
        (lambda d: d.update(evaluations=True), "training.evaluations is a bool: True"),
        (lambda d: d.update(solved_wall_s=[1]), "training.solved_wall_s is a list: [1]"),
    ],
)
def test_a_dict_with_a_key_missing_or_of_another_type_is_refused_naming_it(change, message):
    data = STATE.to_dict()
    change(data)
    with pytest.raises(ValueError) as info:
        TrainingState.from_dict(data, where="training.")
    assert str(info.value) == message


def test_an_evaluation_is_counted_and_the_first_to_reach_the_threshold_marks_the_task_solved():
    state = TrainingState(env_steps=600)
    state.evaluated({"eval_return_mean": 9.0}, threshold=10.0, wall_s=1.0)
    assert (state.evaluations, state.last_eval, state.solved_env_steps) == (1, {"eval_return_mean": 9.0}, None)
    state.env_steps = 1200
    state.evaluated({"eval_return_mean": 10.0}, threshold=10.0, wall_s=2.0)
    state.env_steps = 1800
    state.evaluated({"eval_return_mean": 11.0}, threshold=10.0, wall_s=3.0)
    assert (state.evaluations, state.solved_env_steps, state.solved_wall_s) == (3, 1200, 2.0)


def test_the_earlier_layout_maps_onto_the_record():
    saved = json.loads((V2_RUN / "checkpoints" / "ckpt-800" / "state.json").read_text())
    assert saved["version"] == 2 and "training" not in saved
    state = TrainingState.from_dict(from_version2(saved), where="loop.")
    assert (state.vstep, state.env_steps, state.updates, state.evaluations) == (800, 800, 60, 1)
    assert state.since_sync == saved["loop"]["since_sync"] and state.train_stats == saved["loop"]["train_stats"]
    assert state.last_eval["eval_return_mean"] == 9.0


def test_a_new_checkpoint_holds_the_record_under_training(tiny_run):
    saved = json.loads((tiny_run / "checkpoints" / "ckpt-1200" / "state.json").read_text())
    assert saved["version"] == 3 and not {"loop", "updates", "evaluator_count"} & saved.keys()
    state = TrainingState.from_dict(saved["training"])
    summary = json.loads((tiny_run / "summary.json").read_text())
    # TINY_RUN: 1 env, 2 evaluations (600, 1200), 10 updates a phase every 100 steps from 300
    assert (state.vstep, state.env_steps, state.evaluations) == (1200, 1200, 2)
    assert state.updates == summary["updates"] == 100


# The stored checkpoint was written on a CPU without AVX-512, and oneDNN picks its kernels by the CPU: the same
# run's weights differ in their last bits on one with AVX-512. Both runs of the comparison therefore run in a child
# with oneDNN capped at AVX2, which makes this CPU sum as that one did (a no-op on an AVX2 CPU). Not the whole
# suite: capped, a bf16 matmul in process died of SIGILL on an AVX-512 AMD EPYC.
_BOTH_RUNS = """
import json, sys
from hvd_dqn import Config, Trainer
fresh, resumed = (Trainer(Config(**json.loads(sys.argv[1])), run_dir=d, resume=r).train()
                  for d, r in ((sys.argv[2], False), (sys.argv[3], True)))
print(json.dumps([fresh, resumed]))
"""


def test_a_checkpoint_of_the_earlier_layout_resumes_bit_for_bit(tmp_path):
    """The preempted run of the previous release, resumed by this one, ends with the weights of the same run
    trained without a stop (TINY_RUN)."""
    run_dir = tmp_path / "run"
    shutil.copytree(V2_RUN, run_dir)
    cmd = [sys.executable, "-c", _BOTH_RUNS, json.dumps(TINY_RUN), tmp_path / "fresh", run_dir]
    proc = run(cmd, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["replica_checksums"] == expected["replica_checksums"]
    assert (summary["env_steps"], summary["updates"]) == (1200, expected["updates"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"] == "ckpt-800" and resumed[0]["updates"] == 60
    saved = json.loads((run_dir / "checkpoints" / "ckpt-1200" / "state.json").read_text())
    assert saved["version"] == 3 and saved["training"]["evaluations"] == 2


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s.pop("loop"), "state.json is damaged (no loop)"),
        (lambda s: s.update(evaluator_count="1"), "state.json is damaged (evaluator_count is a str: '1')"),
        (lambda s: s["loop"].update(vstep="12"), "state.json is damaged (loop.vstep is a str: '12')"),
    ],
)
def test_a_damaged_state_json_of_the_earlier_layout_is_one_line_naming_the_key(change, fragment):
    ckpt = V2_RUN / "checkpoints" / "ckpt-800"
    saved = json.loads((ckpt / "state.json").read_text())
    assert read_training_state(ckpt, saved).updates == 60
    change(saved)
    with pytest.raises(CheckpointError) as info:
        read_training_state(ckpt, saved)
    assert str(info.value).startswith(f"checkpoint {ckpt}: {fragment}; ")
