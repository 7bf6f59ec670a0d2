"""Voting over extracted answers (shared by self-consistency, weighted and adaptive voting)."""
from __future__ import annotations


def tally(answers, weights=None) -> list:
    """``[answer, total weight]`` pairs in order of each answer's first occurrence; ``None`` does not vote."""
    totals = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else float(weights[i]))
    return [[a, w] for a, w in totals.items()]


def winner(answers, weights=None):
    """(winning answer, index of its first rollout, the tally); ties go to the answer that occurred first.

    ``(None, None, [])`` when no rollout has an answer.
    """
    votes = tally(answers, weights)
    if not votes:
        return None, None, votes
    best = max(range(len(votes)), key=lambda i: (votes[i][1], -i))
    answer = votes[best][0]
    return answer, list(answers).index(answer), votes
