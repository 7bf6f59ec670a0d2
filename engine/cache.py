"""The KV cache: a pytree of preallocated, statically shaped buffers donated to every step.

Rows are left-padded: row ``b`` holds its tokens in slots ``start[b] .. index-1``, so a decode
step writes every row at the same slot ``index`` with one ``dynamic_update_slice``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from models.config import Config
from models.transformer import attention


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array      # [L, B, S, K, Dh] keys, slot-major per row
    v: jax.Array      # [L, B, S, K, Dh] values
    start: jax.Array  # int32 [B] first valid slot of each row (left padding before it)
    index: jax.Array  # int32 [] next slot to write (the same for every row)

    @classmethod
    def create(cls, config: Config, batch: int, size: int, start=None) -> "KVCache":
        """An empty cache of ``size`` slots per row; ``start`` [B] is each row's left padding."""
        shape = (config.layers, batch, size, config.kv_heads, config.head_dim)
        z = jnp.zeros(shape, jnp.dtype(config.dtype))
        start = jnp.zeros((batch,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
        return cls(k=z, v=z, start=start, index=jnp.zeros((), jnp.int32))

    @staticmethod
    def axes() -> "KVCache":
        """Logical axis names of every field (for ``sharding``), shaped like the cache."""
        kv = ("layers", "rollouts", "seq", "kv_heads", "head_dim")
        return KVCache(k=kv, v=kv, start=("rollouts",), index=())

    @property
    def size(self) -> int:
        return self.k.shape[2]

    def positions(self, t: int) -> jax.Array:
        """Token positions [B, t] of the next ``t`` slots (0 at each row's first real token)."""
        slots = self.index + jnp.arange(t)
        return jnp.maximum(slots[None, :] - self.start[:, None], 0)

    def attend(self, layer, q, k, v, window=None):
        """Write ``k, v`` [B, T, K, Dh] at slots ``index..index+T`` of ``layer``; attend ``q`` to the row."""
        t = q.shape[1]
        at = (layer, 0, self.index, 0, 0)
        ks = jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), at)
        vs = jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), at)
        q_slot = self.index + jnp.arange(t)[:, None]                 # [T, 1]
        k_slot = jnp.arange(self.size)[None, :]                       # [1, S]
        mask = (k_slot <= q_slot)[None] & (k_slot >= self.start[:, None, None])[:, :, :]
        if window is not None:
            mask &= (q_slot - k_slot < window)[None]
        out, _ = attention(q, ks[layer], vs[layer], mask)
        return out, dataclasses.replace(self, k=ks, v=vs)

    def advance(self, t: int) -> "KVCache":
        return dataclasses.replace(self, index=self.index + t)

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
