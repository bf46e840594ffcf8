"""A launcher's output on the user's terminal: the ranks' lines as they print them, errors named by rank.

horovodrun tags every line of a rank: with ``--mpi`` it runs mpirun with ``--tag-output`` (hard-coded in
horovod/runner/mpi_run.py), which writes ``[1,0]<stdout>:`` before each piece a rank writes, even in the middle of
a line when that line came in two writes; with ``--gloo`` it prefixes each line with ``[0]<stdout>:`` itself.
``python -m hvd_dqn.launchout LAUNCHER [ARGS...]`` (what ``make train`` and launch/horovodrun.sh run) starts the
launcher with its two output streams piped through this process, puts each rank's pieces back into that rank's
lines, and writes every line on the stream it came on:

- rank 0's standard output as it is: the progress lines and the summary;
- our own lines that speak for the job (rank 0's ``hvd-dqn...``) or name their rank (``hvd-dqn: rank 1
  failed: ...``) as they are;
- any other line of a rank (a traceback, a library's warning, what another rank prints) after ``rank N: ``;
- the launcher's own lines as they are, except TensorFlow's start-up noise (``hvd_dqn.quiet``), which horovodrun's
  check of its build prints when it imports TensorFlow.

Signals: SIGTERM to this process is passed on to the launcher, which then does what it did when it was signalled
itself; Ctrl-C reaches the launcher (and through it the ranks) from the terminal, and SIGUSR1 is the ranks' stop
request, so for both this process only keeps showing what the job prints while it stops. It ends once the
launcher has ended and everything the job wrote is shown, with the launcher's exit code (128 + the signal's
number if a signal ended it): leaving earlier would close the pipe that mpirun still writes the ranks' last lines
to, and kill it with SIGPIPE.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

from hvd_dqn.quiet import is_noise

# mpirun's "[job,rank]<stream>:" and horovodrun --gloo's "[rank]<stream>:" (either may follow a timestamp option's
# date; those are left in the text)
TAG = re.compile(rb"\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:")


def shown(rank: int, stream: str, line: bytes) -> bytes:
    """A rank's ``line`` (on ``stream``, "stdout" or "stderr") as the terminal shows it."""
    if rank == 0 and (stream == "stdout" or line.startswith(b"hvd-dqn")):
        return line
    if re.match(rb"hvd-dqn: rank %d(?!\d)" % rank, line):
        return line
    return b"rank %d: " % rank + line


Source = tuple[int, str] | None  # (rank, "stdout" or "stderr") of a tagged piece; None: the launcher's own text


class Untagger:
    """A launcher's tagged output in, the lines to show out: ``feed(data)`` yields each line that ``data``
    completes, a rank's own pieces joined up; ``close()`` yields what was left without a newline at the end."""

    def __init__(self):
        self._partial: dict[Source, bytes] = {}  # the text of each source's unended line

    def feed(self, data: bytes) -> Iterator[bytes]:
        """``data``: whole lines of the launcher's stream (a line without a tag is the launcher's own)."""
        pos, source = 0, None
        for match in TAG.finditer(data):
            yield from self._add(source, data[pos : match.start()])
            source, pos = (int(match.group(1)), match.group(2).decode()), match.end()
        yield from self._add(source, data[pos:])

    def close(self) -> Iterator[bytes]:
        for source, text in self._partial.items():
            out = self._line(source, text)
            if out is not None:
                yield out
        self._partial.clear()

    def _add(self, source: Source, text: bytes) -> Iterator[bytes]:
        if not text:
            return
        text = self._partial.pop(source, b"") + text
        *lines, rest = text.split(b"\n")
        for line in lines:
            out = self._line(source, line + b"\n")
            if out is not None:
                yield out
        if rest:
            self._partial[source] = rest

    @staticmethod
    def _line(source: Source, line: bytes) -> bytes | None:
        if source is None:
            return None if is_noise(line.decode("utf-8", "replace").rstrip("\n")) else line
        return shown(*source, line)


def _pump(source: BinaryIO, sink: BinaryIO) -> None:
    untagger = Untagger()
    for data in iter(source.readline, b""):
        for line in untagger.feed(data):
            sink.write(line)
            sink.flush()
    for line in untagger.close():
        sink.write(line)
        sink.flush()


def run(argv: list[str]) -> int:
    """Run the launcher ``argv`` with its output shown as the module docstring says; its exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter in horovodrun's check
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # handlers, not SIG_IGN: an ignored signal would stay ignored in the launcher started after
    signal.signal(signal.SIGTERM, lambda *_: launcher.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: None)  # the terminal sent it to the launcher too
    signal.signal(signal.SIGUSR1, lambda *_: None)  # the ranks' stop request (SLURM's, for one), not ours
    pumps = [
        threading.Thread(target=_pump, args=(src, sink), daemon=True)
        for src, sink in ((launcher.stdout, sys.stdout.buffer), (launcher.stderr, sys.stderr.buffer))
    ]
    for pump in pumps:
        pump.start()
    code = launcher.wait()
    for pump in pumps:  # the job's last lines: mpirun and the ranks may still write after horovodrun has gone
        pump.join()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m hvd_dqn.launchout LAUNCHER [ARGS...]")
    found = shutil.which(argv[0])
    if found is None:
        sys.exit(f"hvd-dqn: error: no launcher {argv[0]!r} found")
    sys.exit(run([found, *argv[1:]]))


if __name__ == "__main__":
    main(sys.argv[1:])
