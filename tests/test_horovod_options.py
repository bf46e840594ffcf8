"""The config's Horovod keys (allreduce_op, gradient_compression, backward_passes_per_step,
average_aggregated_gradients), and optimizer lamb's own reduction, under `horovodrun -np 2`, for real: the reduced
gradient recomputed in NumPy from every rank's own, the learner's allreduces counted in a Horovod timeline, and the
replicas bit-identical (and, without the allreduce, not). One job per controller runs every option set of that
controller as a step of its own (tests/mp_horovod_options.py), then the replicas' check (tests/mp_replicas.py);
each test reads its step's result and its part of the job's timeline."""

import collections
import json
import sys

import numpy as np
import pytest

from conftest import BIN, HOROVODRUN, ROOT, run

pytestmark = pytest.mark.multiproc
LEARNER_UPDATES = 16  # two phases of 8 in mp_horovod_options.py
TIMELINE_UPDATES = LEARNER_UPDATES + 4  # and the phase of 4 with a NaN, which every rank runs to its end
# the option sets of each controller's job, by the name the tests read them by (adasum needs MPI; the gloo job
# covers the tape-based reduction of lamb and the averaged aggregation)
MPI_STEPS = {
    "average": {},
    "fp16": {"gradient_compression": "fp16"},
    "passes": {"backward_passes_per_step": 2},
    "adasum": {"allreduce_op": "adasum"},
}
GLOO_STEPS = {
    "passes-averaged": {"backward_passes_per_step": 2, "average_aggregated_gradients": True},
    "lamb-none": {"optimizer": "lamb", "gradient_compression": "none"},
    "lamb-fp16": {"optimizer": "lamb", "gradient_compression": "fp16"},
}


def _job(steps: dict, tmp_path, controller: str) -> dict[str, tuple[dict, dict]]:
    """{step name: (its result, its learner's allreduces)} of one job that runs ``steps`` in order."""
    timeline, out = tmp_path / "timeline.json", tmp_path / "result.json"
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            controller,
            "-H",
            "localhost:2",
            sys.executable,
            ROOT / "tests" / "mp_horovod_options.py",
            json.dumps(list(steps.values())),
            out,
        ],
        timeout=850,
        HOROVOD_TIMELINE=timeline,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results, per_step = json.loads(out.read_text()), learner_allreduces_by_step(timeline)
    assert len(results) == len(per_step) == len(steps)
    return dict(zip(steps, zip(results, per_step)))


@pytest.fixture(scope="module")
def mpi_job(tmp_path_factory):
    return _job({**MPI_STEPS, "replicas": "replicas"}, tmp_path_factory.mktemp("mpi"), "--mpi")


@pytest.fixture(scope="module")
def gloo_job(tmp_path_factory):
    return _job({**GLOO_STEPS, "replicas": "replicas"}, tmp_path_factory.mktemp("gloo"), "--gloo")


def _result(result: dict) -> dict:
    learner = result["learner"]
    assert learner["updates"] == LEARNER_UPDATES
    for key in ("start", "end", "adam"):  # different data on each rank, the same weights and Adam state
        assert len(learner[key]) == 2 and learner[key][0] == learner[key][1], (key, learner)
    assert learner["start"] != learner["end"]
    # the finite checks stop both ranks in the same phase: rank 0 at its NaN loss, rank 1 at the first loss
    # computed from the weights that the reduced NaN gradient made
    assert result["nan"] == [
        f"non-finite TD loss at update {u}; stopping (the last checkpoint is intact)" for u in (18, 19)
    ]
    grads = np.asarray(result["grads"], np.float32)  # (rank, pass, 3, 5)
    return {"grads": grads, "reduced": np.asarray(result["reduced"], np.float32), "learner": learner}


def learner_allreduces(timeline) -> dict[str, list]:
    """{tensor name: [dtype of each ALLREDUCE]} for the learner's gradient tensors in a Horovod timeline (rank 0
    writes it; each tensor is a "process" of the Chrome trace, named in a metadata event)."""
    return _learner_allreduces(timeline, marker=None)[0]


def learner_allreduces_by_step(timeline) -> list[dict[str, list]]:
    """learner_allreduces for each step of a job of mp_horovod_options.py: the timeline cut where a step's
    ``step_start`` broadcast begins (the script waits for each collective's result before the next)."""
    before, *steps = _learner_allreduces(timeline, marker="HorovodBroadcast_step_start_0")
    assert not before, before
    return steps


def _learner_allreduces(timeline, marker: str | None) -> list[dict[str, list]]:
    events = json.loads(timeline.read_text())
    names = {
        e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name" and "name" in e.get("args", {})
    }
    parts = [collections.defaultdict(list)]
    open_op = {}
    for e in events:
        name = names.get(e.get("pid"), "")
        if name == marker and e["ph"] == "B" and e["name"] == "BROADCAST":
            parts.append(collections.defaultdict(list))
        if "while/" not in name:  # the learner's phase loop, not the script's stand-alone optimizer
            continue
        if e["ph"] == "B" and e["name"] in ("ALLREDUCE", "ADASUM"):
            open_op[e["pid"]] = e["name"]
        elif e["ph"] == "E" and "dtype" in e.get("args", {}) and open_op.pop(e["pid"], None):
            parts[-1][name].append(e["args"]["dtype"])
    return parts


