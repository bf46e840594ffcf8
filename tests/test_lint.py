"""The repository passes ruff's lint rules and is as ruff formats it (pyproject.toml), as make test checks in CI."""

from conftest import BIN, ROOT, run


def test_ruff_check_finds_nothing():
    proc = run([BIN / "ruff", "check", "--no-cache", ROOT], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_would_change_no_file():
    proc = run([BIN / "ruff", "format", "--check", "--no-cache", ROOT], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
