"""Minimum Bayes risk: the rollout with the highest mean utility against the others, on device."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from meta.common import extract, finish, setup
from meta.draw import draw
from meta.result import Result


def _masked(tokens, lengths, fill):
    t = tokens.shape[-1]
    return jnp.where(jnp.arange(t) < jnp.asarray(lengths)[..., None], tokens, fill)


def exact_match(a, la, b, lb):
    """1.0 when the two token sequences (up to their lengths) are equal."""
    same = jnp.all(_masked(a, la, -1) == _masked(b, lb, -1))
    return (same & (la == lb)).astype(jnp.float32)


def token_f1(a, la, b, lb, vocab: int = None):
    """Bag-of-tokens F1: 2 * |a ∩ b| / (|a| + |b|) (multiset overlap); two empty sequences score 1."""
    ma, mb = jnp.arange(a.shape[-1]) < la, jnp.arange(b.shape[-1]) < lb
    # multiset overlap: for each token of a, how many equal tokens of b, capped by its count in a
    eq = (a[:, None] == b[None, :]) & ma[:, None] & mb[None, :]
    in_b = eq.sum(1)                                                   # count in b of each a-token
    in_a = ((a[:, None] == a[None, :]) & ma[:, None] & ma[None, :]).sum(1)
    overlap = jnp.sum(jnp.where(ma, jnp.minimum(in_a, in_b) / jnp.maximum(in_a, 1), 0.0))
    total = la + lb
    return jnp.where(total == 0, 1.0, 2.0 * overlap / jnp.maximum(total, 1)).astype(jnp.float32)


def rouge_l(a, la, b, lb):
    """ROUGE-L F1: 2 * LCS(a, b) / (|a| + |b|); two empty sequences score 1."""
    a, b = _masked(a, la, -1), _masked(b, lb, -2)
    def row(prev, ai):                 # prev: LCS row of a[:i] vs b[:j], j = 1..T
        diag = jnp.concatenate([jnp.zeros((1,), prev.dtype), prev[:-1]])
        x = jnp.maximum(prev, diag + (ai == b))
        return jax.lax.cummax(x), None
    last, _ = jax.lax.scan(row, jnp.zeros(b.shape, jnp.int32), a)
    total = la + lb
    return jnp.where(total == 0, 1.0, 2.0 * last[-1] / jnp.maximum(total, 1)).astype(jnp.float32)


UTILITIES = {"exact": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}


@partial(jax.jit, static_argnums=0)
def expected_utility(utility, tokens, lengths):
    """Mean utility of each rollout against the other rollouts of its prompt: f32 [G, N].

    ``tokens`` int [G, N, T], ``lengths`` int [G, N]; ``utility(a, la, b, lb)`` on one pair, vmapped.
    """
    n = tokens.shape[1]
    pair = jax.vmap(jax.vmap(utility, (None, None, 0, 0)), (0, 0, None, None))       # [N, N]
    u = jax.vmap(pair)(tokens, lengths, tokens, lengths)                              # [G, N, N]
    u = jnp.where(jnp.eye(n, dtype=bool), 0.0, u)
    return u.sum(-1) / max(n - 1, 1)


def mbr(model, prompts, *, n: int, utility="rouge_l", sampler=None, seed: int = 0, max_new_tokens: int = 64,
        references=None, answer=None, budget=None, stop_tokens=None) -> Result:
    """The rollout whose mean utility against the other ``n - 1`` rollouts is highest.

    ``utility``: ``"exact"``, ``"token_f1"``, ``"rouge_l"`` (on token ids, stop token included) or a
    jax function ``(a[T], len_a, b[T], len_b) -> scalar``; computed on device for all pairs at once.
    Ties go to the lowest rollout number. ``scores`` are the expected utilities.
    """
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    if isinstance(utility, str):
        if utility not in UTILITIES:
            raise ValueError(f"unknown utility {utility!r}; known: {', '.join(UTILITIES)} or a function")
        utility = UTILITIES[utility]
    elif not callable(utility):
        raise ValueError("utility must be a name or a function (a, len_a, b, len_b) -> scalar")
    probe = jnp.zeros((max_new_tokens,), jnp.int32), jnp.int32(1)
    try:                                                  # before anything is drawn
        out = jax.eval_shape(utility, *probe, *probe)
    except Exception as e:  # noqa: BLE001 - a user function may raise anything when traced
        raise ValueError(f"utility must be a jax function (a[T], len_a, b[T], len_b) -> scalar; tracing it "
                         f"failed: {type(e).__name__}: {e}") from None
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != () or dtype is None or not (dtype == bool or jnp.issubdtype(dtype, jnp.floating)
                                            or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"utility must return a real scalar, got {dtype or type(out).__name__} of shape {shape}")
    d = draw(model, prompts, n=n, sampler=sampler, seed=seed, max_new_tokens=max_new_tokens, budget=budget,
             stop_tokens=stop_tokens)
    eu = np.asarray(expected_utility(utility, jnp.asarray(d.tokens), jnp.asarray(d.lengths)), np.float64)
    if not np.isfinite(eu).all():
        raise ValueError(f"the utility gave non-finite values: mean utilities {eu[~np.isfinite(eu)][:5].tolist()}")
    chosen = [int(np.argmax(row)) for row in eu]
    answers = extract(answer, d.texts)
    return Result(method="mbr", prompts=list(prompts), answers=[a[c] for a, c in zip(answers, chosen)],
                  chosen=chosen, texts=d.texts, lengths=d.lengths.tolist(), extracted=answers, scores=eu.tolist(),
                  votes=[[] for _ in prompts], budget=finish(budget, t0))