def test_average_is_the_mean_of_the_ranks_gradients_in_one_allreduce_per_update(mpi_job):
    result, per_tensor = mpi_job["average"]
    r = _result(result)
    # traced once, with Horovod's reduction inline (not its autograph tf.function): docs/update-cost.md
    assert (r["learner"]["traces"], r["learner"]["reduce_fn"]) == (1, "function")
    g = r["grads"][:, 0]
    np.testing.assert_array_equal(r["reduced"][0], (g[0] + g[1]) * np.float32(0.5))
    assert len(per_tensor) == 6  # 3 kernels + 3 biases of the 16x16 MLP, in one grouped allreduce
    assert all(dtypes == ["float32"] * TIMELINE_UPDATES for dtypes in per_tensor.values()), per_tensor


def test_fp16_compression_sends_float16_and_rounds_to_it(mpi_job):
    result, per_tensor = mpi_job["fp16"]
    r = _result(result)
    g = r["grads"][:, 0].astype(np.float16)
    expected = ((g[0] + g[1]) * np.float16(0.5)).astype(np.float32)  # summed and halved in float16
    np.testing.assert_array_equal(r["reduced"][0], expected)
    assert not np.array_equal(expected, (r["grads"][0, 0] + r["grads"][1, 0]) * np.float32(0.5))
    assert len(per_tensor) == 6
    assert all(dtypes == ["float16"] * TIMELINE_UPDATES for dtypes in per_tensor.values()), per_tensor


@pytest.mark.parametrize("average", [False, True])
def test_backward_passes_per_step_sums_locally_and_allreduces_once_per_k(mpi_job, gloo_job, average):
    result, per_tensor = gloo_job["passes-averaged"] if average else mpi_job["passes"]
    r = _result(result)
    np.testing.assert_array_equal(r["reduced"][0], 0.0)  # the first pass only aggregated: no step yet
    local = r["grads"][:, 0] + r["grads"][:, 1]  # each rank's sum of its two passes
    expected = (local[0] + local[1]) * np.float32(0.5)
    if average:
        expected = expected / np.float32(2)
    np.testing.assert_array_equal(r["reduced"][1], expected)
    assert len(per_tensor) == 6
    assert all(len(dtypes) == TIMELINE_UPDATES // 2 for dtypes in per_tensor.values()), per_tensor


def test_adasum_combines_by_projection(mpi_job):
    result, per_tensor = mpi_job["adasum"]
    r = _result(result)
    a, b = r["grads"][:, 0].astype(np.float64)
    dot = (a * b).sum()
    adasum = (1 - dot / (2 * (a * a).sum())) * a + (1 - dot / (2 * (b * b).sum())) * b
    np.testing.assert_allclose(r["reduced"][0], adasum, rtol=1e-5, atol=1e-6)
    assert np.abs(r["reduced"][0] - (a + b) / 2).max() > 0.1  # not the mean
    assert len(per_tensor) == 6
    assert all(len(ops) == TIMELINE_UPDATES for ops in per_tensor.values()), per_tensor


@pytest.mark.parametrize("compression", ["none", "fp16"])
def test_lamb_steps_on_the_mean_of_the_ranks_gradients(gloo_job, compression):
    result, per_tensor = gloo_job[f"lamb-{compression}"]
    r = _result(result)
    g = r["grads"][:, 0]
    if compression == "fp16":
        mean = ((g[0].astype(np.float16) + g[1].astype(np.float16)) * np.float16(0.5)).astype(np.float32)
    else:
        mean = (g[0] + g[1]) * np.float32(0.5)
    np.testing.assert_allclose(r["reduced"][0], mean / (np.abs(mean) + 1), rtol=1e-5, atol=1e-7)
    assert np.abs(r["reduced"][0] - g[0] / (np.abs(g[0]) + 1)).max() > 0.1  # not rank 0's own gradient
    assert len(per_tensor) == 6  # one allreduce per tensor and update (DistributedGradientTape)
    dtype = "float16" if compression == "fp16" else "float32"
    assert all(dtypes == [dtype] * TIMELINE_UPDATES for dtypes in per_tensor.values()), per_tensor


def test_adasum_under_gloo_is_a_one_line_error(tmp_path, tiny_cartpole):
    proc = run(
        [
            HOROVODRUN,
            "-np",
            "2",
            "--gloo",
            "-H",
            "localhost:2",
            BIN / "hvd-dqn",
            "train",
            "--config",
            tiny_cartpole,
            "--run-dir",
            tmp_path / "run",
            "--set",
            "allreduce_op=adasum",
        ],
        timeout=850,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Exit code: 2" in output  # the ranks' exit code for bad input
    assert (
        "allreduce_op: adasum needs the MPI controller (horovodrun --mpi, mpirun or srun); this job runs on "
        "Gloo" in output
    )
    # no rank printed a traceback (horovodrun itself prints one when it reports the ranks' exit)
    assert not [line for line in output.splitlines() if line.startswith(("[0]", "[1]")) and "Traceback" in line]


@pytest.mark.parametrize("controller", ["--gloo", "--mpi"])
def test_replicas_stay_bit_identical_with_different_data(request, controller):
    job = request.getfixturevalue("gloo_job" if controller == "--gloo" else "mpi_job")
    result, _ = job["replicas"]
    synced, local = result["synced"], result["local_only"]
    assert synced["updates"] == 24
    for key in ("start", "end", "target", "adam"):
        assert len(synced[key]) == 2 and synced[key][0] == synced[key][1], (key, synced)
    assert synced["start"] != synced["end"]  # training did change the weights
    # the control: same start, no allreduce, different data -> the replicas drift
    assert local["start"][0] == local["start"][1]
    assert local["end"][0] != local["end"][1]
