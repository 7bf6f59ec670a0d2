"""Samplers: an ordered chain of filters and a draw, per-row settings in a pytree.

``Sampler(temperature=0.7, top_p=0.9, repetition_penalty=1.1)`` holds every setting as an
array broadcastable to the rollouts ([], [G] or [G, N]), so one compiled program serves rows
with different values; the *chain* (which filters exist) is static. Filters apply in the
order of :data:`ORDER` (``transformers``' order): processors on every row, then — on sampled
rows only (``temperature > 0``) — temperature and the truncations. Greedy rows take the
argmax of the processed logits.
"""
from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from sampling import checks, filters

F32, I32 = np.float32, np.int32
# name: (dtype, value that turns it off); what each may be: sampling.checks.RANGES
SETTINGS = {
    "repetition_penalty": (F32, 1.0),
    "presence_penalty": (F32, 0.0),
    "frequency_penalty": (F32, 0.0),
    "no_repeat_ngram": (I32, 0),
    "min_new_tokens": (I32, 0),
    "temperature": (F32, 1.0),
    "top_k": (I32, 0),
    "top_p": (F32, 1.0),
    "min_p": (F32, 0.0),
    "typical": (F32, 1.0),
    "epsilon": (F32, 0.0),
    "eta": (F32, 0.0),
    "mirostat": (F32, 0.0),
    "mirostat_lr": (F32, 0.1),
    "min_keep": (I32, 1),
}
PROCESSORS = ("logit_bias", "repetition_penalty", "presence_penalty", "frequency_penalty", "no_repeat_ngram",
              "allowed_tokens", "banned_tokens", "min_new_tokens", "constraint")    # bias first, as transformers
WARPERS = ("temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta", "mirostat")
ORDER = PROCESSORS + WARPERS
TOKEN_LISTS = ("logit_bias", "allowed_tokens", "banned_tokens", "constraint")   # shared by all rows of a call
TOP_P_BUDGET = "top_p_budget"   # 1 - top_p per row, computed from the value given (filters.top_p_budget)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
    """What history-dependent filters read, for rows [B]."""
    counts: jax.Array     # int32 [B, V] how often each token was generated
    history: jax.Array    # int32 [B, L] prompt + rollout tokens
    valid: jax.Array      # bool [B, L]  which of them are real
    mu: jax.Array         # f32 [B]      Mirostat running estimate (NaN: not started)
    stop_ids: jax.Array   # int32 [E]    tokens suppressed by min_new_tokens
    fsm: jax.Array        # int32 [B]    state of the constraint automaton (0: its start)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Draw:
    """One sampled token per row and what it changes."""
    tokens: jax.Array           # int32 [B]
    logprobs: jax.Array         # f32 [B] the model's log-prob of the token (before filters)
    sample_logprobs: jax.Array  # f32 [B] the proposal's (after filters); 0 for greedy rows
    mu: jax.Array               # f32 [B] updated Mirostat estimate
    fsm: jax.Array              # int32 [B] constraint automaton state after the token
    dead: jax.Array             # bool [B] no token could be drawn: the filters left every logit -inf


