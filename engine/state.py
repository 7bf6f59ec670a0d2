"""The decoding state: G prompts x N rollouts, their tokens, keys and two-block KV cache."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from engine.cache import KVCache
from sampling.sampler import Context


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    done: jax.Array             # bool [B]      row has emitted a stop token (B = G*N)
    logits: jax.Array           # f32 [B, V]    next-token logits
    tokens: jax.Array           # int32 [B, S]  token in each rollout slot (pad where none)
    logprobs: jax.Array         # f32 [B, S]    model log-prob of each sampled token (before filters)
    sample_logprobs: jax.Array  # f32 [B, S]    proposal log-prob (after filters); 0 for greedy/appended
    keys: jax.Array             # key [B]       per-rollout PRNG keys (its t-th token draws with fold_in(key, t))
    counts: jax.Array           # int32 [B, V]  how often each token was generated (penalties)
    mu: jax.Array               # f32 [B]       Mirostat running estimate (NaN until it starts)
    fsm: jax.Array              # int32 [B]     constraint automaton state (0: start)
    constraint: jax.Array       # int32 []      which constraint ``fsm`` belongs to (crc32 of its table; -1: none)
    prompt: jax.Array           # int32 [G, P]  the left-padded prompts (history for n-gram / repetition)
    cache: KVCache

    def axes(self) -> "DecodeState":
        """Logical axis names of every field (for ``sharding``), shaped like the state."""
        row, rows = ("rollouts",), ("rollouts", "time")
        return DecodeState(done=row, logits=("rollouts", "vocab"), tokens=rows, logprobs=rows,
                           sample_logprobs=rows, keys=row, counts=("rollouts", "vocab"), mu=row,
                           fsm=row, constraint=(), prompt=("prefix", None), cache=self.cache.axes())

    def context(self, stop_ids) -> Context:
        """What the sampler's history-dependent filters read: each row's prompt + rollout tokens."""
        g, n = self.shape
        prompt = jnp.repeat(self.prompt, n, axis=0, total_repeat_length=g * n)
        first = jnp.repeat(self.cache.pstart, n, total_repeat_length=g * n)
        prompt_valid = jnp.arange(self.prompt.shape[1])[None, :] >= first[:, None]
        return Context(counts=self.counts, history=jnp.concatenate([prompt, self.tokens], axis=1),
                       valid=jnp.concatenate([prompt_valid, self.cache.valid], axis=1), mu=self.mu,
                       stop_ids=stop_ids, fsm=self.fsm)

    @property
    def shape(self) -> tuple[int, int]:
        """(G prompts, N rollouts per prompt)."""
        g = self.cache.groups
        return g, self.done.shape[0] // g
