"""KV caches: pytrees of preallocated, statically shaped buffers, donated to every step.

Two layouts, both implementing the model-step protocol ``positions(T)``, ``attend(layer, q, k,
v, window)`` and ``advance(T)``, and the optional ``position_bound`` (see
:func:`models.hidden_states`):

- :class:`PrefillCache` — one block ``[G, K, P, Dh]`` per layer holding left-padded prompts; row
  ``g``'s tokens sit in slots ``start[g] .. P-1``. Used to prefill prompts once.
- :class:`KVCache` — the two-block layout rollouts decode against: per layer, the *prefix block*
  ``[G, K, P, Dh]`` (each prompt once, from a ``PrefillCache``) and the *rollout block* of
  ``S`` slots per rollout (each rollout's own tokens), ``[G*N, K, S, Dh]`` — on CPU split into
  up to 8 consecutive buffers so that a step reads only those already written (see
  :func:`block_sizes`). Attention is two partial attentions —
  a group's N rollouts' queries stacked against its prefix (read once per group), and each
  rollout against its own block — merged by their log-sum-exp in fp32 (as Hydragen does).
  The naive layout (prompt replicated N times) is the same class with N = 1 per group.

Keys and values are lists with one buffer per layer, and heads come before positions: a decode
step's attention then reads each head's keys in place. XLA CPU copied a layer's slice of a
stacked ``[L, ...]`` cache before the attention matmuls, and transposed a position-major one
(docs/perf.md). For a model with ``config.scan_layers`` the layers are stacked all the same
(every per-layer buffer one array with a leading ``layers`` axis): the scan over the layers
attends each layer's slice as a one-layer cache (``layer_fields`` / ``with_layer_fields``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from models.config import Config
from models.transformer import attention, merge_attention

KV = ("rollouts", "kv_heads", "seq", "head_dim")
PREFIX_KV = ("prefix", "kv_heads", "seq", "head_dim")


def _layer0(x):
    """Layer 0's buffer of a per-layer list, or a stacked buffer itself (read for its shape[-4:] only)."""
    return x[0] if isinstance(x, list) else x


MAX_BLOCKS, MIN_BLOCK = 8, 32


