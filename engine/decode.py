"""Decoding state and the operations on it: start (prefill), decode, select, fork, append.

A :class:`DecodeState` holds ``G*N`` rollouts of ``G`` prompts (rollout ``r`` of prompt ``g``
is row ``g*N + r``) decoding against a two-block :class:`~engine.cache.KVCache`. Every token
array is slot-aligned with the rollout block. Search algorithms are built from these calls:
``start`` once, then any sequence of ``decode``, ``select`` / ``fork`` (one gather over the
rollout axis; the prefix block is untouched) and ``append`` (prefill of only the new tokens).
"""
from __future__ import annotations

import dataclasses
import zlib
from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

import sharding
from engine.cache import KVCache, PrefillCache, take_rollouts
from engine.checks import (check_int, check_prompts, check_sampler, check_state, memory_bytes, state_bytes, stop_ids,
                           token_ids)
from engine.state import DecodeState
from sampling import Sampler, rollout_keys, sample

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Padded length: the next power of two >= n (at least ``minimum``), so compilations are few."""
    return max(minimum, 1 << (n - 1).bit_length())


def place_model(model, mesh):
    """``model`` with its params on ``mesh`` (``model.shard(mesh)``; a model without it: replicated)."""
    if mesh is None:
        return model
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (sharding.make_mesh(...)), got {mesh!r:.60}")
    if hasattr(model, "shard"):
        return model.shard(mesh)
    params = sharding.place(model.params, jax.tree.map(lambda x: (None,) * np.ndim(x), model.params), mesh)
    return SimpleNamespace(config=model.config, params=params, forward=model.forward, tokenizer=model.tokenizer)


def left_pad(ids: list[list[int]], pad_id: int, length: int):
    """Token array [G, length] with each prompt right-aligned, and each row's start slot [G]."""
    tokens = np.full((len(ids), length), pad_id, np.int32)
    start = np.array([length - len(p) for p in ids], np.int32)
    for row, p in enumerate(ids):
        tokens[row, length - len(p):] = p
    return tokens, start


@partial(jax.jit, static_argnames=("forward", "config", "n", "size", "mesh"))
def _start(forward, config, params, tokens, start, keys, *, n: int, size: int, mesh=None) -> DecodeState:
    g, p = tokens.shape
    prefix = PrefillCache.create(config, g, p, start)
    prefix = sharding.constrain(prefix, prefix.axes(), mesh)
    logits, prefix = forward(config, params, tokens, None, prefix, last_only=True)
    cache = KVCache.from_prefill(prefix, n, size)
    cache = sharding.constrain(cache, cache.axes(), mesh)
    b = g * n
    zeros = jnp.zeros((b, size), jnp.float32)
    state = DecodeState(done=jnp.zeros((b,), bool), logits=jnp.repeat(logits, n, axis=0),
                        tokens=jnp.full((b, size), config.pad_id, jnp.int32), logprobs=zeros,
                        sample_logprobs=zeros, keys=keys, counts=jnp.zeros((b, config.vocab_size), jnp.int32),
                        mu=jnp.full((b,), jnp.nan, jnp.float32), fsm=jnp.zeros((b,), jnp.int32),
                        constraint=jnp.int32(-1), prompt=tokens, cache=cache)
    return sharding.constrain(state, state.axes(), mesh)


