"""Prefill, decode step and the jitted generation loop.

``generate`` runs prefill and one ``lax.while_loop`` of decode steps inside a single jitted
program; ``stream`` runs the same step one token at a time for interactive use.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

import sharding
from engine.cache import KVCache
from sampling import Sampler, rollout_keys, sample

MIN_BUCKET = 16


def bucket(n: int) -> int:
    """Padded prompt length: the next power of two >= n (at least 16), so compilations are few."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    step: jax.Array             # int32 []      tokens generated so far
    done: jax.Array             # bool [B]      row has emitted a stop token
    logits: jax.Array           # f32 [B, V]    next-token logits
    tokens: jax.Array           # int32 [B, T]  generated tokens (pad after a row is done)
    lengths: jax.Array          # int32 [B]     generated tokens per row, stop token included
    logprobs: jax.Array         # f32 [B, T]    model log-prob of each token (before filters)
    sample_logprobs: jax.Array  # f32 [B, T]    proposal log-prob (after filters)
    keys: jax.Array             # key [B]       per-rollout PRNG keys
    cache: KVCache

    @staticmethod
    def axes() -> "DecodeState":
        """Logical axis names of every field (for ``sharding``), shaped like the state."""
        row, rows = ("rollouts",), ("rollouts", "time")
        return DecodeState(step=(), done=row, logits=("rollouts", "vocab"), tokens=rows, lengths=row,
                           logprobs=rows, sample_logprobs=rows, keys=row, cache=KVCache.axes())


@dataclasses.dataclass
class Rollouts:
    """Generated continuations of G prompts, N rollouts each."""
    tokens: jax.Array            # int32 [G, N, T] (padded with the model's pad id)
    lengths: jax.Array           # int32 [G, N]
    logprobs: jax.Array          # f32 [G, N, T] model log-probs, before filters
    sample_logprobs: jax.Array   # f32 [G, N, T] proposal log-probs, after filters
    text: list[list[str]] | None = None


def _check_prompts(model, prompts, max_new_tokens: int) -> list[list[int]]:
    config = model.config
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists or strings")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if model.tokenizer is None:
                raise ValueError("string prompts need a model with a tokenizer; pass token ids")
            p = model.tokenizer.encode(p)
        p = [int(t) for t in np.asarray(p).reshape(-1)]
        if not p:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in p if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {config.vocab_size}): {bad[:5]}")
        if len(p) + max_new_tokens > config.max_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that "
                             f"exceeds the model's maximum length {config.max_len}")
        ids.append(p)
    return ids


def left_pad(ids: list[list[int]], pad_id: int, length: int):
    """Token array [G, length] with each prompt right-aligned, and each row's start slot [G]."""
    tokens = np.full((len(ids), length), pad_id, np.int32)
    start = np.array([length - len(p) for p in ids], np.int32)
    for row, p in enumerate(ids):
        tokens[row, length - len(p):] = p
    return tokens, start


@partial(jax.jit, static_argnames=("forward", "config", "max_new_tokens", "mesh"))
def prefill(forward, config, params, tokens, start, keys, *, max_new_tokens: int, mesh=None) -> DecodeState:
    """Run the prompts [B, P] (left-padded, first real slot ``start``) into a fresh cache.

    With a ``mesh``, the cache and the state are constrained to the shardings of their logical axes.
    """
    b, p = tokens.shape
    cache = sharding.constrain(KVCache.create(config, b, p + max_new_tokens, start), KVCache.axes(), mesh)
    logits, cache = forward(config, params, tokens, None, cache, last_only=True)
    zeros = jnp.zeros((b, max_new_tokens), jnp.float32)
    state = DecodeState(step=jnp.zeros((), jnp.int32), done=jnp.zeros((b,), bool), logits=logits,
                        tokens=jnp.full((b, max_new_tokens), config.pad_id, jnp.int32),
                        lengths=jnp.zeros((b,), jnp.int32), logprobs=zeros, sample_logprobs=zeros,
                        keys=keys, cache=cache)
    return sharding.constrain(state, DecodeState.axes(), mesh)


def _step(forward, config, params, state: DecodeState, sampler: Sampler, stop_ids, mesh=None) -> DecodeState:
    keys = jax.vmap(jax.random.fold_in, (0, None))(state.keys, state.step)
    tok, lp, slp = sample(state.logits, sampler, keys)
    tok = jnp.where(state.done, config.pad_id, tok)
    put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, state.step))
    lengths = state.lengths + (~state.done)
    done = state.done | jnp.isin(tok, stop_ids)
    logits, cache = forward(config, params, tok[:, None], None, state.cache, last_only=True)
    state = dataclasses.replace(state, step=state.step + 1, done=done, logits=logits, tokens=put(state.tokens, tok),
                                lengths=lengths, logprobs=put(state.logprobs, jnp.where(state.done, 0.0, lp)),
                                sample_logprobs=put(state.sample_logprobs, jnp.where(state.done, 0.0, slp)),
                                cache=cache)
    return sharding.constrain(state, DecodeState.axes(), mesh)


