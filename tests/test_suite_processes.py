"""Every process a test starts goes through conftest's `run` or `started`: in a session of its own, killed with all
it started when the test times out, fails or is interrupted. A direct subprocess.run(timeout=...) kills only the
command, and leaves a launcher's mpirun and ranks training."""

import ast
import subprocess
from pathlib import Path

import psutil
import pytest

from conftest import run, started

TESTS = Path(__file__).resolve().parent
LAUNCHING = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {
        "system",
        "popen",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "posix_spawn",
        "posix_spawnp",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "execv",
        "execve",
        "execvp",
        "execvpe",
    },
    "pty": {"spawn"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
}


def direct_launches(source: str) -> list[str]:
    """``line: name`` for each use of a process-launching function in ``source`` (a call, an alias, an import
    of it); a type annotation such as ``-> subprocess.Popen`` starts nothing and is not one."""
    tree = ast.parse(source)
    annotations = set()
    for node in ast.walk(tree):
        parts = [getattr(node, "returns", None), getattr(node, "annotation", None)]
        if isinstance(node, ast.arguments):
            parts += [
                a.annotation
                for a in [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg]
                if a is not None
            ]
        annotations.update(id(n) for part in parts if part is not None for n in ast.walk(part))
    found = []
    for node in ast.walk(tree):
        if id(node) in annotations:
            continue
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.attr in LAUNCHING.get(node.value.id, ())
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module in LAUNCHING:
            found += [
                (node.lineno, f"from {node.module} import {a.name}")
                for a in node.names
                if a.name in LAUNCHING[node.module] or a.name == "*"
            ]
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_no_test_starts_a_process_past_conftest():
    offenders = {
        path.name: found
        for path in sorted(TESTS.glob("*.py"))
        if path.name != "conftest.py"
        for found in [direct_launches(path.read_text())]
        if found
    }
    assert offenders == {}, "use conftest.run or conftest.started instead: " + repr(offenders)


def test_the_check_sees_each_form():
    source = (
        "import os, subprocess\nfrom subprocess import PIPE, check_output\n"
        "def f(p: subprocess.Popen) -> subprocess.Popen:\n"
        "    q: subprocess.Popen = None\n"
        "    subprocess.run(['x'], stdout=PIPE)\n"
        "    start = subprocess.Popen\n"
        "    os.system('x')\n"
    )
    assert direct_launches(source) == [
        "2: from subprocess import check_output",
        "5: subprocess.run",
        "6: subprocess.Popen",
        "7: os.system",
    ]


def test_started_kills_what_is_left_of_its_session_and_what_left_the_session():
    """Two grandchildren, one in the command's session and one in a session of its own (as horovodrun --gloo starts
    each rank's shell): both are gone once the block is left."""
    with started(["bash", "-c", "sleep 300 & echo $!; setsid sleep 300 & echo $!; wait"]) as proc:
        grandchildren = [psutil.Process(int(proc.stdout.readline())) for _ in range(2)]
    # SIGKILL is delivered, not waited for: give the kernel a moment to end them
    _, alive = psutil.wait_procs(grandchildren, timeout=30)
    assert alive == []


def test_run_passes_the_environment_and_checks():
    assert run(["sh", "-c", "echo $HVD_DQN_X"], timeout=60, HVD_DQN_X="y").stdout == "y\n"
    assert run(["sh", "-c", "echo ${HVD_DQN_X:-none}"], timeout=60, env={"PATH": "/usr/bin:/bin"}).stdout == "none\n"
    with pytest.raises(subprocess.CalledProcessError):
        run(["false"], timeout=60, check=True)