@jax.tree_util.register_pytree_node_class
class Sampler:
    """Sampling settings. ``Sampler()`` samples at temperature 1; ``Sampler.greedy()`` (or
    ``temperature=0``) is greedy. Keyword settings (off values in brackets):

    ``temperature`` [1; 0 = greedy], ``top_k`` [0], ``top_p`` [1], ``min_p`` [0],
    ``typical`` [1], ``epsilon`` [0], ``eta`` [0], ``min_keep`` [1] (the ``min_tokens_to_keep``
    of the truncations), ``mirostat`` [0] (Mirostat v2 target surprise tau, in bits) with
    ``mirostat_lr`` [0.1], ``repetition_penalty`` [1], ``presence_penalty`` [0],
    ``frequency_penalty`` [0], ``no_repeat_ngram`` [0], ``min_new_tokens`` [0] — each a number
    or an array per prompt [G] / per rollout [G, N] — and, shared by all rows,
    ``logit_bias`` ({token: bias}), ``allowed_tokens`` and ``banned_tokens`` (token ids; an
    empty ``logit_bias`` or ``banned_tokens`` is none), and ``constraint``: a token automaton —
    an object with ``table``, int [states, V], the next state after each token from each state,
    -1 where the token is not allowed; every row starts in state 0 (see ``sampling.constraints``).
    Out-of-range values are a ``ValueError`` (``sampling.checks``).
    """

    def __init__(self, **settings):
        values, self.accepting = checks.sampler_values({"temperature": 1.0} | settings, SETTINGS, ORDER)
        if "top_p" in settings:                          # 1 - p from the value given, not its float32
            values[TOP_P_BUDGET] = filters.top_p_budget(settings["top_p"])
        self.values = values
        self.chain = tuple(n for n in ORDER if n in values and (n in TOKEN_LISTS or n == "temperature"
                                                                  or not _all_off(n, values[n])))
        # static bounds for the fast top-k path: the largest k (and min_keep) of any row
        keep = int(np.max(values.get("min_keep", 1)))
        self.caps = (max(int(np.max(values.get("top_k", 0))), keep), keep)

    @classmethod
    def greedy(cls) -> "Sampler":
        return cls(temperature=0.0)

    def __getattr__(self, name):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        if name in SETTINGS:
            return np.asarray(SETTINGS[name][1], SETTINGS[name][0])
        raise AttributeError(name)

    def __repr__(self):
        shown = {k: v for k, v in self.values.items() if k != TOP_P_BUDGET}
        return f"Sampler({', '.join(f'{k}={np.asarray(v).tolist()!r}' for k, v in shown.items())})"

    def tree_flatten(self):
        keys = tuple(sorted(self.values))
        return tuple(self.values[k] for k in keys), (keys, self.chain, self.caps)

    @classmethod
    def tree_unflatten(cls, aux, children):
        out = object.__new__(cls)
        keys, out.chain, out.caps = aux
        out.values = dict(zip(keys, children))
        out.accepting = None
        return out

    def _map_rows(self, fn) -> "Sampler":
        out = object.__new__(Sampler)
        out.chain, out.caps, out.accepting = self.chain, self.caps, self.accepting
        out.values = {k: v if k in TOKEN_LISTS else fn(v) for k, v in self.values.items()}
        return out

    def broadcast(self, shape) -> "Sampler":
        """Per-row settings broadcast to ``shape`` (e.g. [G, N]); a setting of shape [G] gives each
        prompt's rollouts that prompt's value (trailing axes are added, not leading)."""
        return self._map_rows(lambda x: fit_rows(x, shape, "a sampler setting"))

    def check_vocab(self, vocab: int, stop_ids=None) -> "Sampler":
        """``self``, or a ``ValueError`` where the settings cannot work with a ``vocab``-token model
        whose rows stop at ``stop_ids``: a token list naming an id outside ``[0, vocab)``; lists
        that leave no token to draw (in some reachable state of the constraint, or, under
        ``min_new_tokens``, no token but a stop token); and for a compiled constraint (one that
        knows its matches) a stop token it allows before the text is a full match, or a state
        from which no stop token can ever be drawn (its EOS is not one of the model's stop ids)."""
        checks.check_vocab(self.values, self.accepting, vocab, stop_ids)
        return self

    def take(self, prompts, rollouts=slice(None)) -> "Sampler":
        """Settings broadcast to [G, N] (:meth:`broadcast`) restricted to the prompts ``prompts``
        (indices, repeats allowed) and the rollouts ``rollouts`` (an index or slice)."""
        idx = np.asarray(prompts, np.int64)
        return self._map_rows(lambda x: x[idx][:, rollouts])

    def reshape(self, shape) -> "Sampler":
        return self._map_rows(lambda x: x.reshape(shape))

    @property
    def row_axes(self) -> "Sampler":
        """Logical axes of every field (per-row settings on ``rollouts``, token lists replicated)."""
        out = object.__new__(Sampler)
        out.chain, out.caps, out.accepting = self.chain, self.caps, self.accepting
        out.values = {k: jax.tree.map(lambda a: (None,) * np.ndim(a), v) if k in TOKEN_LISTS else ("rollouts",)
                      for k, v in self.values.items()}
        return out

    def process(self, logits, ctx: Context):
        """The processors of the chain, for every row."""
        v = self.values
        for name in self.chain:
            if name == "repetition_penalty":
                seen = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None],
                                                        jnp.where(ctx.valid, ctx.history, logits.shape[-1])
                                                        ].set(True, mode="drop")
                logits = filters.repetition_penalty(logits, v[name], seen)
            elif name in ("presence_penalty", "frequency_penalty"):
                logits = getattr(filters, name)(logits, v[name], ctx.counts)
            elif name == "no_repeat_ngram":
                logits = filters.no_repeat_ngram(logits, v[name], ctx.history, ctx.valid)
            elif name == "logit_bias":
                logits = filters.logit_bias(logits, *v[name])
            elif name in ("allowed_tokens", "banned_tokens"):
                logits = getattr(filters, name)(logits, v[name])
            elif name == "min_new_tokens":
                logits = filters.min_new_tokens(logits, v[name], jnp.sum(ctx.counts, axis=-1), ctx.stop_ids)
            elif name == "constraint":
                logits = jnp.where(jnp.asarray(v[name])[ctx.fsm] >= 0, logits, filters.NEG_INF)
        return logits

    def warp(self, logits, mu=None):
        """Temperature and the truncations of the chain (the proposal of sampled rows).

        With top-k in the chain, the truncations after it run on each row's top-k candidates
        only, scattered back to [B, V]; when a row could differ from the full computation (top-k
        off, or ties straddling the candidate cut) every row takes the full path. ``logits`` may
        be a function returning them: the full path then recomputes them from its inputs, which
        spares XLA a [B, V] copy kept for it every step (~5% of a decode step on CPU).
        """
        v = self.values
        make = logits if callable(logits) else (lambda given=logits: given)
        scaled = lambda: filters.temperature(make(), v["temperature"]) if "temperature" in self.chain else make()
        rest = [n for n in self.chain if n in WARPERS and n != "temperature"]
        if "top_k" not in rest:
            return self._truncate(scaled(), rest, mu)
        logits = scaled()
        cap = min(self.caps[0], logits.shape[-1] - 1)
        vals, ids = top_k(logits, cap + 1)
        on = jnp.broadcast_to(v["top_k"], logits.shape[:-1]) > 0
        k = jnp.broadcast_to(jnp.maximum(v["top_k"], v.get("min_keep", 1)), logits.shape[:-1])
        kth = jnp.take_along_axis(vals, jnp.clip(k - 1, 0, cap - 1)[..., None], axis=-1)
        exact = jnp.all(on & (k <= cap) & (vals[..., cap] < kth[..., 0]))

        def candidates():     # sorted, so top-k is a compare; the later truncations see only its survivors
            out = self._truncate(jnp.where(vals[..., :cap] >= kth, vals[..., :cap], filters.NEG_INF), rest[1:], mu)
            rows = jnp.arange(ids.shape[0])[:, None]
            return jnp.full_like(logits, filters.NEG_INF).at[rows, ids[..., :cap]].set(out)

        return jax.lax.cond(exact, candidates, lambda: self._truncate(scaled(), rest, mu))

    def _truncate(self, logits, names, mu):
        v = self.values
        keep = 1 if self.caps[1] == 1 else v["min_keep"]        # a static 1 takes the filters' fast paths
        for name in names:
            if name == "mirostat":
                start = 2 * v["mirostat"]
                mu = start if mu is None else jnp.where(jnp.isnan(mu), start, mu)
                logits = jnp.where((v["mirostat"] > 0)[..., None], filters.mirostat(logits, mu), logits)
            elif name == "top_p":
                logits = filters.top_p(logits, v[name], keep, v[TOP_P_BUDGET])
            else:
                logits = getattr(filters, name)(logits, v[name], keep)
        return logits

    def filter(self, logits, ctx: Context | None = None):
        """Processors then warpers: the proposal logits of sampled rows."""
        return self.warp((lambda: self.process(logits, ctx)) if ctx is not None else logits,
                         None if ctx is None else ctx.mu)


