"""What the scripts' ``__main__`` blocks share: a refused input is one ``error:`` line, not a traceback."""
from __future__ import annotations

import sys


def run(main) -> None:
    """Call ``main()`` and exit: status 0 (or the int it returns); a ``ValueError`` or ``OSError`` (a bad
    argument, a missing file) prints ``error: <message>`` on stderr and exits with status 2."""
    try:
        status = main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)
