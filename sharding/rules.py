"""Logical axis names -> mesh axes, in one place.

Every array rollax places on a mesh names its axes logically (``("embed", "heads", "head_dim")``
for a layer's query projection, ``("rollouts", "kv_heads", "seq", "head_dim")`` for a layer's
KV cache block). :data:`RULES` says which mesh axis each logical axis is split over;
:func:`logical_to_spec` / :func:`logical_to_sharding` turn axis names into ``PartitionSpec`` /
``NamedSharding``. Two logical axes of one array may not share a mesh axis (a bad mapping,
refused); a logical axis whose size does not divide its mesh axis is replicated instead (for
example 2 KV heads on a tensor axis of 4: every tensor shard keeps both KV heads).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sharding.mesh import DATA, TENSOR


@dataclasses.dataclass(frozen=True)
class Rules:
    """An immutable, hashable mapping logical axis -> mesh axis name, tuple of names, or None.

    Build one from a dict: ``Rules.of({"heads": "tensor", "embed": None})``; derive variants
    with ``rules.replace(vocab=None)``.
    """
    mapping: tuple[tuple[str, str | tuple[str, ...] | None], ...]

    @classmethod
    def of(cls, mapping: dict) -> "Rules":
        """Rules from a dict (validated: names are strings, targets a mesh axis name, a tuple, or None)."""
        items = []
        for logical, target in mapping.items():
            if not isinstance(logical, str):
                raise ValueError(f"logical axis names must be strings, got {logical!r}")
            if isinstance(target, list):
                target = tuple(target)
            ok = target is None or isinstance(target, str) or (
                isinstance(target, tuple) and target and all(isinstance(t, str) for t in target))
            if not ok:
                raise ValueError(f"rule for logical axis {logical!r} must be a mesh axis name, a tuple of names "
                                 f"or None, got {target!r}")
            items.append((logical, target))
        return cls(tuple(sorted(items)))

    def as_dict(self) -> dict:
        return dict(self.mapping)

    def replace(self, **changes) -> "Rules":
        """These rules with some logical axes re-mapped (``rules.replace(vocab=None)``)."""
        return Rules.of({**self.as_dict(), **changes})

    def mesh_axes(self, logical: str) -> tuple[str, ...]:
        """The mesh axes ``logical`` is split over (empty: replicated). Unknown names are an error."""
        table = self.as_dict()
        if logical not in table:
            raise ValueError(f"logical axis {logical!r} has no sharding rule; known axes: {', '.join(sorted(table))}")
        target = table[logical]
        return () if target is None else (target,) if isinstance(target, str) else target


RULES = Rules.of({
    # weights: tensor parallelism over attention heads, the MLP hidden axis and the vocabulary
    "vocab": TENSOR,
    "embed": None,
    "heads": TENSOR,
    "kv_heads": TENSOR,     # replicated automatically when kv_heads does not divide the tensor axis
    "head_dim": None,
    "mlp": TENSOR,
    "layers": None,         # the leading axis of a scanned model's stacked weights and KV caches
    # activations and state: rollouts (and the prompts they come from) split over the data axis
    "rollouts": DATA,
    "batch": DATA,
    "prefix": DATA,         # the prompt axis of a shared-prefix cache block
    "prompts": DATA,
    "seq": None,
    "time": None,
})
"""The default rules: data parallel over rollouts and prompts, tensor parallel over heads/MLP/vocab."""


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str) or a is None for a in x)


def _shape_of(x):
    if x is None:
        return None
    if isinstance(x, tuple) and all(isinstance(d, int) for d in x):
        return x
    return tuple(x.shape)


def logical_to_spec(axes: tuple, mesh: Mesh, rules: Rules = RULES, shape=None) -> PartitionSpec:
    """The ``PartitionSpec`` of one array whose axes are named ``axes`` (``None`` = unnamed, replicated).

    With ``shape``, an axis whose size does not divide the size of its mesh axes is replicated.
    Trailing replicated axes are left out (``P(None, "data")``), as jit reports specs.
    Raises ``ValueError`` when a name has no rule, a rule names a mesh axis the mesh lacks, two
    logical axes of the array map to the same mesh axis, or ``shape`` has a different rank.
    """
    if not _is_axes(axes):
        raise ValueError(f"logical axes must be a tuple of names (or None), got {axes!r}")
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {axes} name {len(axes)} axes but the array has shape {tuple(shape)}")
    owner: dict[str, str] = {}
    spec = []
    for i, logical in enumerate(axes):
        targets = () if logical is None else rules.mesh_axes(logical)
        for t in targets:
            if t not in mesh.shape:
                raise ValueError(f"rule {logical!r} -> {t!r} names a mesh axis the mesh does not have "
                                 f"(mesh axes: {', '.join(mesh.axis_names)})")
            if t in owner:
                raise ValueError(f"logical axes {owner[t]!r} and {logical!r} of one array {axes} both map to "
                                 f"mesh axis {t!r}; one mesh axis can split only one axis of an array")
            owner[t] = logical
        size = math.prod(mesh.shape[t] for t in targets)
        if not targets or size == 1 or (shape is not None and shape[i] % size):
            spec.append(None)
        else:
            spec.append(targets[0] if len(targets) == 1 else targets)
    while spec and spec[-1] is None:  # canonical form, as jit reports its outputs' specs
        spec.pop()
    return PartitionSpec(*spec)


def logical_to_sharding(axes_tree, mesh: Mesh, rules: Rules = RULES, shapes=None):
    """``NamedSharding``s for a pytree of logical axis tuples (e.g. ``models.param_axes(config)``).

    ``shapes`` (optional) is a matching pytree of arrays, ``ShapeDtypeStruct``s or shape tuples;
    with it, axes that do not divide their mesh axes are replicated. The result has the
    structure of ``axes_tree``. Errors as :func:`logical_to_spec`.
    """
    if shapes is None:
        return jax.tree.map(lambda a: NamedSharding(mesh, logical_to_spec(a, mesh, rules)), axes_tree,
                            is_leaf=_is_axes)
    leaves, tree = jax.tree.flatten(axes_tree, is_leaf=_is_axes)
    shape_leaves = tree.flatten_up_to(shapes)
    return jax.tree.unflatten(tree, [NamedSharding(mesh, logical_to_spec(a, mesh, rules, _shape_of(s)))
                                     for a, s in zip(leaves, shape_leaves)])


def constrain(tree, axes_tree, mesh: Mesh | None, rules: Rules = RULES):
    """``with_sharding_constraint`` every array of ``tree`` to the sharding its logical axes give.

    For use inside ``jit``; ``axes_tree`` has ``tree``'s structure with a tuple of logical
    names per array (e.g. ``KVCache.axes()``). With ``mesh=None`` returns ``tree`` unchanged.
    """
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, logical_to_sharding(axes_tree, mesh, rules, tree))


def place(tree, axes_tree, mesh: Mesh | None, rules: Rules = RULES):
    """Put every array of ``tree`` (numpy or jax) on ``mesh`` with the sharding its axes give.

    Works across processes: each process builds only its addressable shards from its own copy
    of the value (which must be the same on every process). Arrays already placed as wanted
    are returned as they are. With ``mesh=None`` returns ``tree`` unchanged.
    """
    if mesh is None:
        return tree
    shardings = logical_to_sharding(axes_tree, mesh, rules, tree)
    return jax.tree.map(put, tree, shardings)


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` replicated on all devices of ``mesh`` (readable on every host)."""
    return _replicator(mesh)(tree)


def _identity(tree):
    return tree


@functools.lru_cache(maxsize=64)
def _replicator(mesh: Mesh):
    """One jitted identity per mesh, so repeated calls reuse its compiled programs."""
    return jax.jit(_identity, out_shardings=NamedSharding(mesh, PartitionSpec()))


def put(x, sharding: NamedSharding):
    """One array onto ``sharding`` (any number of processes); typed PRNG key arrays included."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = put(jax.random.key_data(x), NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec)))
        return jax.random.wrap_key_data(data, impl=impl)
    if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(_host_value(x) if isinstance(x, jax.Array) else x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _host_value(x: jax.Array):
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(x, tiled=True)