def start(model, prompts, *, capacity: int, n: int = 1, seed: int = 0, share_prefix: bool = True,
          mesh=None, first_rollout: int = 0) -> DecodeState:
    """Prefill ``prompts`` once and set up ``n`` rollouts of each with ``capacity`` slots of their own.

    With ``share_prefix`` (the default) each prompt's KV is computed and stored once, in the
    prefix block; ``share_prefix=False`` is the naive layout (the prompt replicated ``n`` times,
    each copy a group of one), kept as a reference. Prompts are left-padded to a power-of-two
    bucket. ``model`` must already be on ``mesh`` (:func:`place_model`). The rollouts are numbered
    ``first_rollout ..`` (their keys), so rounds of ``n`` draw what one call with more rollouts would.
    """
    check_int("n", n, 1)
    check_int("seed", seed)
    check_int("first_rollout", first_rollout, 0)
    if not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"seed must fit in 64 bits (signed), got {seed}")
    if first_rollout + n > 2 ** 32:                # rollout numbers are uint32: more would repeat rollout 0..
        raise ValueError(f"rollouts are numbered below 2**32; first_rollout={first_rollout} + n={n} is past that")
    if not isinstance(share_prefix, (bool, np.bool_)):
        raise ValueError(f"share_prefix must be True or False, got {share_prefix!r}")
    ids = check_prompts(model, prompts, capacity, "capacity")
    if len(ids) * n >= 2 ** 31:
        raise ValueError(f"{len(ids)} prompts x n={n} rollouts is more rows than int32 indexing allows")
    groups, per_group = (ids, n) if share_prefix else ([p for p in ids for _ in range(n)], 1)
    width = bucket(max(map(len, ids)))
    need, have = state_bytes(model.config, len(groups), width, len(ids) * n, capacity), memory_bytes(mesh)
    if need > have:                          # refused here, not swapped to a standstill or an XLA OOM
        raise ValueError(f"{len(ids)} prompts x n={n} rollouts of {capacity} slots need {need / 2**30:.1f} GiB "
                         f"of decoding state (KV cache, logits); the memory is {have / 2**30:.1f} GiB")
    keys = rollout_keys(seed, ids, n, first_rollout)
    tokens, first = left_pad(groups, model.config.pad_id, width)
    if mesh is not None:  # prompts and rollouts split over the data axis; every host passes the same values
        tokens, first, keys = sharding.place((tokens, first, keys), (("prefix", None), ("prefix",), ("rollouts",)), mesh)
    return _start(model.forward, model.config, model.params, tokens, first, keys, n=per_group, size=capacity,
                  mesh=mesh)


def _step(forward, config, params, state: DecodeState, sampler: Sampler, stop_ids, mesh=None) -> DecodeState:
    slot = state.cache.index
    # step t of a rollout (its t-th token, appended ones included) draws with fold_in(key, t): not the
    # shared slot, which an append advances by the padded width of every row's text
    keys = jax.vmap(jax.random.fold_in)(state.keys, state.cache.length)
    draw = sample(state.logits, sampler, keys, state.context(stop_ids))
    tok, lp, slp = draw.tokens, draw.logprobs, draw.sample_logprobs
    live = ~state.done & ~draw.dead                       # a dead row ends here, without a token
    tok = jnp.where(live, tok, config.pad_id)
    put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, slot))
    logits, cache = forward(config, params, tok[:, None], None, state.cache, last_only=True)
    state = DecodeState(done=state.done | draw.dead | jnp.isin(tok, stop_ids), logits=logits, tokens=put(state.tokens, tok),
                        logprobs=put(state.logprobs, jnp.where(live, lp, 0.0)),
                        sample_logprobs=put(state.sample_logprobs, jnp.where(live, slp, 0.0)),
                        keys=state.keys, cache=cache.keep(live[:, None]),
                        counts=state.counts.at[jnp.arange(tok.shape[0]), tok].add(live.astype(jnp.int32)),
                        mu=jnp.where(live, draw.mu, state.mu), fsm=jnp.where(live, draw.fsm, state.fsm),
                        constraint=state.constraint, prompt=state.prompt)
    return sharding.constrain(state, state.axes(), mesh)


decode_step = jax.jit(_step, static_argnums=(0, 1), static_argnames=("mesh",), donate_argnums=(3,))
decode_step.__doc__ = """One decode step: sample a token per row from ``state.logits``, run it through the model.

``decode_step(forward, config, params, state, sampler, stop_ids) -> state``; ``state`` is donated.
``sampler`` fields are per row [B]; ``stop_ids`` int32 [n].
"""


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("mesh",), donate_argnums=(3,))
def decode_loop(forward, config, params, state: DecodeState, sampler: Sampler, stop_ids, limit, mesh=None):
    """Decode until every row is done or the rollout block has ``limit`` slots used."""
    cond = lambda s: (s.cache.index < limit) & ~jnp.all(s.done)
    return jax.lax.while_loop(cond, lambda s: _step(forward, config, params, s, sampler, stop_ids, mesh), state)


