"""Checkpoints shipped with rollax, found by name: ``models.load("tiny-arith")``."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped models' names."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def resolve(path) -> Path:
    """``path`` as a directory; a bare name that is not a directory but a shipped model maps to it."""
    path = Path(path)
    if not path.is_dir() and len(path.parts) == 1 and path.name in names():
        return ROOT / path.name
    return path
