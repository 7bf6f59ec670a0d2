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


TIE = 1e-9  # totals this close (relative) are tied: sums of equal weights in another order can differ in the last bit


def winner(answers, weights=None):
    """(winning answer, index of its first rollout, the tally); ties go to the answer that occurred first.

    Totals within ``TIE`` (relative) of the largest count as tied. ``(None, None, [])`` when no
    rollout has an answer.
    """
    votes = tally(answers, weights)
    if not votes:
        return None, None, votes
    top = max(w for _, w in votes)
    answer = next(a for a, w in votes if w >= top - TIE * abs(top))
    return answer, list(answers).index(answer), votes
