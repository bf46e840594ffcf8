"""Mixed precision under `horovodrun -np 2 --gloo`, for real: the replicas stay bit-identical with different data
on each rank (the MLP in bf16, and in fp16 with loss scaling around Horovod's optimizer). A 2-rank Atari run in
mixed_bfloat16, with 2 CNN updates per learning phase, is preempted, checkpointed and resumed bit-exactly in
test_checkpoint_resume's Atari job."""

import json
import sys

import pytest

from conftest import HOROVODRUN, ROOT, run

pytestmark = pytest.mark.multiproc
HOROVODRUN = [HOROVODRUN, "-np", "2", "--gloo"]


def test_mixed_precision_replicas_stay_bit_identical_with_different_data():
    proc = run([*HOROVODRUN, sys.executable, ROOT / "tests" / "mp_precision.py"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    for name, res in result.items():
        assert res["updates"] == 6, name
        for key in ("start", "end", "target", "optimizer"):
            assert len(res[key]) == 2 and res[key][0] == res[key][1], (name, key, res)
        assert res["start"] != res["end"], name  # the updates did change the weights
    # Adam's iterations, m and v of each weight (17 for the dueling MLP); fp16 adds the loss scale and its counter
    assert result["mlp_bf16"]["optimizer_variables"] == 1 + 2 * 8
    assert result["mlp_fp16"]["optimizer_variables"] == 1 + 2 * 8 + 2
    assert result["mlp_fp16"]["loss_scale"] == 2.0**15  # no overflow in 6 updates: the initial scale