def top_k(x, k: int, block: int = 32):
    """``lax.top_k(x, k)`` over the last axis of ``x`` [B, V]: the same values and ids, ties in the
    same order (lower id first). XLA CPU's top_k costs ~1.5 ns per element, ~20x a max: this takes
    the maximum of each block of ``block`` tokens, finds the ``k`` largest block maxima (their
    blocks hold the ``k`` largest values) and runs top_k only on those blocks' tokens, those below
    the ``k``-th largest block maximum masked (they cannot be among the ``k`` largest)."""
    b, v = x.shape
    if 2 * k * block >= v:
        return _kept_top_k(x, k)
    x = jnp.pad(x, ((0, 0), (0, -v % block)), constant_values=-jnp.inf).reshape(b, -1, block)
    maxima, blocks = _kept_top_k(jnp.max(x, axis=-1), k)
    blocks = jnp.sort(blocks, axis=-1)                         # vocabulary order: ties as lax.top_k
    near = jnp.take_along_axis(x, blocks[..., None], axis=1).reshape(b, -1)
    vals, at = _kept_top_k(jnp.where(near >= maxima[:, -1:], near, -jnp.inf), k)
    return vals, jnp.take_along_axis(blocks, at // block, axis=-1) * block + at % block


def _kept_top_k(x, k: int):
    """``lax.top_k`` behind barriers, one per output: XLA would turn "top_k, then index its values"
    into a full sort. (One barrier over the pair crashed XLA's TopkDecomposer — a process abort —
    when the vocabulary axis was sharded over a tensor axis alone.)"""
    vals, ids = jax.lax.top_k(x, k)
    return jax.lax.optimization_barrier(vals), jax.lax.optimization_barrier(ids)


def fit_rows(x, shape, what: str) -> jax.Array:
    """``x`` ([], [G] or [G, N]) broadcast to ``shape`` (G, N), trailing axes added (a value per prompt
    goes to each of its rollouts), or a ``ValueError`` naming ``what``."""
    x = jnp.asarray(x)
    if x.ndim > len(shape) or any(a not in (1, b) for a, b in zip(x.shape, shape)):
        raise ValueError(f"{what} of shape {x.shape} does not fit rollouts {tuple(shape)}")
    return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(shape) - x.ndim)), shape)


