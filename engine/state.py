"""The decoding state: G prompts x N rollouts, their tokens, keys, two-block KV cache and tracks.

Rollout ``r`` of prompt ``g`` is row ``g*N + r`` (B = G*N rows). Every per-slot array is
aligned with the rollout block of the cache: slot ``s`` of a row holds a real token where
``cache.valid[row, s]``. A row is *live* unless it is ``done`` (finished for good: an EOS or stop
token, or no token could be drawn) or ``paused`` (it ended a step with a step delimiter; the
next ``decode`` continues it).

A *track* is another model that rides along (a reward model, a draft, a mixture's amateur):
its own two-block cache in the same slots, fed every token the policy draws or appends, and
its output at each row's latest token. The state holds arrays only: the verbs that run models
(``decode``, ``append``, ``rewind``) are given the policy and its tracks.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from engine.cache import KVCache, fit_slots
from sampling.sampler import Context


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Track:
    cache: KVCache     # the track model's own prefix + rollout blocks, slot-aligned with the policy's
    out: jax.Array     # f32 [B, V] next-token logits (a language model) or [B] score at the latest token (reward)
    first: jax.Array   # f32 [G, ...] ``out`` after the prompt alone (what a rewind to 0 tokens restores)

    def axes(self) -> "Track":
        out = ("rollouts", "vocab")[:self.out.ndim]
        return Track(cache=self.cache.axes(), out=out, first=("prefix", "vocab")[:self.first.ndim])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    done: jax.Array             # bool [B]      finished for good: EOS / stop token, or nothing drawable
    paused: jax.Array           # bool [B]      ended a step with a step delimiter (the next decode continues)
    failed: jax.Array           # bool [B]      the model's logits held NaN or +inf: done there, without a token
    logits: jax.Array           # f32 [B, V]    next-token logits
    first: jax.Array            # f32 [G, V]    logits after the prompt alone (what a rewind to 0 restores)
    tokens: jax.Array           # int32 [B, S]  token in each rollout slot (pad where none)
    drawn: jax.Array            # bool [B, S]   slot holds a token the sampler drew (not appended)
    logprobs: jax.Array         # f32 [B, S]    model log-prob of each sampled token (before filters)
    sample_logprobs: jax.Array  # f32 [B, S]    proposal log-prob (after filters); 0 for greedy/appended
    fsms: jax.Array             # int32 [B, S]  constraint automaton state after each slot's token
    keys: jax.Array             # key [B]       per-rollout PRNG keys (its t-th token draws with fold_in(key, t))
    mu: jax.Array               # f32 [B]       Mirostat running estimate (NaN until it starts)
    fsm: jax.Array              # int32 [B]     constraint automaton state now (0: start)
    constraint: jax.Array       # int32 []      which constraint ``fsm`` belongs to (crc32 of its table; -1: none)
    prompt: jax.Array           # int32 [G, P]  the left-padded prompts (history for n-gram / repetition)
    cache: KVCache
    tracks: dict                # name -> Track

    def axes(self) -> "DecodeState":
        """Logical axis names of every field (for ``sharding``), shaped like the state."""
        row, rows = ("rollouts",), ("rollouts", "time")
        return DecodeState(done=row, paused=row, failed=row, logits=("rollouts", "vocab"), first=("prefix", "vocab"),
                           tokens=rows, drawn=rows, logprobs=rows, sample_logprobs=rows, fsms=rows, keys=row,
                           mu=row, fsm=row, constraint=(), prompt=("prefix", None), cache=self.cache.axes(),
                           tracks={k: t.axes() for k, t in self.tracks.items()})

    def context(self, stop_ids) -> Context:
        """What the sampler's history-dependent filters read: each row's prompt + rollout tokens, and
        how often it drew each token (XLA drops what no filter of the chain reads)."""
        g, n = self.shape
        b, v = self.logits.shape
        prompt = jnp.repeat(self.prompt, n, axis=0, total_repeat_length=b)
        first = jnp.repeat(self.cache.pstart, n, total_repeat_length=b)
        prompt_valid = jnp.arange(self.prompt.shape[1])[None, :] >= first[:, None]
        counts = jnp.zeros((b, v), jnp.int32).at[jnp.arange(b)[:, None], self.tokens].add(self.drawn.astype(jnp.int32))
        return Context(counts=counts, history=jnp.concatenate([prompt, self.tokens], axis=1),
                       valid=jnp.concatenate([prompt_valid, self.cache.valid], axis=1), mu=self.mu,
                       stop_ids=stop_ids, fsm=self.fsm)

    def packed(self) -> "DecodeState":
        """The state with each row's real tokens moved to its first slots, in order (``cache.valid``
        then holds ``length`` leading slots): every per-slot array and the KV of the policy and every
        track move along, nothing is recomputed (positions count tokens, not slots, so the rows decode
        on as before). The slot counter ``cache.index`` is left as it is: a caller that packs rows to
        reuse their free slots sets it."""
        order = jnp.argsort(~self.cache.valid, axis=1, stable=True)          # real slots first, in order
        return self._per_slot(lambda name, x: jnp.take_along_axis(x, order, axis=1), lambda c: c.reorder(order))

    def resized(self, slots: int, pad_id: int) -> "DecodeState":
        """The state with ``slots`` rollout slots per row, for the policy and every track: the first
        ``slots`` of its own, then empty ones (``pad_id`` tokens); the slot counter no further than
        ``slots``. Narrowing keeps a row's tokens only where they sit in its first ``slots`` slots
        (after :meth:`packed`): a loop can decode in a wider block than the one it stores rows in."""
        fit = lambda name, x: fit_slots(x, slots, 1, pad_id if name == "tokens" else 0)
        return self._per_slot(fit, lambda c: c.resized(slots))

    def _per_slot(self, f, cache) -> "DecodeState":
        """The state with each per-slot array ``x`` (``tokens``, ``drawn``, ...) replaced by ``f(name, x)``
        and the policy's and every track's KV cache ``c`` by ``cache(c)``."""
        axes = self.axes()
        slots = {field.name: f(field.name, getattr(self, field.name))
                 for field in dataclasses.fields(self) if getattr(axes, field.name) == ("rollouts", "time")}
        return dataclasses.replace(self, **slots, cache=cache(self.cache),
                                   tracks={k: dataclasses.replace(t, cache=cache(t.cache)) for k, t in self.tracks.items()})

    def writing_at(self, index) -> "DecodeState":
        """The state with the rollout block's slot counter (the next write) at ``index``, for the policy
        and every track: after :meth:`packed`, the first slot no row uses."""
        move = lambda c: dataclasses.replace(c, index=index)
        return dataclasses.replace(self, cache=move(self.cache),
                                   tracks={k: dataclasses.replace(t, cache=move(t.cache)) for k, t in self.tracks.items()})

    def compacted(self) -> "DecodeState":
        """:meth:`packed`, with the next write after the longest row: the slots cut-back tokens and
        idle rows left are free again (``engine.compact``; traceable, for loops that compact inside jit)."""
        state = self.packed()
        return state.writing_at(jnp.max(state.cache.length))

    def history(self, tail: int | None = None) -> tuple[jax.Array, jax.Array]:
        """Each row's prompt (its last ``tail`` positions; all by default) then its rollout slots, as
        (tokens int32 [B, P' + S], valid bool [B, P' + S]): left padding and holes are not valid."""
        n, (b, p) = self.shape[1], (self.done.shape[0], self.prompt.shape[1])
        lo = 0 if tail is None else max(0, p - tail)
        repeat = lambda x: jnp.repeat(x, n, axis=0, total_repeat_length=b)
        valid = jnp.arange(lo, p)[None, :] >= self.cache.pstart[:, None]
        return (jnp.concatenate([repeat(self.prompt[:, lo:]), self.tokens], axis=1),
                jnp.concatenate([repeat(valid), self.cache.valid], axis=1))

    @property
    def live(self) -> jax.Array:
        """bool [B]: rows the next step draws for."""
        return ~self.done & ~self.paused

    @property
    def shape(self) -> tuple[int, int]:
        """(G prompts, N rollouts per prompt)."""
        g = self.cache.groups
        return g, self.done.shape[0] // g
