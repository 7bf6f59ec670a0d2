"""How much memory this process may still allocate, for the checks that refuse work that cannot fit.

On an accelerator that is the device's limit minus what it holds. On CPU a process can be stopped
well short of the machine's RAM: by ``ulimit`` (RLIMIT_AS, RLIMIT_DATA), by its cgroup's memory
limit (containers, systemd, batch schedulers), or by what is already in use.
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
from pathlib import Path

import jax

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def memory_bytes(mesh=None) -> int:
    """Bytes this process may still allocate for arrays: on an accelerator its free memory (limit
    minus in use, times the mesh's devices), on CPU :func:`host_bytes`."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return free * (1 if mesh is None else mesh.devices.size)
    return host_bytes()


def host_bytes() -> int:
    """The least room left on the host: its available RAM (or, without ``/proc``, its physical RAM),
    RLIMIT_AS less this process's virtual size, RLIMIT_DATA less its data size, and each memory
    cgroup limit it is under (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) less that cgroup's use."""
    _trim()
    page = os.sysconf("SC_PAGE_SIZE")
    room = [_meminfo_available() or page * os.sysconf("SC_PHYS_PAGES")]
    statm = _ints(PROC / "self" / "statm") or [0] * 7     # pages: size, resident, shared, text, lib, data, dirty
    for limit, used in ((resource.RLIMIT_AS, statm[0]), (resource.RLIMIT_DATA, statm[5])):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            room.append(soft - used * page)
    return max(0, min(room + _cgroup_room()))


def _trim() -> None:
    """Give the pages the C allocator holds free back to the system (glibc's ``malloc_trim``; elsewhere
    nothing), so that what this process freed counts as available. XLA's CPU buffers come from
    ``malloc``, and glibc keeps freed ones: a long ``meta_table`` run held 19.7 GB, 7.6 GB of them
    free, and its checks refused work that would have fit (docs/perf.md)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    """The C library this process runs on (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _cgroup_room() -> list[int]:
    """Limit minus usage of every memory cgroup this process is in, and of their parents (their
    limits bind too), as far as ``/sys/fs/cgroup`` shows them."""
    try:
        lines = (PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    room = []
    for line in lines:                                    # "0::/path" (v2) or "4:memory:/path" (v1)
        _, controllers, where = line.split(":", 2)
        if controllers == "":
            root, files = CGROUP, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            root, files = CGROUP / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = Path(where).parts[1:]
        for depth in range(len(parts) + 1):
            limit, used = (_ints(root.joinpath(*parts[:depth], f)) for f in files)
            if limit and used:                            # "max" (no limit) is not an integer
                room.append(limit[0] - used[0])
    return room


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (free memory plus what the kernel can reclaim)."""
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ints(path: Path) -> list[int] | None:
    """The whitespace-separated integers in a small file, or None (absent, or not integers)."""
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return None