decode_step = jax.jit(_step, static_argnums=(0, 1), static_argnames=("mesh",), donate_argnums=(3,))
decode_step.__doc__ = """One decode step: sample a token per row from ``state.logits``, run it through the model.

``decode_step(forward, config, params, state, sampler, stop_ids) -> state``; ``state`` is donated.
"""


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("mesh",), donate_argnums=(3,))
def decode_loop(forward, config, params, state: DecodeState, sampler: Sampler, stop_ids, mesh=None) -> DecodeState:
    """Decode until every row is done or the token budget ``state.tokens.shape[1]`` is spent."""
    budget = state.tokens.shape[1]
    cond = lambda s: (s.step < budget) & ~jnp.all(s.done)
    return jax.lax.while_loop(cond, lambda s: _step(forward, config, params, s, sampler, stop_ids, mesh), state)


def _on_mesh(model, mesh):
    """``model`` with its params on ``mesh`` (``model.shard(mesh)``; a model without it: replicated)."""
    if mesh is None:
        return model
    if hasattr(model, "shard"):
        return model.shard(mesh)
    params = sharding.place(model.params, jax.tree.map(lambda x: (None,) * np.ndim(x), model.params), mesh)
    return SimpleNamespace(config=model.config, params=params, forward=model.forward, tokenizer=model.tokenizer)


def _setup(model, prompts, max_new_tokens, sampler, n, seed, stop_tokens, mesh=None):
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = _check_prompts(model, prompts, max_new_tokens)
    g = len(ids)
    sampler = Sampler.greedy() if sampler is None else sampler
    sampler.validate()
    sampler = sampler.broadcast((g, n)).reshape((g * n,))
    tokens, start = left_pad(ids, model.config.pad_id, bucket(max(map(len, ids))))
    tokens, start = np.repeat(tokens, n, axis=0), np.repeat(start, n)
    stops = sorted(set(model.config.eos_ids) | set(stop_tokens or ()))
    stop_ids = jnp.asarray(stops or [-1], jnp.int32)
    keys = rollout_keys(seed, ids, n)
    if mesh is not None:  # rows split over the data axis; every host passes the same global values
        row, (fields, tree) = ("rollouts",), jax.tree.flatten(sampler)
        tokens, start, keys, fields, stop_ids = sharding.place(
            (tokens, start, keys, fields, stop_ids), (("rollouts", None), row, row, [row] * len(fields), (None,)), mesh)
        sampler = jax.tree.unflatten(tree, fields)
    state = prefill(model.forward, model.config, model.params, tokens, start, keys,
                    max_new_tokens=max_new_tokens, mesh=mesh)
    return g, sampler, stop_ids, state


def generate(model, prompts, *, max_new_tokens: int, sampler: Sampler | None = None, n: int = 1,
             seed: int = 0, stop_tokens=None, mesh=None) -> Rollouts:
    """Generate ``n`` rollouts for each prompt.

    ``model`` has ``config``, ``params``, ``forward`` and ``tokenizer`` (a :class:`models.Model`
    or a fake with the same fields). ``prompts`` is a list of token-id lists (any lengths) or
    of strings when the model has a tokenizer. Rows stop after an EOS or any of ``stop_tokens``
    (which is kept as the row's last token). Rollout ``r`` of a prompt draws from
    ``fold_in(fold_in(fold_in(key(seed), prompt_id), r), step)``, so it is the same whatever
    else is in the batch. ``sampler`` defaults to greedy.

    ``mesh`` (``sharding.make_mesh(...)``) shards the work: params by their logical axes
    (tensor parallel), rollouts and their cache over the ``data`` axis; results are the same
    tokens as on one device and come back replicated on every host. On several hosts every
    host calls ``generate`` with the same global prompts (``sharding.gather_prompts``).
    """
    model = _on_mesh(model, mesh)
    g, sampler, stop_ids, state = _setup(model, prompts, max_new_tokens, sampler, n, seed, stop_tokens, mesh)
    state = decode_loop(model.forward, model.config, model.params, state, sampler, stop_ids, mesh=mesh)
    if mesh is not None:  # the results, replicated so that every host can read them
        state = dataclasses.replace(state, **sharding.replicate(
            {f: getattr(state, f) for f in ("tokens", "lengths", "logprobs", "sample_logprobs")}, mesh))
    shape = (g, n, max_new_tokens)
    out = Rollouts(tokens=state.tokens.reshape(shape), lengths=state.lengths.reshape(g, n),
                   logprobs=state.logprobs.reshape(shape), sample_logprobs=state.sample_logprobs.reshape(shape))
    if model.tokenizer is not None:
        out.text = decode_text(model.tokenizer, out, set(np.asarray(stop_ids).tolist()))
    return out


def decode_text(tokenizer, rollouts: Rollouts, stop_ids=()) -> list[list[str]]:
    """Decode each rollout's tokens up to its length, dropping a final stop token."""
    tokens, lengths = np.asarray(rollouts.tokens), np.asarray(rollouts.lengths)
    def one(row, length):
        ids = row[:length].tolist()
        return tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids)
    return [[one(tokens[g, r], lengths[g, r]) for r in range(tokens.shape[1])] for g in range(tokens.shape[0])]


def stream(model, prompt, *, max_new_tokens: int, sampler: Sampler | None = None, seed: int = 0,
           stop_tokens=None):
    """Yield the tokens of one rollout of one prompt as they are produced (same draws as ``generate``)."""
    _, sampler, stop_ids, state = _setup(model, [prompt], max_new_tokens, sampler, 1, seed, stop_tokens)
    for _ in range(max_new_tokens):
        state = decode_step(model.forward, model.config, model.params, state, sampler, stop_ids)
        token = int(state.tokens[0, state.step - 1])
        yield token
        if bool(state.done[0]):
            return
