"""Reading a model directory's small files (``config.json``, ``tokenizer_config.json``, ...)."""
from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path):
    """The JSON in ``path``, or a ``ValueError`` naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:   # recursion: nested too deep
        raise ValueError(f"cannot read {path}: {e}") from None
