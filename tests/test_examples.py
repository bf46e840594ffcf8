"""The examples run as a user would start them (tiny step counts) and do what they say."""

import re
import sys

from conftest import ROOT, run


def test_embed_in_tf_program(tmp_path):
    run_dir = tmp_path / "run"
    proc = run([sys.executable, ROOT / "examples" / "embed_in_tf_program.py", "1200", run_dir])
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluations = re.findall(r"^\[my program\] evaluation at (\d+) steps", proc.stdout, re.M)
    assert evaluations == ["300", "600", "900", "1200"]
    assert f"[my program] model written to {run_dir / 'q_network.keras'}" in proc.stdout
    served = re.search(r"served one greedy episode from (\S+): return (\d+)$", proc.stdout, re.M)
    assert served and served.group(1) == f"{run_dir}-export" and 1 <= int(served.group(2)) <= 500
    assert (tmp_path / "run-export" / "saved_model" / "saved_model.pb").is_file()
