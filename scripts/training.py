"""What the training scripts (``train_tiny``, ``train_reward``) share: their flag checks and ``metrics.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path


def check_flags(args, counts, weights=()) -> None:
    """Refuse training flags that would fail partway or train on garbage (a ``ValueError`` naming the
    flag): ``counts`` (attribute names) positive integers, ``--steps`` at least 2 (the schedule warms
    up, then decays), ``--lr`` a finite number > 0, ``weights`` finite and >= 0."""
    for name in counts:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (warm-up, then decay), got {args.steps}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    for name in weights:
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(args, name)}")


def write_metrics(args, **metrics) -> dict:
    """``metrics`` plus the run's arguments, written to ``args.out / metrics.json``; returned."""
    metrics["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