def block_sizes(size: int) -> list[int]:
    """How ``size`` rollout slots are split into buffers.

    On CPU, ``ceil(size / 32)`` of them, at most 8, of equal size but the last (128 -> 4 x 32,
    100 -> 4 x 25, 1024 -> 8 x 128), so that a decode step can skip those not yet written
    (:func:`attend_blocks`). Elsewhere one buffer: XLA GPU evaluates a ``lax.cond``'s predicate
    on the host, a device-to-host sync per buffer and layer that would cost more than it saves.
    """
    n = max(1, min(MAX_BLOCKS, -(-size // MIN_BLOCK))) if jax.default_backend() == "cpu" else 1
    base = -(-size // n)
    return [base] * (n - 1) + [size - base * (n - 1)]


def write_blocks(ks, vs, index, k, v):
    """One layer's consecutive key/value slot buffers [B, K, S_j, Dh] with k, v [B, T, K, Dh]
    written at slots ``index..index+T``: ``(ks, vs)``.

    A decode step (T = 1) updates the buffer holding slot ``index`` in place (each buffer under a
    ``lax.cond`` when there are several); a longer write (an append, a speculative block) selects the
    slots of each buffer it reaches from k, v, the others skipped by a ``lax.cond``.
    """
    new = (k.swapaxes(1, 2), v.swapaxes(1, 2))
    put = lambda bufs, new, at: tuple(jax.lax.dynamic_update_slice_in_dim(b, x.astype(b.dtype), at, axis=2)
                                      for b, x in zip(bufs, new))
    keep = lambda bufs, new, at: bufs
    out, start = [], 0
    for bufs in zip(ks, vs):
        n, t = bufs[0].shape[2], k.shape[1]
        if len(ks) == 1:
            out.append(put(bufs, new, index))
        elif t == 1:
            out.append(jax.lax.cond((index >= start) & (index < start + n), put, keep, bufs, new, index - start))
        else:                                           # only the buffers the T slots reach are rewritten
            touched = (index < start + n) & (index + t > start)
            out.append(jax.lax.cond(touched, _blend, keep, bufs, new, index - start))
        start += n
    return [k for k, _ in out], [v for _, v in out]


def _blend(bufs, new, at):
    """Key/value buffers [B, K, n, Dh] with those of ``new`` [B, K, T, Dh] that fall in them written from
    slot ``at`` on (which may be negative: ``new`` began in an earlier buffer)."""
    t, n = new[0].shape[2], bufs[0].shape[2]
    src = jnp.arange(n) - at                                                   # slot -> position in new
    inside = ((src >= 0) & (src < t))[:, None]
    return tuple(jnp.where(inside, jnp.take(x, jnp.clip(src, 0, t - 1), axis=2).astype(b.dtype), b)
                 for b, x in zip(bufs, new))


def attend_blocks(q, ks, vs, mask, used, **opts):
    """Partial attentions ``[(out, lse), ...]`` of q [B, T, H, Dh] over consecutive key/value buffers.

    ``mask`` bool [B, T, S] covers all the buffers' slots; slots from ``used`` on hold nothing
    yet, and a buffer that starts there is skipped by a ``lax.cond``: a step reads only the part
    of the cache already written. (XLA CPU cannot read a dynamic slice of one buffer without
    copying it first, so the skipping needs separate buffers; docs/perf.md.) ``opts``: the
    ``scale`` and ``cap`` of :func:`models.transformer.attention`.
    """
    attend = functools.partial(attention, **opts)
    empty = lambda q, k, v, m: (jnp.zeros_like(q), jnp.full(q.shape[:3], -jnp.inf, jnp.float32))
    parts, start = [], 0
    for k, v in zip(ks, vs):
        n = k.shape[2]
        m = mask[:, :, start:start + n]
        parts.append(jax.lax.cond(start < used, attend, empty, q, k, v, m) if start else attend(q, k, v, m))
        start += n
    return parts


def fit_slots(x, size: int, axis: int, fill=0):
    """``x`` with ``size`` entries along ``axis``: its first ``size``, or all of its own then ``fill``."""
    axis, more = axis % x.ndim, size - x.shape[axis]
    if more <= 0:
        return x[(slice(None),) * axis + (slice(size),)]
    return jnp.pad(x, [(0, more) if a == axis else (0, 0) for a in range(x.ndim)], constant_values=fill)


def take_rollouts(tree, rows):
    """``tree`` (a cache or decode state: anything with ``axes()``) with every array that has a
    ``"rollouts"`` axis gathered at ``rows`` [B]; the prefix block and scalars untouched."""
    take = lambda x, axes: (jnp.take(x, rows, axis=axes.index("rollouts"), mode="clip")   # rows are in range
                            if "rollouts" in axes else x)
    return jax.tree.map(take, tree, tree.axes())


def put_rollouts(tree, rows, sub):
    """The inverse of :func:`take_rollouts`: ``tree`` with every array that has a ``"rollouts"`` axis set
    to ``sub``'s at ``rows`` [B'] (``sub`` has B' rollouts; a row out of range, e.g. ``B``, is dropped).
    Every other array — scalars such as the rollout block's slot counter ``cache.index``, which all
    rows share, and the prefix block — is ``sub``'s: ``sub`` is the newer state (a copy of some rows,
    decoded further)."""
    def put(x, y, axes):
        if "rollouts" not in axes:
            return y
        at = axes.index("rollouts")
        x, y = jnp.moveaxis(x, at, 0), jnp.moveaxis(y, at, 0)
        return jnp.moveaxis(x.at[rows].set(y, mode="drop"), 0, at)
    return jax.tree.map(put, tree, sub, tree.axes())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillCache:
    k: list           # per layer [G, K, P, Dh]: keys of the left-padded prompts (scanned: one [L, G, K, P, Dh])
    v: list           # per layer [G, K, P, Dh]: values (likewise)
    start: jax.Array  # int32 [G] first real slot of each prompt
    index: jax.Array  # int32 [] next slot to write

    @classmethod
    def create(cls, config: Config, groups: int, size: int, start) -> "PrefillCache":
        shape, dtype = (groups, config.kv_heads, size, config.head_dim), jnp.dtype(config.dtype)
        z = (jnp.zeros((config.layers, *shape), dtype) if config.scan_layers else
             [jnp.zeros(shape, dtype) for _ in range(config.layers)])
        return cls(k=z, v=z, start=jnp.asarray(start, jnp.int32), index=jnp.zeros((), jnp.int32))

    def axes(self) -> "PrefillCache":
        """Logical axis names of every field (for ``sharding``), shaped like the cache."""
        layers = [PREFIX_KV] * len(self.k) if isinstance(self.k, list) else ("layers", *PREFIX_KV)
        return PrefillCache(k=layers, v=layers, start=("prefix",), index=())

    def layer_fields(self) -> dict:
        """The per-layer buffers (stacked on a leading layers axis, for a scanned model)."""
        return {"k": self.k, "v": self.v}

    def with_layer_fields(self, fields: dict) -> "PrefillCache":
        """This cache with the per-layer buffers ``fields`` (as :meth:`layer_fields` gives them)."""
        return dataclasses.replace(self, **fields)

    @property
    def position_bound(self) -> int:
        """Every position this cache holds is below it (static)."""
        return _layer0(self.k).shape[-2]

    def positions(self, t: int) -> jax.Array:
        slots = self.index + jnp.arange(t)
        return jnp.maximum(slots[None, :] - self.start[:, None], 0)

    def attend(self, layer, q, k, v, window=None, **opts):
        ks, vs = list(self.k), list(self.v)
        [ks[layer]], [vs[layer]] = write_blocks([ks[layer]], [vs[layer]], self.index, k, v)
        q_slot = self.index + jnp.arange(q.shape[1])[:, None]               # [T, 1]
        k_slot = jnp.arange(self.position_bound)[None, :]                    # [1, P]
        mask = (k_slot <= q_slot)[None] & (k_slot >= self.start[:, None, None])
        if window is not None:
            mask &= (q_slot - k_slot < window)[None]
        out, _ = attention(q, ks[layer], vs[layer], mask, **opts)
        return out, dataclasses.replace(self, k=ks, v=vs)

    def advance(self, t: int) -> "PrefillCache":
        return dataclasses.replace(self, index=self.index + t)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    # (scanned models: pk, pv one [L, G, K, P, Dh]; k, v one list of [L, G*N, K, S_j, Dh])
    pk: list           # per layer [G, K, P, Dh]:   prefix block keys (each prompt once)
    pv: list           # per layer [G, K, P, Dh]:   prefix block values
    pstart: jax.Array  # int32 [G]          first real prefix slot (left padding before it)
    k: list            # per layer, a list of [G*N, K, S_j, Dh]: rollout block keys (S slots in all)
    v: list            # per layer, a list of [G*N, K, S_j, Dh]: rollout block values
    valid: jax.Array   # bool [G*N, S]      slot holds a real token of the rollout
    length: jax.Array  # int32 [G*N]        real tokens in each rollout's block
    index: jax.Array   # int32 []           next rollout slot to write (the same for every row)

    @classmethod
    def from_prefill(cls, prefix: PrefillCache, n: int, size: int) -> "KVCache":
        """A cache for ``n`` rollouts of each prefilled prompt, ``size`` slots of their own each."""
        g, kv, _, hd = _layer0(prefix.k).shape[-4:]
        if isinstance(prefix.k, list):
            z = [[jnp.zeros((g * n, kv, s, hd), x.dtype) for s in block_sizes(size)] for x in prefix.k]
        else:
            z = [jnp.zeros((len(prefix.k), g * n, kv, s, hd), prefix.k.dtype) for s in block_sizes(size)]
        return cls(pk=prefix.k, pv=prefix.v, pstart=prefix.start, k=z, v=z,
                   valid=jnp.zeros((g * n, size), bool), length=jnp.zeros((g * n,), jnp.int32),
                   index=jnp.zeros((), jnp.int32))

    def axes(self) -> "KVCache":
        """Logical axis names of every field (for ``sharding``), shaped like the cache."""
        if self.stacked:
            prefix, rollout = ("layers", *PREFIX_KV), [("layers", *KV)] * len(self.k)
        else:
            prefix, rollout = [PREFIX_KV] * len(self.pk), [[KV] * len(blocks) for blocks in self.k]
        return KVCache(pk=prefix, pv=prefix, pstart=("prefix",), k=rollout, v=rollout, valid=("rollouts", "seq"),
                       length=("rollouts",), index=())

    @property
    def stacked(self) -> bool:
        """Whether the layers are stacked on a leading axis (a scanned model's cache)."""
        return not isinstance(self.pk, list)

    def layer_fields(self) -> dict:
        """The per-layer buffers (stacked on a leading layers axis, for a scanned model)."""
        return {"pk": self.pk, "pv": self.pv, "k": self.k, "v": self.v}

    def with_layer_fields(self, fields: dict) -> "KVCache":
        """This cache with the per-layer buffers ``fields`` (as :meth:`layer_fields` gives them)."""
        return dataclasses.replace(self, **fields)

    def _blocks(self) -> list:
        """Layer 0's rollout-block buffers (stacked: all layers'), for their shapes."""
        return self.k if self.stacked else self.k[0]

    @property
    def size(self) -> int:
        """Slots of each rollout's own block."""
        return sum(x.shape[-2] for x in self._blocks())

    @property
    def groups(self) -> int:
        return _layer0(self.pk).shape[-4]

    @property
    def prefix_size(self) -> int:
        """Slots of the prefix block (P)."""
        return _layer0(self.pk).shape[-2]

    @property
    def rows(self) -> int:
        """Rollouts (G*N)."""
        return self._blocks()[0].shape[-4]

    def prefix_lengths(self) -> jax.Array:
        """Real prompt tokens per rollout [G*N]."""
        return jnp.repeat(self.prefix_size - self.pstart, self.rows // self.groups, total_repeat_length=self.rows)

    @property
    def position_bound(self) -> int:
        """Every position this cache holds is below it (static): prefix slots + rollout slots."""
        return self.prefix_size + self.size

    def positions(self, t: int) -> jax.Array:
        """Positions [G*N, t] of the next ``t`` tokens of every rollout."""
        return (self.prefix_lengths() + self.length)[:, None] + jnp.arange(t)

    def attend(self, layer, q, k, v, window=None, **opts):
        """Write ``k, v`` [G*N, T, K, Dh] at rollout slots ``index..index+T``; attend ``q`` to prefix + rollout
        (``opts``: the ``scale`` and ``cap`` of :func:`models.transformer.attention`)."""
        b, t, h, d = q.shape
        g, p = self.groups, self.prefix_size
        ks, vs = list(self.k), list(self.v)
        ks[layer], vs[layer] = write_blocks(ks[layer], vs[layer], self.index, k, v)
        q_pos = self.positions(t)                                            # [B, T]
        # prefix block: a group's N rollouts' queries stacked, so the prefix is read once per group
        p_slot = jnp.arange(p)
        p_mask = (p_slot >= self.pstart[:, None])[:, None, :]                # [G, 1, P]
        if window is not None:
            k_pos = p_slot - self.pstart[:, None]                            # [G, P]
            p_mask = p_mask & (q_pos.reshape(g, -1)[:, :, None] - k_pos[:, None, :] < window)
        p_mask = jnp.broadcast_to(p_mask, (g, b // g * t, p))
        out_p, lse_p = attention(q.reshape(g, -1, h, d), self.pk[layer], self.pv[layer], p_mask, **opts)
        # rollout block: each rollout's own (valid) tokens, causally
        slot = jnp.arange(self.size)
        seen = self.valid | ((slot >= self.index) & (slot < self.index + t))[None]   # [B, S]
        r_mask = seen[:, None, :] & (slot[None, None, :] <= (self.index + jnp.arange(t))[None, :, None])
        if window is not None:
            k_pos = self.prefix_lengths()[:, None] + jnp.cumsum(seen, axis=1) - 1     # [B, S]
            r_mask &= q_pos[:, :, None] - k_pos[:, None, :] < window
        parts = attend_blocks(q, ks[layer], vs[layer], r_mask, self.index + t, **opts)
        out, _ = merge_attention([(out_p.reshape(b, t, h, d), lse_p.reshape(b, t, h)), *parts])
        return out, dataclasses.replace(self, k=ks, v=vs)

    def advance(self, t: int) -> "KVCache":
        """Count the ``t`` slots just written as real tokens of every row (see :meth:`keep`)."""
        ones = jnp.ones((self.valid.shape[0], t), bool)
        return dataclasses.replace(self, valid=jax.lax.dynamic_update_slice(self.valid, ones, (0, self.index)),
                                   length=self.length + t, index=self.index + t)

    def _rollout_slots(self, f, size: int, valid) -> "KVCache":
        """The cache with each layer's rollout block, its buffers joined into one ``[(L,) B, K, S, Dh]``,
        replaced by ``f(block)`` of ``size`` slots (split again by :func:`block_sizes`), and ``valid``."""
        def each(blocks):
            whole = f(jnp.concatenate(blocks, axis=-2) if len(blocks) > 1 else blocks[0])
            return jnp.split(whole, np.cumsum(block_sizes(size))[:-1].tolist(), axis=-2)
        per_layer = each if self.stacked else (lambda layers: [each(b) for b in layers])
        return dataclasses.replace(self, k=per_layer(self.k), v=per_layer(self.v), valid=valid)

    def reorder(self, order) -> "KVCache":
        """The rollout block with each row's slots permuted: slot ``s`` of row ``b`` takes what slot
        ``order[b, s]`` held (keys, values, ``valid``; the buffers of a split block are one sequence).
        The KV moves, nothing is recomputed; the slot counter ``index`` is left as it is."""
        at = lambda x: order.reshape((1,) * (x.ndim - 4) + (order.shape[0], 1, order.shape[1], 1))
        return self._rollout_slots(lambda x: jnp.take_along_axis(x, at(x), axis=-2), self.size,
                                   jnp.take_along_axis(self.valid, order, axis=1))

    def resized(self, size: int) -> "KVCache":
        """The cache with ``size`` rollout slots per row: the first ``size`` of its own, then empty ones;
        the slot counter no further than ``size``. Narrowing keeps a row's tokens only where they sit in
        its first ``size`` slots (after :meth:`DecodeState.packed`)."""
        cache = self._rollout_slots(lambda x: fit_slots(x, size, -2), size, fit_slots(self.valid, size, 1))
        return dataclasses.replace(cache, index=jnp.minimum(self.index, size))

    def keep(self, mask) -> "KVCache":
        """Mark which of the last ``T`` written slots hold real tokens (mask bool [G*N, T])."""
        t = mask.shape[1]
        at = (0, self.index - t)
        return dataclasses.replace(self, valid=jax.lax.dynamic_update_slice(self.valid, mask, at),
                                   length=self.length - t + jnp.sum(mask, axis=1, dtype=jnp.int32))

    def token_slots(self) -> int:
        """Token slots held: ``G*P + G*N*S`` (the prefix once per prompt, plus each rollout's own)."""
        return self.groups * self.prefix_size + self.rows * self.size

    def nbytes(self) -> int:
        """Bytes of the key/value buffers (works on ``jax.eval_shape`` results too)."""
        return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves((self.pk, self.pv, self.k, self.v)))
