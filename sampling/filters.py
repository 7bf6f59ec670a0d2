"""Logit filters: pure ``(logits[..., V], param[...], ...) -> logits`` with any leading batch axes.

Parameters are arrays broadcastable to the leading axes, so rows may differ; each filter has
an "off" value that leaves its row unchanged. Removed tokens get ``-inf``. Where
``transformers`` has the same processor the result is the same, ties and ``min_keep`` (its
``min_tokens_to_keep``) included.

Processors (applied to every row, greedy ones too): ``repetition_penalty``,
``presence_penalty``, ``frequency_penalty``, ``no_repeat_ngram``, ``logit_bias``,
``allowed_tokens``, ``banned_tokens``, ``min_new_tokens``. Warpers (sampled rows only):
``temperature``, ``top_k``, ``top_p``, ``min_p``, ``typical``, ``epsilon``, ``eta``, ``mirostat``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


def _col(param, logits, dtype=None):
    """A per-row parameter as a column [..., 1] broadcastable against ``logits`` [..., V]."""
    return jnp.broadcast_to(jnp.asarray(param, dtype), logits.shape[:-1])[..., None]


def _static_one(min_keep) -> bool:
    """``min_keep`` is the Python int 1, known when tracing: a filter can take its fast path."""
    return isinstance(min_keep, int) and min_keep == 1


def _order_key(x):
    """uint32 keys in the order of the float values ``x`` (-0.0 and 0.0 equal; no NaN)."""
    i = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x).astype(jnp.float32), jnp.int32)
    i = jnp.where(i < 0, i ^ 0x7FFFFFFF, i)                     # negative floats: larger magnitude first
    return jax.lax.bitcast_convert_type(i ^ jnp.int32(-2**31), jnp.uint32)


def _top_mask(logits, min_keep):
    """Tokens whose logit is at least the ``min_keep``-th largest (ties kept, as transformers)."""
    if _static_one(min_keep):                              # a max
        return logits >= jnp.max(logits, axis=-1, keepdims=True)
    key = _order_key(logits)                               # the k-th largest: the least c with < k keys above it
    return key >= _lowest_key(key, lambda c: jnp.sum(key > c, axis=-1, keepdims=True)
                              < _col(min_keep, logits, jnp.int32))


# --- warpers ------------------------------------------------------------------------------------

MIN_TEMPERATURE = 1e-30  # smaller ones divide as this: already a point mass, and logits / t stays finite


def temperature(logits, t):
    """Divide by ``t`` (> 0), after subtracting each row's maximum (the same distribution). ``t == 0``
    (greedy rows) leaves the logits unchanged.

    The shift keeps a small ``t`` exact: XLA may recompute ``logits / t`` in two fusions that round
    the maximum differently, and at ``t = 1e-10`` one ulp of it is ~1e3, so a later softmax of
    unshifted logits overflowed (every token -inf). Shifted, the maximum is exactly 0 everywhere.
    """
    t = _col(t, logits, logits.dtype)
    top = jnp.max(logits, axis=-1, keepdims=True)
    shifted = logits - jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.where(t > 0, shifted / jnp.maximum(t, MIN_TEMPERATURE), logits)


def top_k(logits, k, min_keep=1):
    """Keep the ``max(k, min_keep)`` largest logits and any tied with the last. ``k == 0`` is off."""
    k = _col(k, logits, jnp.int32)
    keep = _top_mask(logits, jnp.maximum(k, _col(min_keep, logits, jnp.int32))[..., 0])
    return jnp.where((k > 0) & ~keep, NEG_INF, logits)


def top_p_budget(p):
    """``1 - p`` for :func:`top_p`: from a host value in double precision, then rounded to float32,
    as ``transformers`` compares (0.8 -> 0.2f); ``1 - float32(0.8)`` is one rounding below 0.2f, and
    a row of ten tied probabilities 0.1 then kept nine tokens where ``transformers`` keeps eight."""
    if isinstance(p, jax.Array):                       # traced or on device: its own precision
        return 1 - jnp.asarray(p, jnp.float32)
    return (1 - np.asarray(p, np.float64)).astype(np.float32)


def top_p(logits, p, min_keep=1, budget=None):
    """Nucleus: drop the least likely tokens whose total probability is at most ``1 - p``.

    As ``transformers``: tokens sorted ascending (stable), a token is dropped when the
    cumulative probability up to and including it is ``<= 1 - p``; the ``min_keep`` most
    likely always stay. ``p == 1`` is off. Computed without sorting (:func:`_ascending_prefix`).
    ``budget`` is ``1 - p`` (default :func:`top_p_budget`; the sampler passes it computed from
    the value it was given).
    """
    budget = _col(top_p_budget(p) if budget is None else budget, logits)
    p = _col(p, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    drop = (p < 1) & _ascending_prefix(logits, probs, budget)
    v = logits.shape[-1]
    if _static_one(min_keep):                           # the last in that order: the max, highest id among ties
        ids = jnp.arange(v)
        protected = ids == jnp.max(jnp.where(logits >= jnp.max(logits, axis=-1, keepdims=True), ids, -1),
                                   axis=-1, keepdims=True)
    else:
        protected = ~_ascending_prefix(logits, jnp.ones_like(probs), v - _col(min_keep, logits, probs.dtype))
    return jnp.where(drop & ~protected, NEG_INF, logits)


def _ascending_prefix(logits, weight, budget):
    """The tokens of each row, in ascending order of (logit, id), whose cumulative ``weight``
    (>= 0) up to and including them is ``<= budget``: a mask [..., V].

    No sort (XLA CPU's sort of [64, 32000] takes ~0.5 s): a bisection over the logits' order keys
    finds the first logit value whose cumulative weight exceeds the budget (32 masked sums), and
    a second over ids splits the tokens tied at it (on CPU, only while some row has such ties).
    """
    key = _order_key(logits)
    ids = jnp.arange(logits.shape[-1])
    total = lambda mask: jnp.sum(jnp.where(mask, weight, 0), axis=-1, keepdims=True)
    over = lambda c: total(key <= c) > budget
    cut = _lowest_key(key, over)
    tie, below = key == cut, total(key < cut)
    everything = ~over(cut)                             # no cut: the whole row is within the budget (the
                                                        # same sum as the search's: below + total(tie) may round
                                                        # the other way and drop the whole nucleus)
    ties = jnp.sum(tie, axis=-1, keepdims=True) > 1
    each = jnp.max(jnp.where(tie, weight, 0), axis=-1, keepdims=True)    # tied tokens weigh the same: count x
    first_kept = _lowest(jnp.zeros(cut.shape, jnp.int32), jnp.where(ties, logits.shape[-1] - 1, 0),   # each,
                         lambda j: below + jnp.sum(tie & (ids <= j), axis=-1, keepdims=True) * each > budget,
                         (logits.shape[-1] - 1).bit_length())                 # not a sum of rounded copies
    return everything | (key < cut) | (tie & (ids < first_kept))


def _lowest_key(key, holds):
    """Per row, the least order key ``c`` (between the row's smallest and largest ``key``) where
    the monotone ``holds(c)`` is true; the largest key if none."""
    return _lowest(jnp.min(key, axis=-1, keepdims=True), jnp.max(key, axis=-1, keepdims=True), holds, 32)


def _lowest(lo, hi, holds, steps):
    """Per row, the smallest integer in [lo, hi] where the monotone ``holds`` is true (``hi`` if
    none), by bisection; ``steps`` >= log2(hi - lo + 1) halvings close every bracket.

    On CPU the loop stops once every row's bracket is closed (often at once for the split of
    ties). Elsewhere it runs ``steps`` times: a loop with a known trip count does not read its
    predicate on the host each iteration (XLA GPU).
    """
    def halve(bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok, open_ = holds(mid), lo < hi                 # closed rows stay as they are
        return jnp.where(open_ & ~ok, mid + 1, lo), jnp.where(open_ & ok, mid, hi)
    if jax.default_backend() == "cpu":
        return jax.lax.while_loop(lambda b: jnp.any(b[0] < b[1]), halve, (lo, hi))[0]
    return jax.lax.fori_loop(0, steps, lambda _, b: halve(b), (lo, hi))[0]


def min_p(logits, p, min_keep=1):
    """Drop tokens less likely than ``p`` times the most likely one. ``p == 0`` is off."""
    probs = jax.nn.softmax(logits, axis=-1)
    drop = probs < _col(p, logits) * jnp.max(probs, axis=-1, keepdims=True)
    if _static_one(min_keep):                              # the most likely token is never dropped
        return jnp.where(drop, NEG_INF, logits)
    # the min_keep first by (probability descending, id ascending): the complement of a prefix
    # of (probability ascending, id descending), i.e. of the flipped vocabulary's ascending order
    first = ~_ascending_prefix(probs[..., ::-1], jnp.ones_like(probs),
                               logits.shape[-1] - _col(min_keep, logits, probs.dtype))[..., ::-1]
    return jnp.where(drop & ~first, NEG_INF, logits)


def typical(logits, mass, min_keep=1):
    """Locally typical sampling (Meister et al.): keep the tokens whose surprise is closest to the
    entropy, up to probability ``mass``. ``mass == 1`` is off.

    As ``transformers``: tokens ordered by ``|surprise - entropy|`` (stable), the cut is the first
    whose cumulative probability reaches ``mass``, every token as close as it stays, and the
    ``min_keep`` closest always stay. Computed without sorting: the cut by bisection over that
    distance's order keys.
    """
    mass = _col(mass, logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    ent = -jnp.sum(jnp.where(p > 0, logp * p, 0.0), axis=-1, keepdims=True)
    shifted = jnp.abs(-logp - ent)
    key = _order_key(shifted)
    drop = key > _lowest_key(key, lambda c: jnp.sum(jnp.where(key <= c, p, 0), axis=-1, keepdims=True) >= mass)
    if not _static_one(min_keep):                           # the closest token is never past the cut
        drop &= ~_ascending_prefix(shifted, jnp.ones_like(p), _col(min_keep, logits, p.dtype))
    return jnp.where((mass < 1) & drop, NEG_INF, logits)


def epsilon(logits, eps, min_keep=1):
    """Epsilon sampling (Hewitt et al.): drop tokens with probability below ``eps``. ``eps == 0`` is off."""
    drop = jax.nn.softmax(logits, axis=-1) < _col(eps, logits)
    return jnp.where(drop & ~_top_mask(logits, min_keep), NEG_INF, logits)


def eta(logits, eps, min_keep=1):
    """Eta sampling (Hewitt et al.): threshold ``min(eps, sqrt(eps) * exp(-entropy))``. ``eps == 0`` is off."""
    eps = _col(eps, logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    ent = -jnp.sum(jnp.where(p > 0, logp * p, 0.0), axis=-1, keepdims=True)
    drop = p < jnp.minimum(eps, jnp.sqrt(eps) * jnp.exp(-ent))
    return jnp.where(drop & ~_top_mask(logits, min_keep), NEG_INF, logits)


def mirostat(logits, mu):
    """Mirostat v2 truncation: keep tokens whose surprise ``-log2 p`` is at most ``mu`` (the most
    likely always stays). ``mu`` is the running estimate carried in the decode state."""
    surprise = -jax.nn.log_softmax(logits, axis=-1) / jnp.log(2.0)
    keep = (surprise <= _col(mu, logits)) | (logits >= jnp.max(logits, axis=-1, keepdims=True))
    return jnp.where(keep, logits, NEG_INF)


# --- processors ---------------------------------------------------------------------------------

def repetition_penalty(logits, penalty, seen):
    """CTRL's penalty on tokens already seen (``seen`` bool [..., V], prompt included, as
    transformers): negative logits times ``penalty``, positive ones divided. 1 is off."""
    penalty = _col(penalty, logits, logits.dtype)
    hit = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, hit, logits)


def presence_penalty(logits, penalty, counts):
    """Subtract ``penalty`` from every token generated at least once (``counts`` [..., V]). 0 is off."""
    return logits - _col(penalty, logits, logits.dtype) * (counts > 0)


def frequency_penalty(logits, penalty, counts):
    """Subtract ``penalty`` times how often each token was generated. 0 is off."""
    return logits - _col(penalty, logits, logits.dtype) * counts


MAX_NGRAM = 8


def no_repeat_ngram(logits, n, history, valid):
    """Ban tokens that would repeat an ``n``-gram (``n <= 8``) of ``history`` [..., L]. 0 is off.

    ``valid`` [..., L] marks real tokens; read in order they form the row's text (padding and
    holes are skipped, so an n-gram may span them).
    """
    order = jnp.argsort(~valid, axis=-1, stable=True)             # real tokens first, in order
    hist = jnp.take_along_axis(history, order, axis=-1)
    count = jnp.sum(valid, axis=-1, keepdims=True)                # [..., 1]
    n = _col(n, logits, jnp.int32)
    length = history.shape[-1]
    pos = jnp.broadcast_to(jnp.arange(length), hist.shape)
    at = lambda i: jnp.take_along_axis(hist, jnp.clip(i, 0, length - 1), axis=-1)
    match = (pos + n <= count) & (n > 0) & (count >= n)           # window [j, j+n) of real tokens
    for d in range(MAX_NGRAM - 1):                                # its first n-1 tokens = the last n-1
        match &= (at(pos + d) == at(count - (n - 1) + d)) | (d >= n - 1)
    return jnp.where(_scatter(logits.shape, jnp.where(match, at(pos + n - 1), -1)), NEG_INF, logits)


def _flat_ids(shape, ids):
    """``ids`` [..., K] broadcast to ``shape``'s leading axes, flattened to rows [R, K]; padding
    (ids < 0) becomes ``V``, an index that scatters with ``mode="drop"`` ignore."""
    ids = jnp.asarray(ids, jnp.int32)
    ids = jnp.broadcast_to(ids, tuple(shape[:-1]) + ids.shape[-1:]).reshape(-1, ids.shape[-1])
    return jnp.arange(ids.shape[0])[:, None], jnp.where(ids < 0, shape[-1], ids)


def _scatter(shape, ids):
    """bool [..., V]: True at the token ``ids`` [..., K] of each row (ids < 0 ignored)."""
    rows, ids = _flat_ids(shape, ids)
    return jnp.zeros((rows.shape[0], shape[-1]), bool).at[rows, ids].set(True, mode="drop").reshape(shape)


def logit_bias(logits, ids, bias):
    """Add ``bias`` [K] to the logits of tokens ``ids`` [K] (ids < 0 are padding). All zeros is off."""
    rows, ids = _flat_ids(logits.shape, ids)
    bias = jnp.broadcast_to(jnp.asarray(bias, logits.dtype), ids.shape)
    flat = logits.reshape(-1, logits.shape[-1]).at[rows, ids].add(bias, mode="drop")
    return flat.reshape(logits.shape)


def allowed_tokens(logits, ids):
    """Only the tokens ``ids`` [K] may be drawn (ids < 0 are padding; no ids at all is off)."""
    ids = jnp.asarray(ids)
    return jnp.where(_scatter(logits.shape, ids) | ~jnp.any(ids >= 0), logits, NEG_INF)


def banned_tokens(logits, ids):
    """The tokens ``ids`` [K] may not be drawn (ids < 0 are padding)."""
    return jnp.where(_scatter(logits.shape, ids), NEG_INF, logits)


def min_new_tokens(logits, minimum, generated, eos_ids):
    """Suppress the EOS tokens ``eos_ids`` [E] while fewer than ``minimum`` tokens were generated."""
    eos = _scatter(logits.shape, eos_ids)
    early = _col(generated, logits, jnp.int32) < _col(minimum, logits, jnp.int32)
    return jnp.where(early & eos, NEG_INF, logits)
