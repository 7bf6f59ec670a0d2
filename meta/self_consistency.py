"""Self-consistency (majority vote over answers) and weighted voting (votes weighted by a scorer)."""
from __future__ import annotations

import numpy as np

from meta.common import extract, finish, score, scored_draw, setup
from meta.draw import draw
from meta.result import Result
from meta.vote import winner


def self_consistency(model, prompts, *, n: int, sampler=None, seed: int = 0, max_new_tokens: int = 64,
                     references=None, answer=None, budget=None, stop_tokens=None, scorer=None) -> Result:
    """The most frequent answer among ``n`` rollouts per prompt.

    Rollouts without an answer (``answer(text)`` is ``None``) do not vote; ties go to the answer
    whose first rollout comes first. ``chosen`` is that first rollout. A ``scorer``, if given,
    only records scores (it does not weigh the votes: see :func:`weighted_vote`).
    """
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    d = draw(model, prompts, n=n, sampler=sampler, seed=seed, max_new_tokens=max_new_tokens, budget=budget,
             stop_tokens=stop_tokens)
    answers = extract(answer, d.texts)
    scores = score(scorer, prompts, d.texts, references, budget) if scorer is not None else \
        [[None] * n for _ in prompts]
    picked = [winner(a) for a in answers]
    return Result(method="self_consistency", prompts=list(prompts), answers=[p[0] for p in picked],
                  chosen=[p[1] for p in picked], texts=d.texts, lengths=d.lengths.tolist(), extracted=answers,
                  scores=scores, votes=[p[2] for p in picked], budget=finish(budget, t0))


def weighted_vote(model, prompts, *, n: int, scorer, sampler=None, seed: int = 0, max_new_tokens: int = 64,
                  references=None, answer=None, budget=None, stop_tokens=None, weight=None) -> Result:
    """The answer with the largest total score among ``n`` rollouts per prompt.

    Each rollout votes for its answer with ``weight(score)`` (default: the score itself, e.g. a
    verifier's 0/1 or a reward model's probability; pass ``weight=np.exp`` for log-probabilities).
    Weights must be >= 0. Ties go to the answer whose first rollout comes first.
    """
    if weight is not None and not callable(weight):
        raise ValueError(f"weight must be a function of a score (e.g. meta.sigmoid), got {weight!r}")
    d, scores, answers, budget, t0 = scored_draw("weighted_vote", model, prompts, n=n, scorer=scorer,
                                                 sampler=sampler, seed=seed, max_new_tokens=max_new_tokens,
                                                 references=references, answer=answer, budget=budget,
                                                 stop_tokens=stop_tokens)
    weights = [[float(weight(s)) if weight is not None else s for s in row] for row in scores]
    if any(w < 0 or not np.isfinite(w) for row in weights for w in row):
        raise ValueError("weighted_vote needs finite non-negative weights; transform the scores with weight=")
    picked = [winner(a, w) for a, w in zip(answers, weights)]
    return Result(method="weighted_vote", prompts=list(prompts), answers=[p[0] for p in picked],
                  chosen=[p[1] for p in picked], texts=d.texts, lengths=d.lengths.tolist(), extracted=answers,
                  scores=scores, votes=[p[2] for p in picked], budget=finish(budget, t0))
