"""Argument checks and the shape of a meta-generator call (shared by every strategy)."""
from __future__ import annotations

import math
import time
from collections.abc import Hashable

import jax
import numpy as np

from engine.checks import check_int, check_sampler, memory_bytes
from meta.budget import Budget
from meta.draw import draw
from sampling import Sampler


class PromptError(ValueError):
    """A failure of one prompt's work (a feedback function that raised on it, say); ``prompt`` is its
    index in the call, so that a caller can run the other prompts without it (``scripts/meta.py`` does)."""

    def __init__(self, prompt: int, message: str):
        super().__init__(message)
        self.prompt = prompt


def setup(prompts, n: int, references, budget: Budget | None, sampler):
    """Checked arguments: (budget, sampler with its settings broadcast to [G, n], start time); raises
    ``ValueError`` naming the problem."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list")
    check_int("n", n, 1)
    if references is not None and not isinstance(references, (list, tuple)):
        raise ValueError(f"references must be a list (one per prompt), got {type(references).__name__}")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
    sampler = Sampler(temperature=1.0) if sampler is None else check_sampler(sampler)
    check_rollouts(len(prompts), n, sampler)
    return (Budget() if budget is None else budget), sampler.broadcast((len(prompts), n)), time.perf_counter()


def check_rollouts(groups: int, n: int, sampler) -> None:
    """A ``ValueError`` when ``n`` rollouts of each of ``groups`` prompts cannot fit in the memory
    (``engine.checks.memory_bytes``) even for their sampler settings, [groups, n] arrays, sized
    without allocating them."""
    shapes = jax.eval_shape(lambda s: s.broadcast((groups, n)), sampler)
    need, have = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)), memory_bytes()
    if need > have:
        raise ValueError(f"n={n} rollouts for each of {groups} prompts cannot fit: their sampler settings alone "
                         f"([{groups}, n] arrays) need {need / 2**30:,.1f} GiB; the memory is {have / 2**30:,.1f} GiB")


def check_threshold(threshold) -> None:
    """A ``ValueError`` unless ``threshold`` (the score that accepts a rollout) is a number, not NaN."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")


def score(scorer, prompts, texts, references, budget):
    """Scores [G][N] as nested lists of floats."""
    if scorer is None:
        raise ValueError("this meta-generator needs a scorer")
    try:
        s = np.asarray(scorer(list(prompts), texts, references, budget), dtype=float)
    except (TypeError, ValueError) as e:  # ragged rows, strings, dicts, complex numbers
        raise ValueError(f"the scorer must return one real number per rollout, [G][N]; got what numpy "
                         f"cannot read as that ({e})") from e
    shape = (len(texts), len(texts[0]) if texts else 0)
    if s.shape != shape:
        raise ValueError(f"the scorer returned scores of shape {s.shape}; expected one per rollout, {shape}")
    if np.isnan(s).any():
        raise ValueError(f"the scorer returned NaN for {int(np.isnan(s).sum())} of {s.size} rollouts")
    return s.tolist()


def check_scorer(scorer, prompts, references) -> None:
    """The scorer's own checks of the prompts and references (``scorer.check``, where it has one),
    made before anything is drawn."""
    if hasattr(scorer, "check"):
        scorer.check(list(prompts), references)


def extract(answer, texts):
    """Each rollout's answer, ``answer(text)``: [G][N].

    Without ``answer`` (``None``) it is the whole text, stripped (``str.strip``): votes count
    identical completions. A task with reasoning before its answer brings its own extractor
    (e.g. ``meta.tasks.arith.answer``); an extractor returns ``None`` for a rollout without one.
    """
    fn = str.strip if answer is None else answer
    out = [[fn(t) for t in row] for row in texts]
    for a in (a for row in out for a in row):
        if not isinstance(a, Hashable):
            raise ValueError(f"answer() must return hashable values (a vote is counted by answer), got {a!r}")
    return out


def finish(budget: Budget, t0: float) -> Budget:
    """Add the wall time since ``t0``."""
    budget.wall_s += time.perf_counter() - t0
    return budget


def scored_draw(name: str, model, prompts, *, n: int, scorer, sampler, seed: int, max_new_tokens: int,
                references, answer, budget: Budget | None, stop_tokens):
    """The common part of a single-draw strategy that scores: checked arguments, ``n`` rollouts per
    prompt, their scores and answers. Returns ``(draw, scores, answers, budget, t0)``; a missing
    ``scorer`` is a ``ValueError`` naming ``name`` before anything is generated."""
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    if scorer is None:
        raise ValueError(f"{name} needs a scorer (a verifier or reward model)")
    check_scorer(scorer, prompts, references)
    d = draw(model, prompts, n=n, sampler=sampler, seed=seed, max_new_tokens=max_new_tokens, budget=budget,
             stop_tokens=stop_tokens)
    return d, score(scorer, prompts, d.texts, references, budget), extract(answer, d.texts), budget, t0


def draw_rounds(model, prompts, *, n: int, round_size: int, settled, scorer, sampler, seed: int,
                max_new_tokens: int, references, answer, budget: Budget, stop_tokens):
    """Draw rollouts in rounds of ``round_size`` for the prompts not yet settled, at most ``n`` each.

    Rounds are numbered on from the previous one (``first_rollout``), so they equal one larger
    draw; a round that could exceed the budget's limit is shrunk to what fits, or not drawn.
    After each round ``settled(i, first, answers_i, scores_i)`` (``first``: the round's first
    rollout number; the lists: everything prompt ``i`` has so far) says whether prompt ``i``
    stops. Scores are ``None`` without a scorer. Returns texts, lengths, answers, scores and the
    rounds each prompt took (lists per prompt).
    """
    if scorer is not None:
        check_scorer(scorer, prompts, references)
    g = len(prompts)
    texts, lengths, scores, answers = ([[] for _ in range(g)] for _ in range(4))
    done, rounds = [False] * g, [0] * g
    drawn = 0
    while drawn < n:
        active = [i for i in range(g) if not done[i]]
        if not active:
            break
        k = min(round_size, n - drawn, budget.affordable(len(active) * round_size, max_new_tokens) // len(active))
        if k < 1:
            break
        sub = [prompts[i] for i in active]
        refs = None if references is None else [references[i] for i in active]
        d = draw(model, sub, n=k, sampler=sampler.take(active, slice(drawn, drawn + k)), seed=seed,
                 max_new_tokens=max_new_tokens, budget=budget, first_rollout=drawn, stop_tokens=stop_tokens)
        s = score(scorer, sub, d.texts, refs, budget) if scorer is not None else [[None] * k for _ in sub]
        a = extract(answer, d.texts)
        for j, i in enumerate(active):
            texts[i] += d.texts[j]
            lengths[i] += d.lengths[j].tolist()
            answers[i] += a[j]
            scores[i] += s[j]
            rounds[i] += 1
            done[i] = settled(i, drawn, answers[i], scores[i])
        drawn += k
    return texts, lengths, answers, scores, rounds