def _all_off(name, value) -> bool:
    return isinstance(value, np.ndarray) and bool(np.all(value == SETTINGS[name][1]))


def argmax(x, top=None):
    """``jnp.argmax(x, axis=-1)`` (lowest index among equal maxima) for rows without NaN, computed as a
    max (``top``, [..., 1], when the caller has it) then the lowest index reaching it: two plain
    reductions, ~6x faster than XLA CPU's variadic argmax reduce over [64, 32000]."""
    top = jnp.max(x, axis=-1, keepdims=True) if top is None else top
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1)


def sample(logits, sampler: Sampler, keys, ctx: Context) -> Draw:
    """Draw one token per row: logits fp32 [B, V], sampler fields [B], keys [B] typed PRNG keys.

    Greedy rows (temperature 0) take the argmax of the processed logits; the others draw from
    the proposal (processed, then warped). A row whose processed logits are all -inf (its history
    made the filters ban every token) is ``dead``: the engine ends it there, without a token. The :class:`Draw` has the model's log-probability of
    each token before any filter and the proposal's after them (0 for greedy rows, a point mass).
    """
    greedy = jnp.asarray(sampler.temperature) == 0
    processed = sampler.process(logits, ctx)
    top = jnp.max(processed, axis=-1, keepdims=True)
    dead = top[:, 0] == filters.NEG_INF                    # e.g. no_repeat_ngram used up an allow-list
    proposal = sampler.warp(lambda: sampler.process(logits, ctx), ctx.mu)
    drawn = draw(keys, proposal)
    tokens = jnp.where(greedy, argmax(processed, top), drawn).astype(jnp.int32)
    pick = lambda lp: jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]
    logprobs = pick(jax.nn.log_softmax(logits, axis=-1))
    sample_logprobs = jnp.where(greedy, 0.0, pick(jax.nn.log_softmax(proposal, axis=-1)))
    mu, fsm = after(sampler, tokens, sample_logprobs, ctx.mu, ctx.fsm)
    return Draw(tokens=tokens, logprobs=logprobs, sample_logprobs=sample_logprobs, mu=mu, fsm=fsm, dead=dead)