def row_sampler(sampler: Sampler | None, state: DecodeState, mesh=None, stops=None) -> Sampler:
    """``sampler`` (fields [], [G] or [G, N]) as per-row arrays [G*N], placed like the rollouts; its
    token lists and constraint checked against the vocabulary and the stop ids ``stops``
    (:meth:`Sampler.check_vocab`)."""
    sampler = check_sampler(sampler).check_vocab(state.logits.shape[-1], stops)
    g, n = state.shape
    sampler = sampler.broadcast((g, n)).reshape((g * n,))
    return sharding.place(sampler, sampler.row_axes, mesh)


def decode(model, state: DecodeState, *, max_new_tokens: int, sampler: Sampler | None = None, stop_tokens=None,
           mesh=None) -> DecodeState:
    """Continue every unfinished rollout for up to ``max_new_tokens`` more tokens.

    Nothing already in the cache is recomputed. A rollout stops at an EOS or any of
    ``stop_tokens``; a finished rollout stays finished until :func:`append` gives it more text.
    The draws of a rollout depend only on its key and its token count, so decoding in several
    calls equals decoding in one. ``state`` is used up: its buffers are donated to the result (the
    KV cache is updated in place); copy it first (:func:`select`) to continue it twice. A
    sampler's constraint continues from where the last call with the same constraint left each
    row; a different constraint starts afresh, matching the text from here on.
    """
    check_state(state)
    check_int("max_new_tokens", max_new_tokens, 1)
    used = int(state.cache.index)
    if used + max_new_tokens > state.cache.size:
        raise ValueError(f"{used} of the rollouts' {state.cache.size} cache slots are used; {max_new_tokens} more "
                         f"do not fit (start with a larger capacity)")
    stops = stop_ids(model.config, stop_tokens)
    table = check_sampler(sampler).values.get("constraint")     # the host copy, before it is placed
    sampler = row_sampler(sampler, state, mesh, stops)
    if table is not None:
        tag = zlib.crc32(np.asarray(table).tobytes()) & 0x7FFFFFFF
        if int(state.constraint) != tag:        # another constraint's states mean nothing in this table
            state = dataclasses.replace(state, fsm=jnp.zeros_like(state.fsm, device=state.fsm.sharding),
                                        constraint=jnp.int32(tag))
    return decode_loop(model.forward, model.config, model.params, state, sampler, stops,
                       jnp.int32(used + max_new_tokens), mesh=mesh)


@jax.jit
def _gather(state: DecodeState, rows) -> DecodeState:
    """Every rollout-axis field of ``state`` gathered at ``rows``: one gather, prefix block untouched."""
    return take_rollouts(state, rows)


def select(state: DecodeState, indices) -> DecodeState:
    """Keep, reorder or repeat rollouts within each prompt: row ``(g, m)`` becomes rollout ``indices[g, m]``.

    ``indices`` int [G, M] (M may differ from N: prune with M < N, resample with repeats). A
    selected rollout keeps its key, so continuing it draws what it would have drawn anyway;
    copies therefore continue identically — use :func:`fork` for copies that diverge.
    """
    check_state(state)
    g, n = state.shape
    try:
        idx = np.asarray(indices)
    except ValueError:                                  # ragged rows
        idx = np.asarray(None)
    if idx.ndim != 2 or idx.shape[0] != g or idx.shape[1] < 1:
        raise ValueError(f"indices must have shape [G={g}, M>=1], got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices must be rollout numbers in [0, {n}), got values {idx.min()}..{idx.max()}")
    rows = (np.arange(g)[:, None] * n + idx).reshape(-1).astype(np.int32)
    return _gather(state, jnp.asarray(rows))


