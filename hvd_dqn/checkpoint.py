"""Saving what a run produces, atomically: a crash mid-write never leaves a damaged file under the final name."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_keras_model(model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file that plain tf_keras loads (no Horovod, no custom objects)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp)
