"""The engine's verbs on a :class:`DecodeState`: start, decode, select, fork, rewind, append, track_scores.

A search is ``start`` once, then any sequence of ``decode`` (to the next pause, step delimiter
or stop), ``track_scores`` (a reward model's score of every rollout so far), ``select`` /
``fork`` (one gather over the rollout axis; the prefix block is untouched), ``rewind`` (cut
rollouts back) and ``append`` (prefill of only the new tokens). Each verb checks the values it
is given (``engine.checks``), then calls one jitted core. ``decode``, ``select``, ``rewind`` and
``track_scores`` also work on a traced state, inside a user's ``jax.jit`` / ``lax.while_loop``:
then only shapes and settings are checked, and a ``decode`` that runs out of cache slots
stops there.
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
from engine.checks import (check_bool, check_copies, check_finite, check_int, check_models, check_prompts, check_rows,
                           check_sampler, check_state, check_track, check_tracks, memory_bytes, state_bytes, step_ids,
                           stop_ids, stop_strings, token_ids, traced)
from engine.state import DecodeState, Track
from engine.speculative import PROMPT_LOOKUP, speculate_loop
from engine.step import Decoding, Mixture, decode_loop, feed, write
from sampling import Sampler, rollout_keys
from sampling.mixtures import resolve, rows

MIN_BUCKET = 16
REKEY = 0x5EED     # salt of select(rekey=True)'s keys, so they differ from fork's fold_in(key, child)


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
    return SimpleNamespace(config=model.config, params=params, forward=model.forward, tokenizer=model.tokenizer,
                           score=getattr(model, "score", None))


def left_pad(ids: list[list[int]], pad_id: int, length: int):
    """Token array [G, length] with each prompt right-aligned, and each row's start slot [G]."""
    tokens = np.full((len(ids), length), pad_id, np.int32)
    start = np.array([length - len(p) for p in ids], np.int32)
    for row, p in enumerate(ids):
        tokens[row, length - len(p):] = p
    return tokens, start


def model_stack(model, tracks: dict):
    """``(stack, params)`` for the jitted cores: the policy's then each track's (by name) ``(name, step
    function, config)`` — static — and their params. A reward model's step is its scalar head."""
    models = [("", model)] + sorted(tracks.items())
    stack = tuple((name, m.score if m.config.score_head and name else m.forward, m.config) for name, m in models)
    return stack, tuple(m.params for _, m in models)


def _prefill(step, config, params, tokens, start, n: int, size: int, mesh):
    """One model's output after each prompt [G, ...] and its two-block cache (``n`` rollouts of ``size`` slots)."""
    prefix = PrefillCache.create(config, *tokens.shape, start)
    out, prefix = step(config, params, tokens, None, sharding.constrain(prefix, prefix.axes(), mesh), last_only=True)
    cache = KVCache.from_prefill(prefix, n, size)
    return out, sharding.constrain(cache, cache.axes(), mesh)


@partial(jax.jit, static_argnames=("stack", "n", "size", "mesh"))
def _start(stack, params, prompts, keys, *, n: int, size: int, mesh=None) -> DecodeState:
    """``prompts``: each model's left-padded tokens [G, P] and first real slots [G], in ``stack``'s order."""
    (_, forward, config), *track_stack = stack
    tokens = prompts[0][0]
    logits, cache = _prefill(forward, config, params[0], *prompts[0], n, size, mesh)
    tracks = {}
    for (name, step, track_config), p, prompt in zip(track_stack, params[1:], prompts[1:]):
        out, track_cache = _prefill(step, track_config, p, *prompt, n, size, mesh)
        tracks[name] = Track(cache=track_cache, out=jnp.repeat(out, n, axis=0), first=out)
    b = tokens.shape[0] * n
    zeros, no = jnp.zeros((b, size), jnp.float32), jnp.zeros((b,), bool)
    state = DecodeState(done=no, paused=no, failed=no, logits=jnp.repeat(logits, n, axis=0), first=logits,
                        tokens=jnp.full((b, size), config.pad_id, jnp.int32), drawn=jnp.zeros((b, size), bool),
                        logprobs=zeros, sample_logprobs=zeros, fsms=jnp.zeros((b, size), jnp.int32), keys=keys,
                        mu=jnp.full((b,), jnp.nan, jnp.float32), fsm=jnp.zeros((b,), jnp.int32),
                        constraint=jnp.int32(-1), prompt=tokens, cache=cache, tracks=tracks)
    return sharding.constrain(state, state.axes(), mesh)


