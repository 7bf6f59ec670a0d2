"""Logit filters: pure ``(logits[..., V], param[...]) -> logits`` with any leading batch axes.

Parameters are arrays broadcastable to the leading axes, so rows may differ. Removed tokens
get ``-inf``. Each filter has an "off" value that leaves the logits unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _col(param, logits):
    """A per-row parameter as a column broadcastable against ``logits`` [..., V]."""
    return jnp.broadcast_to(jnp.asarray(param), logits.shape[:-1])[..., None]


def temperature(logits, t):
    """Divide by ``t`` (> 0). ``t == 0`` (greedy rows) leaves the logits unchanged."""
    t = _col(t, logits)
    return logits / jnp.where(t > 0, t, 1.0).astype(logits.dtype)


def top_k(logits, k):
    """Keep the ``k`` largest logits (and any tied with the k-th). ``k == 0`` is off."""
    k = _col(k, logits)
    desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(desc, jnp.clip(k - 1, 0, logits.shape[-1] - 1), axis=-1)
    return jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)


def top_p(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches ``p``.

    As in ``transformers``: a token is dropped when the total probability of the tokens
    less likely than or equal to it is at most ``1 - p``; the most likely token always stays.
    ``p == 1`` is off.
    """
    p = _col(p, logits)
    asc = jnp.sort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
    drop = (cum <= 1 - p).at[..., -1].set(False)
    # the smallest kept logit is the threshold: the first position not dropped
    first_kept = jnp.argmin(drop, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(asc, first_kept, axis=-1)
    return jnp.where((p < 1) & (logits < threshold), -jnp.inf, logits)
