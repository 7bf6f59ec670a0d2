"""What the scripts' ``__main__`` blocks share: a refused input is one ``error:`` line, not a traceback."""
from __future__ import annotations

import math
import sys


def check_training(args, counts, weights=()) -> None:
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


def run(main) -> None:
    """Call ``main()`` and exit: status 0 (or the int it returns); a ``ValueError`` or ``OSError`` (a bad
    argument, a missing file) prints ``error: <message>`` on stderr and exits with status 2."""
    try:
        status = main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)