def after(sampler: Sampler, tokens, sample_logprobs, mu, fsm):
    """``(mu, fsm)`` [B] after each row takes ``tokens`` [B]: Mirostat's running estimate moved by the
    token's surprise under the proposal (``sample_logprobs``; greedy rows keep theirs) and the
    constraint automaton's state advanced by the token."""
    if "mirostat" in sampler.chain:
        greedy = jnp.asarray(sampler.temperature) == 0
        tau, lr = jnp.asarray(sampler.mirostat), jnp.asarray(sampler.mirostat_lr)
        current = jnp.where(jnp.isnan(mu), 2 * tau, mu)
        surprise = -sample_logprobs / jnp.log(2.0)
        mu = jnp.where((tau > 0) & ~greedy, current - lr * (surprise - tau), mu)
    if "constraint" in sampler.chain:
        fsm = jnp.asarray(sampler.values["constraint"])[fsm, tokens]
    return mu, fsm


def draw(keys, logits, block: int = 256):
    """One token per row from ``softmax(logits)`` [B, V] by inverse CDF with one uniform per row.

    Two levels (blocks of ``block`` tokens, then tokens within the chosen block) keep it to a few
    passes over the logits — on CPU far cheaper than a Gumbel draw per token. Tokens of zero
    probability are never drawn.
    """
    b, v = logits.shape
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.pad(p, ((0, 0), (0, -v % block))).reshape(b, -1, block)
    mass = jnp.sum(p, axis=-1)                                          # [B, blocks]
    cum = jnp.cumsum(mass, axis=-1)
    u = jax.vmap(jax.random.uniform)(keys) * cum[:, -1]
    last = lambda m: m.shape[-1] - 1 - jnp.argmax(m[..., ::-1] > 0, axis=-1)   # last nonzero entry
    chosen = jnp.minimum(jnp.sum(cum <= u[:, None], axis=-1), last(mass))
    inner = jnp.take_along_axis(p, chosen[:, None, None], axis=1)[:, 0]        # [B, block]
    before = jnp.take_along_axis(cum - mass, chosen[:, None], axis=1)[:, 0]
    frac = jnp.clip((u - before) / jnp.take_along_axis(mass, chosen[:, None], axis=1)[:, 0], 0.0, 1.0)
    cin = jnp.cumsum(inner, axis=-1)
    pos = jnp.minimum(jnp.sum(cin <= (frac * cin[:, -1])[:, None], axis=-1), last(inner))
    return chosen * block + pos


def prompt_id(tokens) -> int:
    """A stable 31-bit id of a prompt's token ids (crc32), so its keys ignore batch position."""
    return zlib.crc32(np.asarray(tokens, np.int32).tobytes()) & 0x7FFFFFFF


def rollout_keys(seed: int, prompts, n: int, first: int = 0) -> jax.Array:
    """Keys [G*N]: ``fold_in(fold_in(key(seed), prompt_id), rollout)`` for rollouts ``first .. first+n-1``.

    A rollout's randomness depends only on the seed, its prompt's tokens and its rollout
    index — never on batch composition, padding or sharding. Its ``t``-th token uses
    ``fold_in(key, t)``. ``key(seed)`` keeps 32 bits: a seed outside ``[0, 2**32)`` (any 64-bit
    one) is ``fold_in(key(low word), high word)``, so seeds 2**32 apart differ.
    """
    seed = int(seed) % 2 ** 64
    base = jax.random.key(seed & 0xFFFFFFFF)
    if seed >> 32:
        base = jax.random.fold_in(base, seed >> 32)
    ids = jnp.asarray([prompt_id(p) for p in prompts for _ in range(n)], jnp.uint32)
    rollout = jnp.tile(jnp.arange(first, first + n, dtype=jnp.uint32), len(prompts))
    return jax.vmap(lambda i, r: jax.random.fold_in(jax.random.fold_in(base, i), r))(ids, rollout)
