"""Samplers: per-row settings as a pytree, one draw per rollout from its own key."""
from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from sampling import filters

_FIELDS = {"temperature": (np.float32, 0.0), "top_k": (np.int32, 0), "top_p": (np.float32, 1.0)}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampler:
    """Sampling settings; every field is an array broadcastable to the rows ([], [G] or [G, N]).

    ``temperature == 0`` is greedy (the default), ``top_k == 0`` and ``top_p == 1`` are off.
    Filters apply in the order temperature, top-k, top-p (as ``transformers`` does).
    """
    temperature: jax.Array = 0.0  # f32 [...]
    top_k: jax.Array = 0          # int32 [...]
    top_p: jax.Array = 1.0        # f32 [...]

    def __post_init__(self):
        for name, (dtype, _) in _FIELDS.items():
            value = getattr(self, name)
            # python numbers / lists / numpy become arrays; anything else (tracers, device arrays,
            # the logical-axis tuples of sharding annotations) is a pytree leaf left as it is
            if isinstance(value, (int, float, list, np.ndarray, np.generic)):
                object.__setattr__(self, name, np.asarray(value, dtype))
        self.validate()

    def validate(self):
        """Raise ``ValueError`` on settings outside their range (concrete values only)."""
        checks = {"temperature": (lambda t: t >= 0, "must be >= 0"),
                  "top_k": (lambda k: k >= 0, "must be >= 0"),
                  "top_p": (lambda p: (p > 0) & (p <= 1), "must be in (0, 1]")}
        for name, (ok, why) in checks.items():
            value = getattr(self, name)
            if isinstance(value, np.ndarray) and not np.all(ok(value)):
                raise ValueError(f"{name} {why}, got {value.tolist()}")

    @classmethod
    def greedy(cls) -> "Sampler":
        return cls()

    def broadcast(self, shape) -> "Sampler":
        """Every field broadcast to ``shape`` (e.g. the rollout axes [G, N]); a field of shape [G]
        gives each prompt's rollouts that prompt's setting (trailing axes are added, not leading)."""
        def one(x):
            x = jnp.asarray(x)
            return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(shape) - x.ndim)), shape)
        return jax.tree.map(one, self)

    def reshape(self, shape) -> "Sampler":
        return jax.tree.map(lambda x: x.reshape(shape), self)

    def filter(self, logits):
        """Apply this sampler's filters to ``logits`` [..., V] (proposal logits, -inf removed)."""
        x = filters.temperature(logits, self.temperature)
        x = jax.lax.cond(jnp.any(self.top_k > 0), filters.top_k, lambda x, _: x, x, self.top_k)
        return jax.lax.cond(jnp.any(self.top_p < 1), filters.top_p, lambda x, _: x, x, self.top_p)


def sample(logits, sampler: Sampler, keys):
    """Draw one token per row.

    logits fp32 [B, V]; sampler fields [B]; keys [B] typed PRNG keys. Returns ``(tokens int32
    [B], logprobs [B], sample_logprobs [B])``: the model's log-probability of the token before
    any filter, and the proposal's after filters (0 for greedy rows, a point mass).
    """
    greedy = sampler.temperature == 0
    proposal = sampler.filter(logits)
    drawn = jax.vmap(jax.random.categorical)(keys, proposal)
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)
    pick = lambda lp: jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]
    logprobs = pick(jax.nn.log_softmax(logits, axis=-1))
    sample_logprobs = jnp.where(greedy, 0.0, pick(jax.nn.log_softmax(proposal, axis=-1)))
    return tokens, logprobs, sample_logprobs


def prompt_id(tokens) -> int:
    """A stable 31-bit id of a prompt's token ids (crc32), so its keys ignore batch position."""
    return zlib.crc32(np.asarray(tokens, np.int32).tobytes()) & 0x7FFFFFFF


def rollout_keys(seed: int, prompts, n: int) -> jax.Array:
    """Keys [G*N]: ``fold_in(fold_in(key(seed), prompt_id), rollout)``.

    A rollout's randomness depends only on the seed, its prompt's tokens and its rollout
    index — never on batch composition, padding or sharding. Step ``t`` uses
    ``fold_in(key, t)``.
    """
    base = jax.random.key(seed)
    ids = jnp.asarray([prompt_id(p) for p in prompts for _ in range(n)], jnp.uint32)
    rollout = jnp.tile(jnp.arange(n, dtype=jnp.uint32), len(prompts))
    return jax.vmap(lambda i, r: jax.random.fold_in(jax.random.fold_in(base, i), r))(ids, rollout)