def fork(state: DecodeState, k: int) -> DecodeState:
    """Give each rollout's state to ``k`` children (N -> N*k); child ``c`` draws with ``fold_in(key, c)``."""
    check_int("k", k, 1)
    g, n = state.shape
    out = select(state, np.tile(np.repeat(np.arange(n), k), (g, 1)))
    child = jnp.asarray(np.tile(np.arange(k, dtype=np.uint32), g * n))
    return dataclasses.replace(out, keys=jax.vmap(jax.random.fold_in)(out.keys, child))


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _append(forward, config, params, state: DecodeState, tokens, valid) -> DecodeState:
    slot = state.cache.index
    logits, cache = forward(config, params, tokens, None, state.cache)
    count = jnp.sum(valid, axis=1)
    last = jnp.take_along_axis(logits, jnp.maximum(count - 1, 0)[:, None, None], axis=1)[:, 0]
    has = count > 0
    return dataclasses.replace(
        state, done=state.done & ~has, logits=jnp.where(has[:, None], last, state.logits),
        tokens=jax.lax.dynamic_update_slice(state.tokens, jnp.where(valid, tokens, config.pad_id), (0, slot)),
        cache=cache.keep(valid))


def append(model, state: DecodeState, tokens) -> DecodeState:
    """Append tokens to rollouts (e.g. a feedback string), prefilling only the new tokens.

    ``tokens``: one token-id list (or string, with a tokenizer) for every rollout, or a nested
    list ``[G][N]`` of them (an empty list leaves that rollout as it is). A rollout given
    tokens is no longer done; its next token is sampled after them. The longest text is padded to
    a power of two of cache slots (fewer compilations), or to the slots left, whichever is less;
    every rollout's block advances by that width. ``state`` is used up (donated), as by
    :func:`decode`.
    """
    check_state(state)
    g, n = state.shape

    def encode(t):
        if isinstance(t, str):
            if model.tokenizer is None:
                raise ValueError("string tokens need a model with a tokenizer")
            return model.tokenizer.encode(t, bos=False)
        return token_ids("appended tokens", t)

    if not isinstance(tokens, (str, list, tuple, np.ndarray)):
        raise ValueError(f"tokens must be a token-id list, a string, or a nested list [G={g}][N={n}], got {tokens!r}")
    if isinstance(tokens, str) or all(isinstance(t, (int, np.integer)) for t in tokens):
        rows = [encode(tokens)] * (g * n)
    elif len(tokens) == g and all(isinstance(group, (list, tuple)) and len(group) == n for group in tokens):
        rows = [encode(t) for group in tokens for t in group]
    else:
        raise ValueError(f"tokens must be one list for every rollout or a nested list [G={g}][N={n}]")
    longest = max(map(len, rows))
    if longest == 0:
        return state
    vocab = model.config.vocab_size
    if any(not 0 <= t < vocab for r in rows for t in r):
        raise ValueError(f"appended token ids must be in [0, {vocab})")
    used = int(state.cache.index)
    if used + longest > state.cache.size:
        raise ValueError(f"appending {longest} tokens needs {used + longest} rollout cache slots; the cache has "
                         f"{state.cache.size}")
    width = min(bucket(longest, 1), state.cache.size - used)    # padded (few compilations), within the cache
    total = np.asarray(state.cache.prefix_lengths() + state.cache.length) + np.array([len(r) for r in rows])
    if total.max() > model.config.max_len:
        raise ValueError(f"a rollout would reach {int(total.max())} tokens, over the model's maximum length "
                         f"{model.config.max_len}")
    ids = np.full((g * n, width), model.config.pad_id, np.int32)
    valid = np.zeros((g * n, width), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], valid[i, :len(r)] = r, True
    return _append(model.forward, model.config, model.params, state, jnp.asarray(ids), jnp.asarray(valid))
