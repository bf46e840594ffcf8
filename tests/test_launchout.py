"""hvd_dqn.launchout: the launcher's tagged output back into the ranks' own lines, on the user's terminal. The real
launch is in test_quiet.py (launch/horovodrun.sh) and test_launchers.py (a failing rank's lines)."""

import sys

from conftest import run
from hvd_dqn.launchout import Untagger, shown

# What mpirun --tag-output wrote (Open MPI 4.1.4, horovodrun -np 2 --mpi) for ranks that each wrote "one write
# aR\nsecond line bR\n" in one write, then "piece1 " and, 0.2 s later, "piece2 of rank R\n": a tag after every
# newline and at the start of every write, in the middle of a line too.
MPIRUN = (
    b"[1,1]<stdout>:one write a1\n[1,1]<stdout>:second line b1\n"
    b"[1,1]<stdout>:piece1 [1,0]<stdout>:one write a0\n[1,0]<stdout>:second line b0\n"
    b"[1,0]<stdout>:piece1 [1,1]<stdout>:piece2 of rank 1\n[1,0]<stdout>:piece2 of rank 0\n"
)


def _lines(*chunks: bytes) -> list[bytes]:
    untagger = Untagger()
    out = [line for chunk in chunks for line in untagger.feed(chunk)]
    return out + list(untagger.close())


def test_mpiruns_pieces_are_joined_into_each_ranks_lines():
    physical = [line + b"\n" for line in MPIRUN.split(b"\n")[:-1]]  # as the pipe's readline hands them over
    assert _lines(*physical) == [
        b"rank 1: one write a1\n",
        b"rank 1: second line b1\n",
        b"one write a0\n",
        b"second line b0\n",
        b"rank 1: piece1 piece2 of rank 1\n",
        b"piece1 piece2 of rank 0\n",
    ]


def test_who_is_named():
    assert shown(0, "stdout", b"hvd-dqn | steps 2,504\n") == b"hvd-dqn | steps 2,504\n"
    # rank 0 speaks for the job; a rank that names itself is left as it is
    assert shown(0, "stderr", b"hvd-dqn: run dir r: deleted\n") == b"hvd-dqn: run dir r: deleted\n"
    assert shown(1, "stderr", b"hvd-dqn: rank 1 failed: X\n") == b"hvd-dqn: rank 1 failed: X\n"
    # anything else says whose it is
    assert shown(0, "stderr", b"Traceback (most recent\n") == b"rank 0: Traceback (most recent\n"
    assert shown(1, "stdout", b"a print\n") == b"rank 1: a print\n"
    assert shown(1, "stderr", b"hvd-dqn: rank 0 made no progress\n") == b"rank 1: hvd-dqn: rank 0 made no progress\n"
    assert shown(12, "stderr", b"hvd-dqn: rank 1 failed\n") == b"rank 12: hvd-dqn: rank 1 failed\n"


def test_gloo_tags_the_launchers_own_lines_and_noise():
    noise = (
        b"E0000 00:00:1796207470.914195    7637 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting "
        b"to register factory for plugin cuDNN when one has already been registered\n"
    )
    assert _lines(
        noise,
        b"[1]<stderr>:Traceback (most recent call last):\n",
        b"Process 1 exit with status code 1.\n",
        b"[0]<stderr>:hvd-dqn: error: x\n",
        b"[0]<stdout>:no end",
    ) == [
        b"rank 1: Traceback (most recent call last):\n",
        b"Process 1 exit with status code 1.\n",
        b"hvd-dqn: error: x\n",
        b"no end",
    ]


def test_the_launchers_exit_code_and_streams_come_through():
    script = (
        "import os, sys\nos.write(1, b'[1,0]<stdout>:progress\\n[1,1]<stdout>:other\\n')\n"
        "os.write(2, b'[1,1]<stderr>:boom\\n')\nsys.exit(3)"
    )
    proc = run([sys.executable, "-m", "hvd_dqn.launchout", sys.executable, "-c", script], timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "progress\nrank 1: other\n", "rank 1: boom\n")
