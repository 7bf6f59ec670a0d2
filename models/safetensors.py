"""A zero-copy reader of the safetensors format (memory-mapped numpy, bf16 included).

The ``safetensors`` package's numpy backend refuses bfloat16; the format is an 8-byte
little-endian header length, a JSON header, then raw little-endian tensors, so reading it
directly is short and lets callers slice a tensor (for per-shard loads) without reading it all.
No pickle is ever involved.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}


def read(path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only memory-mapped arrays."""
    path = Path(path)
    size, n, header = path.stat().st_size, 0, None
    with open(path, "rb") as f:
        if size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            try:
                header = json.loads(f.read(n)) if 8 + n <= size else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (no readable header)")
    header.pop("__metadata__", None)
    room = size - 8 - n
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if room else np.zeros(0, np.uint8)
    out = {}
    ints = lambda x, n=None: (isinstance(x, list) and (n is None or len(x) == n)
                              and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x))
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and ints(info.get("shape"))
                and ints(info.get("data_offsets"), 2)):
            raise ValueError(f"{path}: tensor {name}: malformed header entry {str(info)[:100]} (expected dtype, "
                             f"shape and two data_offsets, as non-negative integers)")
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        (lo, hi), dtype = info["data_offsets"], np.dtype(DTYPES[info["dtype"]])
        if not 0 <= lo <= hi <= room or hi - lo != dtype.itemsize * int(np.prod(info["shape"])):
            raise ValueError(f"{path}: tensor {name} {info['shape']} lies outside the file or has the wrong "
                             f"byte count ({hi - lo}); the file is truncated or damaged")
        out[name] = data[lo:hi].view(dtype).reshape(info["shape"])
    return out


def write(path, tensors: dict[str, np.ndarray]) -> None:
    """Write numpy arrays as a ``.safetensors`` file."""
    names = {np.dtype(v): k for k, v in DTYPES.items()}
    header, offset = {}, 0
    for name, x in tensors.items():
        header[name] = {"dtype": names[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for x in tensors.values():
            f.write(np.ascontiguousarray(x).tobytes())
