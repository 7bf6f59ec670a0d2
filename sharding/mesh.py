"""Device meshes: a 2-D ``(data, tensor)`` mesh over every device of every host.

``data`` splits the rollouts (and prompts) between devices; ``tensor`` splits each weight's
heads / MLP / vocabulary between devices (tensor parallelism). Axes are ``AxisType.Auto`` so
XLA propagates shardings from the placed inputs and the constraints the engine adds.
"""
from __future__ import annotations

import math

import jax
from jax.sharding import AxisType, Mesh

DATA, TENSOR = "data", "tensor"
AXES = (DATA, TENSOR)


def mesh_shape(n_devices: int, data: int = -1, tensor: int = 1) -> tuple[int, int]:
    """Resolve ``(data, tensor)`` sizes for ``n_devices``; at most one size may be -1 (inferred).

    Raises ``ValueError`` naming the problem when a size is 0 or below -1, when both are -1, or
    when the sizes do not multiply to (or, with -1, divide) the device count.
    """
    sizes = {DATA: data, TENSOR: tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size == 0 or size < -1:
            raise ValueError(f"mesh axis {name!r} must be a positive int or -1 (inferred), got {size!r}")
    unknown = [name for name, size in sizes.items() if size == -1]
    if len(unknown) > 1:
        raise ValueError("at most one mesh axis may be -1 (inferred); got data=-1 and tensor=-1")
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if n_devices % known:
            raise ValueError(f"cannot infer mesh axis {unknown[0]!r}: {n_devices} devices are not divisible "
                             f"by the other axis size {known}")
        sizes[unknown[0]] = n_devices // known
    elif known != n_devices:
        raise ValueError(f"mesh data={data} x tensor={tensor} needs {known} devices, but there are {n_devices}")
    return sizes[DATA], sizes[TENSOR]


def make_mesh(data: int = -1, tensor: int = 1, *, devices=None) -> Mesh:
    """A ``(data, tensor)`` mesh over ``devices`` (default: all devices of all processes).

    One of the sizes may be -1, meaning "all the remaining devices": ``make_mesh(tensor=2)``
    on 8 devices is a 4 x 2 mesh. Devices are laid out so that the ``tensor`` axis (the one
    with the most communication) spans neighbouring devices, which on a multi-host mesh means
    devices of the same host.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    if len(set(devices)) != len(devices):
        raise ValueError(f"make_mesh got a device more than once: {devices}")
    shape = mesh_shape(len(devices), data, tensor)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def parse_mesh(spec: str) -> dict[str, int]:
    """Parse ``"data=4,tensor=2"`` (as given on command lines) into make_mesh keyword arguments."""
    if not isinstance(spec, str):
        raise ValueError(f"mesh spec must be a string like 'data=4,tensor=2', got {spec!r}")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in AXES:
            raise ValueError(f"bad mesh spec {spec!r}: expected 'data=D,tensor=T' with axes {AXES}, got {part!r}")
        if name in out:
            raise ValueError(f"bad mesh spec {spec!r}: axis {name!r} is given twice")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"bad mesh spec {spec!r}: size of {name!r} is not an integer: {value!r}") from None
    if not out:
        raise ValueError(f"bad mesh spec {spec!r}: expected 'data=D,tensor=T'")
    return out