def start(model, prompts, *, capacity: int, n: int = 1, seed: int = 0, share_prefix: bool = True,
          mesh=None, first_rollout: int = 0, tracks: dict | None = None,
          track_prompts: dict | None = None, slots: int | None = None) -> DecodeState:
    """Prefill ``prompts`` once and set up ``n`` rollouts of each with ``capacity`` slots of their own.

    With ``share_prefix`` (the default) each prompt's KV is computed and stored once, in the
    prefix block; ``share_prefix=False`` is the naive layout (the prompt replicated ``n`` times,
    each copy a group of one), kept as a reference. Prompts are left-padded to a power-of-two
    bucket. ``model`` must already be on ``mesh`` (:func:`place_model`; tracks are placed here).
    The rollouts are numbered ``first_rollout ..`` (their keys), so rounds of ``n`` draw what one
    call with more rollouts would.

    ``tracks`` ``{name: model}``: other models sharing the policy's tokenizer that ride along — a
    reward model (``config.score_head``: :func:`track_scores` reads its score of each rollout so
    far) or a language model (for a :class:`~engine.step.Mixture`). Each prefills the prompts
    (or its own, ``track_prompts[name]``, one per prompt) into its own two-block cache and is fed
    every token the policy draws or appends; ``select`` / ``fork`` / ``rewind`` move them along.

    ``slots``: the rollout block's slots when they must outnumber the ``capacity`` tokens (default:
    ``capacity``): speculative decoding leaves holes (``decode(..., draft=...)``).
    """
    check_int("n", n, 1)
    check_int("seed", seed)
    check_int("first_rollout", first_rollout, 0)
    if not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"seed must fit in 64 bits (signed), got {seed}")
    if first_rollout + n > 2 ** 32:                # rollout numbers are uint32: more would repeat rollout 0..
        raise ValueError(f"rollouts are numbered below 2**32; first_rollout={first_rollout} + n={n} is past that")
    check_bool("share_prefix", share_prefix)
    ids = check_prompts(model, prompts, capacity, "capacity")
    slots = capacity if slots is None else slots
    check_int("slots", slots, capacity)
    tracks = check_tracks(model, tracks, track_prompts, len(ids))
    track_ids = {name: check_prompts(track, (track_prompts or {}).get(name, prompts), capacity, "capacity")
                 for name, track in tracks.items()}
    if len(ids) * n >= 2 ** 31:
        raise ValueError(f"{len(ids)} prompts x n={n} rollouts is more rows than int32 indexing allows")
    per_group = n if share_prefix else 1                 # the naive layout: each prompt copied n times, groups of 1
    groups = lambda ids: ids if share_prefix else [p for p in ids for _ in range(n)]
    need = sum(state_bytes(m.config, len(ids) * n // per_group, bucket(max(map(len, p))), len(ids) * n, slots)
               for m, p in [(model, ids)] + [(tracks[k], v) for k, v in track_ids.items()])
    have = memory_bytes(mesh)
    if need > have:                          # refused here, not swapped to a standstill or an XLA OOM
        raise ValueError(f"{len(ids)} prompts x n={n} rollouts of {slots} slots need {need / 2**30:.1f} GiB "
                         f"of decoding state (KV cache, logits); the memory is {have / 2**30:.1f} GiB")
    keys = rollout_keys(seed, ids, n, first_rollout)
    tracks = {name: place_model(m, mesh) for name, m in tracks.items()}

    def padded(m, ids):                      # prompts and rollouts split over the data axis (every host: same values)
        tokens, first = left_pad(groups(ids), m.config.pad_id, bucket(max(map(len, ids))))
        return sharding.place((tokens, first), (("prefix", None), ("prefix",)), mesh)

    prompts = [padded(model, ids)] + [padded(tracks[name], track_ids[name]) for name in sorted(tracks)]
    keys = sharding.place(keys, ("rollouts",), mesh)
    return _start(*model_stack(model, tracks), prompts, keys, n=per_group, size=slots, mesh=mesh)


def row_sampler(sampler: Sampler | None, state: DecodeState, mesh=None, stops=None) -> Sampler:
    """``sampler`` (fields [], [G] or [G, N]) as per-row arrays [G*N], placed like the rollouts; its
    token lists and constraint checked against the vocabulary and the stop ids ``stops``
    (:meth:`Sampler.check_vocab`)."""
    sampler = check_sampler(sampler).check_vocab(state.logits.shape[-1], stops)
    g, n = state.shape
    sampler = sampler.broadcast((g, n)).reshape((g * n,))
    return _place(state, sampler, sampler.row_axes, mesh)


def _place(state: DecodeState, tree, axes, mesh):
    """``tree`` on ``mesh`` as ``axes`` say: placed, or constrained where ``state`` is traced."""
    return (sharding.constrain if traced(state) else sharding.place)(tree, axes, mesh)


def _mixture(mixture, state: DecodeState, mesh):
    """``mixture`` with its combine function resolved, its tracks checked and its params per row [B]."""
    if not isinstance(mixture, Mixture):
        raise ValueError(f"mixture must be an engine.Mixture(combine, tracks, params), got {type(mixture).__name__}")
    names = (mixture.tracks,) if isinstance(mixture.tracks, str) else tuple(mixture.tracks)
    for name in names:
        check_track(state, name, reward=False)
    fn, params = resolve(mixture.combine, 1 + len(names), mixture.params)
    if not callable(mixture.combine):                            # named: one value per row
        params = {k: v.reshape(-1) for k, v in rows(params, state.shape).items()}
    params = _place(state, {k: jnp.asarray(v, jnp.float32) for k, v in params.items()},
                    {k: ("rollouts",)[:np.ndim(v)] for k, v in params.items()}, mesh)
    return Mixture(fn, names, params)


def decoding(model, state: DecodeState, *, sampler: Sampler | None = None, stop_tokens=None, step_tokens=None,
             mixture: Mixture | None = None, mesh=None, stop=None, max_length: int | None = None) -> Decoding:
    """How :func:`decode` draws, checked and normalised once (the sampler per row, placed like ``state``'s
    rollouts): what ``engine.step.decode_loop`` takes, for programs that call it themselves."""
    stops = stop_ids(model.config, stop_tokens)
    strings = stop_strings(model, stop)
    table = check_sampler(sampler).values.get("constraint")     # the host copy, before it is placed
    tag = -1 if table is None else zlib.crc32(np.asarray(table).tobytes()) & 0x7FFFFFFF
    return Decoding(sampler=row_sampler(sampler, state, mesh, stops), stops=stops, steps=step_ids(model, step_tokens),
                    mixture=None if mixture is None else _mixture(mixture, state, mesh), constraint=jnp.int32(tag),
                    strings=strings, max_length=None if max_length is None else jnp.int32(max_length))


def decode(model, state: DecodeState, *, max_new_tokens: int, sampler: Sampler | None = None, stop_tokens=None,
           step_tokens=None, tracks: dict | None = None, mixture: Mixture | None = None, mesh=None,
           stop=None, draft: str | None = None, lookahead: int = 4, max_length: int | None = None) -> DecodeState:
    """Continue every unfinished rollout for up to ``max_new_tokens`` more tokens.

    Nothing already in the cache is recomputed. A rollout is *done* after an EOS or any of
    ``stop_tokens`` (it stays done until :func:`append` or :func:`rewind` gives it more to do);
    it *pauses* after one of ``step_tokens`` (token ids, a string such as ``"\\n\\n"``, or a list of
    them: the delimiters that end a reasoning step, kept as the step's last tokens), and the next
    ``decode`` continues it. The call returns when every row is done or paused, or after
    ``max_new_tokens`` slots. ``state.done`` / ``state.paused`` say which each row is.

    ``stop`` (a list of strings, e.g. ``["\\n\\nQ:", "</answer>"]``; needs a tokenizer) also ends a
    rollout, when a drawn token completes one of them — across token boundaries, or inside one
    token, as ``transformers``' ``StopStringCriteria`` (``engine.stops``); the token is kept, and
    ``rollouts(state, tokenizer, stop=...)`` cuts the text there.

    ``max_length``: each rollout's own limit: a row that holds this many tokens (appended ones
    included) is done there, mid-step if need be, whatever the rows beside it drew. ``max_new_tokens``
    counts the slots the whole batch shares, so where rows idle (paused while others finish a step)
    a row's length then depends on the batch; with ``max_length`` and slots to spare it does not.

    The draws of a rollout depend only on its key and its token count, so decoding in several
    calls equals decoding in one. ``state`` is used up: its buffers are donated to the result (the
    KV cache is updated in place); copy it first (:func:`select`) to continue it twice. A
    sampler's constraint continues from where the last call with the same constraint left each
    row; a different constraint starts afresh, matching the text from here on. ``tracks``: the
    models the state was started with (``start(..., tracks=)``), fed every token drawn;
    ``mixture`` draws from a mixture of the policy's and some language-model tracks' logits.

    ``draft`` decodes speculatively (``engine.speculative``), with the same result: the name of a
    language-model track of the state (a smaller model with the policy's tokenizer) or
    ``"prompt_lookup"`` (n-gram matches in the prompt and the rollout; no model) proposes
    ``lookahead`` tokens, the policy checks them in one forward. Greedy rows give exactly the tokens
    of plain greedy decoding, sampled rows the same distribution. Rejected proposals leave holes in
    the rollout block: a call may use up to ``(lookahead + 1) * max_new_tokens + 1`` slots, and the
    state must have that many free (``start(..., slots=...)``). Not with a mixture or other tracks.
    """
    check_state(state)
    stack, params = model_stack(model, check_models(model, tracks, state))
    check_int("max_new_tokens", max_new_tokens, 1)
    if max_length is not None:
        check_int("max_length", max_length, 1)
        if draft is not None:
            raise ValueError("max_length is for plain decoding: not with draft= (a speculative step may overshoot it)")
    used, size = state.cache.index, state.cache.size
    slots = max_new_tokens if draft is None else speculative_slots(state, draft, lookahead, max_new_tokens, mixture)
    if not traced(state) and int(used) + slots > size:
        raise ValueError(f"{int(used)} of the rollouts' {size} cache slots are used; {slots} more "
                         f"do not fit (start with a larger capacity"
                         f"{'' if draft is None else f', or slots=: speculation with lookahead={lookahead} may leave holes'})")
    how = decoding(model, state, sampler=sampler, stop_tokens=stop_tokens, step_tokens=step_tokens,
                   mixture=mixture, mesh=mesh, stop=stop, max_length=max_length)
    if draft is None:
        state = decode_loop(stack, params, state, how, jnp.minimum(used + max_new_tokens, size), mesh=mesh)
    else:
        state = speculate_loop(stack, params, state, how, jnp.minimum(used + slots, size), jnp.int32(max_new_tokens),
                               k=lookahead, draft=draft, mesh=mesh)
    if not traced(state):
        check_finite(state, mesh)
    return state


def speculative_slots(state: DecodeState, draft, lookahead, max_new_tokens: int, mixture=None) -> int:
    """Rollout slots a speculative ``decode`` of ``max_new_tokens`` may use, once ``draft`` (a
    language-model track's name or ``"prompt_lookup"``) and ``lookahead`` are checked: ``(lookahead + 1)
    * max_new_tokens + 1`` (every proposal rejected, then the last token fed)."""
    check_int("lookahead", lookahead, 1)
    if draft != PROMPT_LOOKUP:
        if not isinstance(draft, str):
            raise ValueError(f"draft must be the name of a language-model track of the state or "
                             f"{PROMPT_LOOKUP!r}, got {type(draft).__name__}")
        check_track(state, draft, reward=False)
    others = sorted(set(state.tracks) - {draft})
    if others or mixture is not None:
        raise ValueError(f"speculative decoding feeds only its draft; this state also has tracks {others}"
                         if others else "speculative decoding does not take a mixture (draft=None to mix)")
    return (lookahead + 1) * max_new_tokens + 1


@jax.jit
def _gather(state: DecodeState, rows, rekey) -> DecodeState:
    """Every rollout-axis field of ``state`` (tracks too) gathered at ``rows``: one gather, prefix block
    untouched. Row ``(g, m)`` of the result where ``rekey`` (bool [G*M]) draws with
    ``fold_in(fold_in(key, REKEY), m)``."""
    out = take_rollouts(state, rows)
    m = rows.shape[0] // state.cache.groups
    position = jnp.arange(rows.shape[0], dtype=jnp.uint32) % m
    salted = jax.vmap(jax.random.fold_in)(out.keys, jnp.full(position.shape, REKEY, jnp.uint32))
    fresh = jax.vmap(jax.random.fold_in)(salted, position)
    return dataclasses.replace(out, keys=jnp.where(rekey, fresh, out.keys))


def select(state: DecodeState, indices, *, rekey=False) -> DecodeState:
    """Keep, reorder or repeat rollouts within each prompt: row ``(g, m)`` becomes rollout ``indices[g, m]``.

    ``indices`` int [G, M] (M may differ from N: prune with M < N, resample with repeats); the
    tracks move with their rollouts. A selected rollout keeps its key, so continuing it draws what
    it would have drawn anyway and copies continue identically; with ``rekey=True`` every row
    gets a fresh key derived from its old one and its place ``m`` in the result, so copies
    diverge — the same for the same calls and seed, whatever else is in the batch. ``rekey`` may
    also be bool [G, M]: only those rows get fresh keys (a rollout that resamples a step it rejected).
    """
    check_state(state)
    g, n = state.shape
    if isinstance(indices, jax.core.Tracer):
        if indices.ndim != 2 or indices.shape[0] != g:
            raise ValueError(f"indices must have shape [G={g}, M>=1], got {indices.shape}")
        idx = indices.astype(jnp.int32)
    else:
        try:
            idx = np.asarray(indices)
        except ValueError:                                  # ragged rows
            idx = np.asarray(None)
        if idx.ndim != 2 or idx.shape[0] != g or idx.shape[1] < 1:
            raise ValueError(f"indices must have shape [G={g}, M>=1], got {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"indices must be rollout numbers in [0, {n}), got values {idx.min()}..{idx.max()}")
        check_copies(state, idx.size)
    rows = (jnp.arange(g, dtype=jnp.int32)[:, None] * n + idx).reshape(-1)
    if not isinstance(rekey, (bool, jax.core.Tracer)) and (np.shape(rekey) != idx.shape or
                                                          np.asarray(rekey).dtype != bool):
        raise ValueError(f"rekey must be True, False or bool [G, M] like indices {idx.shape}, got {rekey!r}")
    return _gather(state, rows, jnp.broadcast_to(jnp.asarray(rekey, bool), idx.shape).reshape(-1))


def fork(state: DecodeState, k: int) -> DecodeState:
    """Give each rollout's state to ``k`` children (N -> N*k); child ``c`` draws with ``fold_in(key, c)``."""
    check_state(state)
    check_int("k", k, 1)
    g, n = state.shape
    out = select(state, np.tile(np.repeat(np.arange(n), k), (g, 1)))
    child = jnp.asarray(np.tile(np.arange(k, dtype=np.uint32), g * n))
    return dataclasses.replace(out, keys=jax.vmap(jax.random.fold_in)(out.keys, child))


@jax.jit
def compact(state: DecodeState) -> DecodeState:
    """Free the slots that cut-back tokens left: every row's tokens (and the KV of the policy and its
    tracks) move to its first slots, in order, and the next write goes after the longest row.
    Nothing is recomputed and nothing decodes differently (positions count tokens, not slots); a
    search that rewinds rows often keeps its cache this small (:func:`meta.backtrack`)."""
    check_state(state)
    return state.compacted()


def finish(state: DecodeState, rows) -> DecodeState:
    """Mark the rollouts where ``rows`` (bool [G, N]) done, as a stop token would, without a token:
    ``decode`` leaves them as they are until :func:`append` or :func:`rewind` gives them more to do
    (e.g. an answer a verifier accepted before the rollout ended it)."""
    check_state(state)
    g, n = state.shape
    if np.shape(rows) != (g, n) or np.asarray(rows).dtype != bool:
        raise ValueError(f"rows must be bool [G={g}, N={n}], got {rows!r}")
    return dataclasses.replace(state, done=state.done | jnp.asarray(rows).reshape(-1),
                               paused=state.paused & ~jnp.asarray(rows).reshape(-1))


@partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _append(stack, params, state: DecodeState, tokens, valid) -> DecodeState:
    has = jnp.any(valid, axis=1)
    state = write(state, stack[0][2].pad_id, valid, tokens=tokens, drawn=jnp.zeros_like(valid),
                   logprobs=jnp.zeros(valid.shape), sample_logprobs=jnp.zeros(valid.shape),
                   fsms=jnp.broadcast_to(state.fsm[:, None], valid.shape))
    state = dataclasses.replace(state, done=state.done & ~has, paused=state.paused & ~has)
    return feed(stack, params, state, tokens, valid)


def append(model, state: DecodeState, tokens, *, tracks: dict | None = None) -> DecodeState:
    """Append tokens to rollouts (e.g. a feedback string), prefilling only the new tokens (tracks too).

    ``tokens``: one token-id list (or string, with a tokenizer) for every rollout, or a nested
    list ``[G][N]`` of them (an empty list leaves that rollout as it is). A rollout given
    tokens is no longer done or paused; its next token is sampled after them. The longest text is
    padded to a power of two of cache slots (fewer compilations), or to the slots left, whichever
    is less; every rollout's block advances by that width. ``state`` is used up (donated), as by
    :func:`decode`; ``tracks`` as there.
    """
    check_state(state)
    tracks = check_models(model, tracks, state)
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
    for name, track in tracks.items():
        total = np.maximum(total, np.asarray(state.tracks[name].cache.prefix_lengths() + state.cache.length)
                           + np.array([len(r) for r in rows]))
    limit = min([model.config.max_len] + [track.config.max_len for track in tracks.values()])
    if total.max() > limit:
        raise ValueError(f"a rollout would reach {int(total.max())} tokens, over the model's maximum length {limit}")
    ids = np.full((g * n, width), model.config.pad_id, np.int32)
    valid = np.zeros((g * n, width), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], valid[i, :len(r)] = r, True
    return _append(*model_stack(model, tracks), state, jnp.asarray(ids), jnp.asarray(valid))


@partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _rewind(stack, params, state: DecodeState, lengths) -> DecodeState:
    valid, b = state.cache.valid, state.done.shape[0]
    room = state.cache.index < state.cache.size                      # a free slot to feed a token again (traced:
    cut = (lengths < state.cache.length) & ((lengths <= 0) | room)   # unchecked; a rewind that cannot is skipped)
    rank = jnp.cumsum(valid, axis=1)                                 # 1.. at each real token
    keep = valid & ~(cut[:, None] & (rank >= lengths[:, None]))      # a cut row keeps its first lengths - 1
    refeed = (cut & (lengths > 0))[:, None]                          # its last kept token is fed again
    at = jnp.argmax(valid & (rank == lengths[:, None]), axis=1)[:, None]
    last = {k: jnp.take_along_axis(getattr(state, k), at, axis=1)
            for k in ("tokens", "drawn", "logprobs", "sample_logprobs", "fsms")}
    clear = {k: jnp.where(keep, getattr(state, k), stack[0][2].pad_id if k == "tokens" else 0).astype(getattr(state, k).dtype)
             for k in last}
    to_prompt = cut & ~refeed[:, 0]                                  # cut to 0 tokens: outputs after the prompt
    restore = lambda now, first: jnp.where(to_prompt.reshape((-1,) + (1,) * (now.ndim - 1)),
                                           jnp.repeat(first, b // first.shape[0], axis=0), now)
    cache = lambda c: dataclasses.replace(c, valid=keep, length=jnp.sum(keep, axis=1, dtype=jnp.int32))
    tracks = {k: dataclasses.replace(t, cache=cache(t.cache), out=restore(t.out, t.first))
              for k, t in state.tracks.items()}
    state = dataclasses.replace(state, **clear, done=state.done & ~cut, paused=state.paused & ~cut,
                                logits=restore(state.logits, state.first), fsm=jnp.where(cut, 0, state.fsm),
                                cache=cache(state.cache), tracks=tracks)
    state = write(state, stack[0][2].pad_id, refeed, **last)
    state = dataclasses.replace(state, fsm=jnp.where(refeed[:, 0], last["fsms"][:, 0], state.fsm))
    return feed(stack, params, state, last["tokens"], refeed)


def rewind(model, state: DecodeState, lengths, *, tracks: dict | None = None) -> DecodeState:
    """Cut rollouts back to their first ``lengths`` [G, N] tokens (appended ones count, as in
    ``state.cache.length``); the later slots stop counting (for the policy and every track).

    A row cut back is live again (neither done nor paused); a row given its own length is left as
    it is. The outputs after the kept tokens (logits, track scores) are recomputed by feeding the
    last kept token again (one model step, one more cache slot) or, for 0 tokens, restored from the
    prompt's. Decoding a rewound rollout then draws exactly the tokens it drew before (keys are per
    token count), unless it was re-keyed. The sampler's per-row memory follows: token counts for
    penalties, the n-gram history and a constraint's automaton state are those of the kept tokens;
    Mirostat's running estimate cannot be rewound and keeps its value. ``state`` is used up (donated);
    ``tracks`` as in :func:`decode`.
    """
    check_state(state)
    tracks = check_models(model, tracks, state)
    g, n = state.shape
    have = state.cache.length.reshape(g, n)
    lengths = check_rows("lengths", lengths, (g, n), 0, have if not traced(state) else 2 ** 31 - 1)
    if not traced(state) and int(state.cache.index) >= state.cache.size and np.any((lengths > 0) & (lengths < have)):
        raise ValueError(f"rewind feeds each cut rollout's last kept token again, which needs one free cache slot; "
                         f"all {state.cache.size} are used (start with a larger capacity)")
    return _rewind(*model_stack(model, tracks), state, jnp.asarray(lengths).reshape(-1))


def track_scores(state: DecodeState, name: str) -> jax.Array:
    """f32 [G, N]: reward track ``name``'s score of each rollout at its latest token (prompt + every
    token drawn or appended so far) — what that reward model gives the same text from scratch, to
    float rounding, computed incrementally (no re-tokenising, no recompute)."""
    check_state(state)
    check_track(state, name, reward=True)
    return state.tracks[name].out.reshape(state.shape)
