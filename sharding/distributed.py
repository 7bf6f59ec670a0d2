"""Multi-host start-up and prompt exchange, through ``jax.distributed`` only.

Every host runs the same script. :func:`initialize` joins the hosts into one JAX runtime (then
``jax.devices()`` lists every device of every host and one mesh spans them all);
:func:`gather_prompts` lets each host contribute its own prompts and learn everyone's, so all
hosts run the same SPMD program on the same global batch. ``engine.generate(..., mesh=mesh)``
returns its results replicated on every host; a host picks its own rows with the slice
:func:`gather_prompts` returned.
"""
from __future__ import annotations

import os

import jax
import numpy as np

ENV_COORDINATOR = "ROLLAX_COORDINATOR"       # "host:port" of process 0
ENV_NUM_PROCESSES = "ROLLAX_NUM_PROCESSES"
ENV_PROCESS_ID = "ROLLAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _cluster_detected() -> bool:
    """Whether JAX's own cluster detection (TPU pod, SLURM, Open MPI, Kubernetes) sees a cluster."""
    try:
        from jax._src import clusters
        kinds = clusters.ClusterEnv._cluster_types
    except (ImportError, AttributeError):  # private API moved: only explicit arguments then
        return False
    return any(not getattr(k, "opt_in_only_method", False) and k.is_env_present() for k in kinds)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, timeout_s: int = 300) -> bool:
    """Join this process to the others with ``jax.distributed.initialize``; call before any JAX work.

    The coordinator (``"host:port"`` of process 0), the number of processes and this process's
    id come from the arguments, else from ``ROLLAX_COORDINATOR`` / ``ROLLAX_NUM_PROCESSES`` /
    ``ROLLAX_PROCESS_ID`` (or JAX's ``JAX_COORDINATOR_ADDRESS``), else from JAX's cluster
    auto-detection (Cloud TPU pods, SLURM, Open MPI, Kubernetes). With none of these, or with a
    single process, it does nothing: the same script runs unchanged on one host. Returns True
    when a multi-process runtime is (now) running. Calling it again is harmless.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = (coordinator_address or os.environ.get(ENV_COORDINATOR)
                           or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit) and not _cluster_detected():
        return False                                     # one host: nothing to join
    if num_processes == 1:
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ValueError(f"coordinator address must be 'host:port', got {coordinator_address!r}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids, initialization_timeout=timeout_s)
    return True


def shutdown() -> None:
    """Leave the multi-process runtime (no-op when it is not running)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def gather_prompts(local_prompts) -> tuple[list[list[int]], slice]:
    """Every host's prompts, in process order, and the slice of them that this host gave.

    ``local_prompts`` is this host's list of token-id lists (tokenize strings first; hosts may
    give different numbers of prompts, even none). Every host gets the same full list back, so
    all of them can run the same program; ``prompts[mine]`` are this host's. On one process it
    returns the prompts unchanged and ``slice(0, len)``.
    """
    local = [_ids(i, p) for i, p in enumerate(local_prompts)]
    if jax.process_count() == 1:
        return local, slice(0, len(local))
    from jax.experimental import multihost_utils
    count, longest = len(local), max((len(p) for p in local), default=0)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([count, longest], np.int32)))
    most, width = int(sizes[:, 0].max()), max(1, int(sizes[:, 1].max()))
    table = np.full((most, width + 1), -1, np.int32)     # column 0: the prompt's length
    for row, p in enumerate(local):
        table[row, 0] = len(p)
        table[row, 1:1 + len(p)] = p
    every = np.asarray(multihost_utils.process_allgather(table))   # [processes, most, width + 1]
    prompts = [every[h, r, 1:1 + every[h, r, 0]].tolist() for h in range(every.shape[0])
               for r in range(int(sizes[h, 0]))]
    offset = int(sizes[:jax.process_index(), 0].sum())
    return prompts, slice(offset, offset + count)


def _ids(i: int, prompt) -> list[int]:
    """Prompt ``i`` as a flat list of int32 token ids, or a ``ValueError`` (a cast would truncate
    floats, and the all-gather's int32 table would wrap larger ids)."""
    if isinstance(prompt, str):
        raise ValueError(f"prompt {i} is a string; gather_prompts takes token ids (tokenize first)")
    try:
        ids = np.asarray(prompt)
    except ValueError:                                   # ragged nesting
        ids = np.asarray(None)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"prompt {i} must be a flat list of integer token ids, got {str(prompt)[:60]}")
    if ids.size and not (0 <= ids.min() and ids.max() < 2 ** 31):
        raise ValueError(f"prompt {i} has token ids outside [0, 2**31): {ids.min()}..{ids.max()}")
    return ids.tolist()
