"""Argument checks and the shape of a meta-generator call (shared by every strategy)."""
from __future__ import annotations

import time

from meta.budget import Budget
from meta.draw import arith_answer
from sampling import Sampler


def setup(prompts, n: int, references, budget: Budget | None, sampler):
    """Checked arguments: (budget, sampler, start time); raises ``ValueError`` naming the problem."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
    return (Budget() if budget is None else budget), (Sampler(temperature=1.0) if sampler is None else sampler), \
        time.perf_counter()


def score(scorer, prompts, texts, references, budget):
    """Scores [G][N] as nested lists of floats."""
    if scorer is None:
        raise ValueError("this meta-generator needs a scorer")
    s = scorer(list(prompts), texts, references, budget)
    return [[float(v) for v in row] for row in s]


def extract(answer, texts):
    """Each rollout's answer via ``answer(text)`` (default: the built-in task's ``A: <n>``)."""
    fn = arith_answer if answer is None else answer
    return [[fn(t) for t in row] for row in texts]


def finish(budget: Budget, t0: float) -> Budget:
    """Add the wall time since ``t0``."""
    budget.wall_s += time.perf_counter() - t0
    return budget
