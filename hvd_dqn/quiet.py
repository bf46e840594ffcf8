"""TensorFlow's start-up noise kept off the terminal, at the file-descriptor level.

Importing TensorFlow 2.18 on a host without CUDA writes "Unable to register cuDNN/cuFFT/cuBLAS factory" errors,
and its first XLA compilation three "XLA service ... initialized" lines, through absl's C++ logging before
absl is initialised: straight to fd 2, whatever TF_CPP_MIN_LOG_LEVEL says and whatever Python's sys.stderr is.
They are false alarms (the plugins are registered twice; nothing is missing). ``install()`` makes the first
import of tensorflow in this process (whoever imports it, whenever) run with fd 2 piped through a filter
process that drops exactly those lines and passes every other line on as it comes. A separate process rather
than a thread, so that what a crashing import wrote still reaches the terminal: the filter reads to the end of
the pipe after its writer is gone. Python exceptions (an ImportError) are raised after fd 2 is restored.

XLA's lines come at the process's first XLA compilation, which only a process that compiles with XLA makes (the
learner on one rank; on several, the update runs Horovod's ops, which XLA cannot compile): ``first_xla_compile()``
puts that compilation through the same filter. XLA is not warmed up during the import instead: running any TF
function there starts TensorFlow's runtime, after which hvd_dqn.distributed can no longer size the per-rank
thread pools, and every rank of a host then ran as many threads as the host has cores (docs/update-cost.md).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import signal
import subprocess
import sys

# the two prefixes these lines carry: absl's ("E0000 00:00:1796207470.914195    7637 cuda_dnn.cc:8310] ") and
# TensorFlow's own ("2026-12-02 10:31:38.510802: E external/.../cuda_fft.cc:477] ")
_PREFIX = r"(?:[IWE]\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWE] )\S+:\d+\] "
_MESSAGES = [
    r"Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register factory for plugin cu\w+ when one "
    r"has already been registered",
    r"computation placer already registered\. Please check linkage and avoid linking the same target more than",
    r"XLA service 0x[0-9a-f]+ initialized for platform \w+ \(this does not guarantee that XLA will be used\)",
    r"\s*StreamExecutor device \(\d+\): ",
    r"Compiled cluster using XLA!  This line is logged at most once for the lifetime of the process\.",
]
NOISE = re.compile(
    rf"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rf"STDERR$|{_PREFIX}(?:{'|'.join(_MESSAGES)}))"
)

# The filter ends at the pipe's end, when the import is done or its process gone (-I -S: no site-packages, a fast
# start). A stop signal to the whole job (Ctrl-C, a launcher's SIGTERM, SLURM's USR1 to every process of the step)
# must not end it first and leave the rank writing into a broken pipe: it starts with those signals blocked
# (the mask is inherited from the thread that starts it), from its first instruction on.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP}
_FILTER = """\
import re, sys
noise, out = re.compile(sys.argv[1]), sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.match(line.decode("utf-8", "replace").rstrip("\\n")):
        out.write(line)
        out.flush()
"""


def is_noise(line: str) -> bool:
    """A line of TensorFlow's start-up noise (without its newline)."""
    return NOISE.match(line) is not None


@contextlib.contextmanager
def filtered_stderr():
    """fd 2 (C++ and Python alike) through the noise filter for the duration of the block."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to filter
        yield
        return
    # blocked here, a stop signal for this process waits (it is delivered when the mask is restored, not lost)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, NOISE.pattern],
            stdin=subprocess.PIPE,
            stdout=saved,
            stderr=saved,
        )
    except OSError:  # no process to spare: the noise is better than losing a line
        proc = None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if proc is None:
        os.close(saved)
        yield
        return
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 now holds the pipe's only write end in this process
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's end: the filter passes on what is left and exits
        os.close(saved)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child of the import holds the pipe open: the filter stays for it
            pass


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the first import is the one that writes the noise
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_xla_unfiltered = False  # install() was called and no XLA compilation has gone through the filter yet


def install() -> None:
    """Filter the first import of tensorflow in this process (a no-op once it is imported), and the first XLA
    compilation (``first_xla_compile``)."""
    global _xla_unfiltered
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    _xla_unfiltered = True
    sys.meta_path.insert(0, _Finder())


def first_xla_compile():
    """Wrap the call that may be this process's first XLA compilation: after ``install()``, the first such call
    runs with fd 2 filtered (XLA logs its start-up lines once per process); otherwise, and later, a no-op."""
    global _xla_unfiltered
    if not _xla_unfiltered:
        return contextlib.nullcontext()
    _xla_unfiltered = False
    return filtered_stderr()
