"""The one decode step, the loop around it, and feeding tokens to the policy and its tracks.

``_step`` draws one token per live row (from the policy's logits, or a mixture of the policy's
and some tracks' logits), writes it in the rollout slot ``cache.index``, and runs it through the
policy and every track (:func:`feed`). ``decode_loop`` repeats it inside one ``lax.while_loop``
until every row is done or paused, or the limit is reached. Nothing here checks its inputs: the
public verbs in ``engine.decode`` do, once.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

import sharding
from engine.state import DecodeState
from engine.stops import StopStrings, last_tokens, matches
from sampling import Sampler, sample


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mixture:
    """Draw from ``combine([policy logits, *tracks' logits], params)``: contrastive decoding, proxy
    tuning, classifier-free guidance over language-model tracks (``decode(..., mixture=...)``).

    ``combine``: a name from :data:`sampling.mixtures.MIXTURES` (``"contrastive"``, ``"proxy_tuning"``,
    ``"dexperts"``, ``"cfg"``) or a pure ``(logits_list, params) -> logits``; ``tracks``: the names of
    the tracks mixed with the policy, in ``combine``'s order after it; ``params``: the mixture's
    parameters (numbers, or arrays per prompt [G] or per rollout [G, N]; a name's defaults fill in).
    """
    combine: str | Callable = dataclasses.field(metadata=dict(static=True))
    tracks: tuple = dataclasses.field(metadata=dict(static=True))
    params: dict | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Decoding:
    """How one ``decode`` call draws, normalised by the verb: every field trusted by the step."""
    sampler: Sampler        # settings per row [B]
    stops: jax.Array        # int32 [E]    stop token ids (``[-1]``: none)
    steps: jax.Array        # int32 [D, L] step delimiters, right-aligned, -1 before a shorter one (D may be 0)
    mixture: Mixture | None  # resolved: a combine function, track names, params per row [B]
    constraint: jax.Array   # int32 []     crc32 tag of the sampler's constraint table (-1: none)
    strings: StopStrings | None = None   # stop strings' tables (None: none, and nothing is added to the step)
    max_length: jax.Array | None = None  # int32 [] a row holding this many tokens is done (None: no limit)


def write(state: DecodeState, pad_id: int, valid, at=None, **fields) -> DecodeState:
    """``state`` with the per-slot ``fields`` (``tokens``, ``drawn``, ... each [B, T]) written at slots
    ``at ..`` (default ``cache.index``) where ``valid`` [B, T] (elsewhere the pad id, 0, False)."""
    at = (0, state.cache.index if at is None else at)
    put = lambda k, x: jax.lax.dynamic_update_slice(
        getattr(state, k), jnp.where(valid, x, pad_id if k == "tokens" else 0).astype(getattr(state, k).dtype), at)
    return dataclasses.replace(state, **{k: put(k, x) for k, x in fields.items()})


def feed(stack, params, state: DecodeState, tokens, valid) -> DecodeState:
    """``state`` with ``tokens`` int32 [B, T] (real where ``valid`` [B, T], a prefix of each row) written
    at slots ``cache.index ..`` of the policy's and every track's cache; a row given a token has the
    models' outputs (logits, scores) at its last one, the others keep theirs. ``stack``: the policy's
    then each track's ``(name, step function, config)`` (static); ``params``: theirs, in that order."""
    has, last = jnp.any(valid, axis=1), jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)

    def run(step, config, p, cache, old):
        one = tokens.shape[1] == 1                                                 # a decode step: no gather
        out, cache = step(config, p, tokens, None, cache, last_only=one)          # [B, ...] or [B, T, ...]
        if not one:
            out = jnp.take_along_axis(out, last.reshape((-1, 1) + (1,) * (out.ndim - 2)), axis=1)[:, 0]
        return jnp.where(has.reshape((-1,) + (1,) * (old.ndim - 1)), out, old), cache.keep(valid)

    (_, forward, config), *tracks = stack
    logits, cache = run(forward, config, params[0], state.cache, state.logits)
    new = {}
    for (name, step, track_config), p in zip(tracks, params[1:]):
        track = state.tracks[name]
        out, track_cache = run(step, track_config, p, track.cache, track.out)
        new[name] = dataclasses.replace(track, out=out, cache=track_cache)
    return dataclasses.replace(state, logits=logits, cache=cache, tracks=new)


def ends_step(state: DecodeState, tok, steps):
    """bool [B]: ``tok`` [B] completes one of the delimiters ``steps`` [D, L] after each row's last tokens
    (its own tokens only: a delimiter does not reach into the prompt)."""
    last = last_tokens(state, tok, steps.shape[1], prompt=False)[:, None, :]       # [B, 1, L] latest first
    want = steps[None, :, ::-1]                                                    # [1, D, L] likewise
    return jnp.any(jnp.all((want == -1) | (want == last), axis=2), axis=1)


def _step(stack, params, state: DecodeState, how: Decoding, mesh=None) -> DecodeState:
    # step t of a rollout (its t-th token, appended ones included) draws with fold_in(key, t): not the
    # shared slot, which an append advances by the padded width of every row's text
    keys = jax.vmap(jax.random.fold_in)(state.keys, state.cache.length)
    logits = state.logits
    if how.mixture is not None:
        mix = how.mixture
        logits = mix.combine([logits] + [state.tracks[t].out for t in mix.tracks], mix.params)
    broken = state.live & jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)   # a broken model or overflow
    draw = sample(logits, how.sampler, keys, state.context(how.stops))
    live = state.live & ~draw.dead & ~broken             # a dead or broken row ends here, without a token
    tok = jnp.where(live, draw.tokens, stack[0][2].pad_id)
    stop = live & jnp.isin(tok, how.stops)
    if how.strings is not None:                          # the row's text now ends with a stop string
        stop |= live & matches(how.strings, last_tokens(state, tok, how.strings.window))
    if how.max_length is not None:                       # the row reaches its own limit: done, mid-step if need be
        stop |= live & (state.cache.length + 1 >= how.max_length)
    pause = live & ~stop & ends_step(state, tok, how.steps) if how.steps.shape[0] else jnp.zeros_like(live)
    fsm = jnp.where(live, draw.fsm, state.fsm)
    state = dataclasses.replace(
        state, done=state.done | (state.live & draw.dead) | broken | stop, paused=state.paused | pause,
        failed=state.failed | broken, mu=jnp.where(live, draw.mu, state.mu), fsm=fsm)
    column = lambda x: x[:, None]
    state = write(state, stack[0][2].pad_id, column(live), tokens=column(tok), drawn=column(live),
                  logprobs=column(draw.logprobs), sample_logprobs=column(draw.sample_logprobs), fsms=column(fsm))
    state = feed(stack, params, state, tok[:, None], live[:, None])
    return sharding.constrain(state, state.axes(), mesh)


decode_step = jax.jit(_step, static_argnums=(0,), static_argnames=("mesh",), donate_argnums=(2,))
decode_step.__doc__ = """One decode step: sample a token per live row, run it through the policy and its tracks.

``decode_step(stack, params, state, how) -> state`` (``stack``, ``params`` as in :func:`feed`; ``how``
a :class:`Decoding`); ``state`` is donated.
"""


@partial(jax.jit, static_argnums=(0,), static_argnames=("mesh",), donate_argnums=(2,))
def decode_loop(stack, params, state: DecodeState, how: Decoding, limit, mesh=None) -> DecodeState:
    """Resume every paused row and decode until every row is done or paused again, or the rollout
    block has ``limit`` slots used. A constraint other than the one ``state.fsm`` follows starts
    afresh (its automaton state 0), matching the text from here on."""
    cond = lambda s: (s.cache.index < limit) & jnp.any(s.live)
    return jax.lax.while_loop(cond, lambda s: _step(stack, params, s, how, mesh), resume(state, how))


def resume(state: DecodeState, how: Decoding) -> DecodeState:
    """``state`` as a decode call starts it: paused rows live again (but a row already at the call's
    ``max_length`` is done), and a constraint other than the one ``state.fsm`` follows started afresh
    (its automaton state 0)."""
    tagged = how.constraint >= 0
    fresh = tagged & (state.constraint != how.constraint)
    done = state.done if how.max_length is None else state.done | (state.cache.length >= how.max_length)
    return dataclasses.replace(state, done=done, paused=jnp.zeros_like(state.paused),
                               fsm=jnp.where(fresh, 0, state.fsm), constraint=jnp.where(tagged, how.constraint, state.constraint))
