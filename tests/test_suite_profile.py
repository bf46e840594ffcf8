"""tools/suite_profile.py's per-file sums, over rows as tests/conftest.py writes them."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import suite_profile  # noqa: E402


def test_sums_per_file_and_per_process_kind(tmp_path, capsys):
    tests = [
        {"test": "tests/test_a.py::test_one", "wall_s": 10.0, "cpu_s": 1.0, "children_cpu_s": 15.0},
        {"test": "tests/test_a.py::test_two", "wall_s": 2.0, "cpu_s": 2.0, "children_cpu_s": 0.0},
        {"test": "tests/test_b.py::test_x", "wall_s": 4.0, "cpu_s": 3.0, "children_cpu_s": 0.0},
    ]
    procs = [
        {"pid": 1, "test": "tests/test_a.py::test_one (call)", "argv": ["/v/bin/hvd-dqn", "train"], "cpu_s": 7.0},
        {"pid": 2, "test": "tests/test_a.py::test_one (call)", "argv": ["/v/bin/hvd-dqn", "train"], "cpu_s": 6.0},
        {"pid": 3, "test": "tests/test_a.py::test_one (call)", "argv": ["tests/bin/horovodrun", "-np"], "cpu_s": 1.0},
    ]
    (tmp_path / "tests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tests))
    (tmp_path / "processes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in procs))
    suite_profile.main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["tests/test_a.py", "2", "12", "18", "1.50", "3", "14"]
    assert lines[2].split() == ["tests/test_b.py", "1", "4", "3", "0.75", "0", "0"]
    assert lines[3].split() == ["total", "3", "16", "21", "1.31", "3", "14"]
    assert lines[6].split() == ["hvd-dqn", "2", "13", "6.5"]
    assert lines[7].split() == ["horovodrun", "1", "1", "1.0"]
