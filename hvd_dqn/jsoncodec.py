"""Exact JSON for the Python and NumPy values that env, RNG and actor state are made of (checkpoints'
``rank<r>.json``): ``from_json(json.loads(json.dumps(to_json(v))))`` gives back ``v`` with its types and dtypes,
and reading one runs no code (no pickle)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    """Exact JSON for the values env and RNG state is made of: arrays and NumPy scalars keep their dtype (floats
    round-trip exactly through Python's repr), tuples and deques stay what they are, Generators become their
    bit-generator state."""
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"cannot store an array of dtype {arr.dtype}")
        return {
            "__ndarray__": arr.dtype.str,
            "shape": list(arr.shape),
            "data": arr.ravel().tolist(),
            "scalar": isinstance(value, np.generic),
        }
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, deque):
        return {"__deque__": [to_json(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__}")


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        arr = np.array(value["data"], dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"])
        return arr[()] if value.get("scalar") else arr
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__deque__" in value:
        return deque((from_json(v) for v in value["__deque__"]), maxlen=value["maxlen"])
    if "__generator__" in value:
        state = value["__generator__"]
        gen = np.random.Generator(getattr(np.random, state["bit_generator"])())
        gen.bit_generator.state = state
        return gen
    return {k: from_json(v) for k, v in value.items()}
