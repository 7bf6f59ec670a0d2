"""What the scripts' ``__main__`` blocks share: JAX's persistent compilation cache, and a refused input
as one ``error:`` line, not a traceback."""
from __future__ import annotations

import os
import sys

import jax

CACHE_ENV = "ROLLAX_COMPILE_CACHE"


def compile_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, so that a second run of a command loads its compiled
    programs from disk instead of compiling them again; returns the directory, or None when off.

    ``$ROLLAX_COMPILE_CACHE`` is the directory, or ``off``; unset, JAX's own ``$JAX_COMPILATION_CACHE_DIR``
    if set, else ``$XDG_CACHE_HOME/rollax/jax`` (``~/.cache/rollax/jax``). Every program is cached, however
    short its compilation and small its size (JAX's defaults skip those under a second: most of a CPU
    run's)."""
    where = os.environ.get(CACHE_ENV, "").strip()
    if where.lower() == "off":
        return None
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = jax.config.jax_compilation_cache_dir or os.path.join(base, "rollax", "jax")
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return where


def run(main) -> None:
    """Call ``main()`` (with the compilation cache on: :func:`compile_cache`) and exit: status 0 (or the
    int it returns); a ``ValueError`` or ``OSError`` (a bad argument, a missing file) prints
    ``error: <message>`` on stderr and exits with status 2."""
    try:
        compile_cache()
        status = main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)
