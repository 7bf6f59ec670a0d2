"""Adaptive self-consistency: sample in rounds, stop each prompt once its vote is decided."""
from __future__ import annotations

import math

from engine.checks import check_int
from meta.common import draw_rounds, finish, setup
from meta.result import Result
from meta.vote import tally, winner

RULES = ("unbeatable", "beta")


def beta_confidence(lead: float, second: float) -> float:
    """P(p_lead > p_second) under a uniform prior, from the two top counts (Beta(lead+1, second+1) > 1/2).

    For integer counts this is exactly P(Binomial(lead + second + 1, 1/2) <= lead).
    """
    a, b = int(lead), int(second)
    m = a + b + 1
    return sum(math.comb(m, i) for i in range(a + 1)) / 2 ** m


def decided(answers, n_max: int, rule: str, confidence: float) -> bool:
    """Whether the vote over ``answers`` (so far) is decided.

    ``unbeatable``: the leader's count exceeds the runner-up's plus every rollout still allowed
    (``n_max`` minus drawn), so more rollouts cannot change the answer. ``beta``: the posterior
    probability that the leader's answer is more likely than the runner-up's is >= ``confidence``.
    """
    counts = sorted((w for _, w in tally(answers)), reverse=True) + [0.0, 0.0]
    lead, second = counts[0], counts[1]
    if rule == "unbeatable":
        return lead > second + (n_max - len(answers))
    return lead > 0 and beta_confidence(lead, second) >= confidence


def replay(answers, n: int, round_size: int = 4, rule: str = "beta", confidence: float = 0.95) -> int:
    """How many rollouts :func:`adaptive_self_consistency` uses on a prompt whose rollouts' answers
    (in rollout order, at least ``n`` of them) are ``answers``, replayed on rollouts already drawn with the same seed.

    Its rollouts are a prefix of a larger draw, so replaying the rounds on that draw's answers
    gives exactly its stopping point (without a budget limit).
    """
    drawn = 0
    while drawn < n:
        drawn = min(drawn + round_size, n)
        if decided(list(answers[:drawn]), n, rule, confidence):
            break
    return drawn


def adaptive_self_consistency(model, prompts, *, n: int, round_size: int = 4, rule: str = "beta",
                              confidence: float = 0.95, sampler=None, seed: int = 0, max_new_tokens: int = 64,
                              references=None, answer=None, budget=None, stop_tokens=None, scorer=None) -> Result:
    """Self-consistency with at most ``n`` rollouts per prompt, drawn in rounds of ``round_size``.

    After each round a prompt stops when :func:`decided` says so (``rule``: ``"unbeatable"`` —
    the answer equals self-consistency with all ``n`` rollouts of the same seed — or ``"beta"``).
    Rounds draw rollouts numbered on from the last, so its rollouts are a prefix of
    :func:`self_consistency`'s. A round that could exceed the budget's limit is shrunk or not
    drawn. Votes and ties as in :func:`self_consistency`; ``info[g]["rounds"]`` per prompt.
    """
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    if rule not in RULES:
        raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(RULES)}")
    check_int("round_size", round_size, 1)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    texts, lengths, answers, scores, rounds = draw_rounds(
        model, prompts, n=n, round_size=round_size, settled=lambda i, first, a, s: decided(a, n, rule, confidence),
        scorer=scorer, sampler=sampler, seed=seed, max_new_tokens=max_new_tokens, references=references,
        answer=answer, budget=budget, stop_tokens=stop_tokens)
    picked = [winner(a) for a in answers]
    info = [{"rounds": r, "rollouts": len(t)} for r, t in zip(rounds, texts)]
    return Result(method="adaptive_self_consistency", prompts=list(prompts), answers=[p[0] for p in picked],
                  chosen=[p[1] for p in picked], texts=texts, lengths=lengths, extracted=answers, scores=scores,
                  votes=[p[2] for p in picked], budget=finish(budget, t0), info=info)
