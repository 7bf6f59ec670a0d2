"""A zero-copy reader of the safetensors format (memory-mapped numpy, bf16 included).

The ``safetensors`` package's numpy backend refuses bfloat16; the format is an 8-byte
little-endian header length, a JSON header, then raw little-endian tensors, so reading it
directly is short and lets callers slice a tensor (for per-shard loads) without reading it all.
No pickle is ever involved.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}


MAX_HEADER = 100_000_000    # bytes: the safetensors library refuses a larger header


def read(path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only memory-mapped arrays.

    The header is checked as the ``safetensors`` library checks it: at most 100 MB of JSON; every
    tensor a known dtype, a shape and two offsets whose span is its shape's bytes in that dtype;
    taken in order of their offsets, the tensors follow each other without gap or overlap from
    the start of the data to the end of the file.
    """
    path = Path(path)
    size, n, header = path.stat().st_size, 0, None
    with open(path, "rb") as f:
        if size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            try:
                header = json.loads(f.read(n)) if n <= MAX_HEADER and 8 + n <= size else None
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                pass
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (no readable header)")
    meta = header.pop("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path}: __metadata__ must map names to strings, got {str(meta)[:100]}")
    ints = lambda x, n=None: (isinstance(x, list) and (n is None or len(x) == n)
                              and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x))
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and ints(info.get("shape"))
                and ints(info.get("data_offsets"), 2)):
            raise ValueError(f"{path}: tensor {name}: malformed header entry {str(info)[:100]} (expected dtype, "
                             f"shape and two data_offsets, as non-negative integers)")
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
    room, end = size - 8 - n, 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        (lo, hi), nbytes = info["data_offsets"], np.dtype(DTYPES[info["dtype"]]).itemsize * math.prod(info["shape"])
        if lo != end:
            raise ValueError(f"{path}: tensor {name} starts at byte {lo} of the data where the tensor before it ends "
                             f"at {end}: offsets that overlap or leave a gap; the file is damaged")
        if hi - lo != nbytes:
            raise ValueError(f"{path}: tensor {name} spans {hi - lo} bytes, but {info['dtype']} {info['shape']} "
                             f"takes {nbytes}; the file is truncated or damaged")
        end = hi
    if end != room:
        raise ValueError(f"{path}: the tensors take {end} bytes of data, the file holds {room}; the file is "
                         "truncated or damaged")
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if room else np.zeros(0, np.uint8)
    return {name: data[lo:hi].view(DTYPES[info["dtype"]]).reshape(info["shape"])
            for name, info in header.items() for lo, hi in [info["data_offsets"]]}


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
