"""Cascades: answer each prompt with the cheapest stage whose answer is accepted.

A stage is ``(model, method, kwargs)``: a meta-generator (``meta.self_consistency``,
``meta.best_of_n``, ...) run on a model with its settings, e.g. greedy on a small model, then
self-consistency@4, then @16, or then a larger model. Stage ``s`` runs on the prompts every
earlier stage's answer was refused for; ``accept(result, g)`` judges prompt ``g`` of a stage's
result (a verifier's score, a reward threshold, the agreement of its samples: :func:`agreement`,
:func:`score_at_least`). The last stage's answer is final. Each stage counts its own model's work
in a budget of its own (``Result.parts``); ``Result.budget`` is their sum.
"""
from __future__ import annotations

from meta.budget import Budget
from meta.result import Result

FIELDS = ("answers", "chosen", "texts", "lengths", "extracted", "scores", "votes", "info")


def _check(stages, prompts):
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ValueError("stages must be a non-empty list of (model, method, kwargs)")
    for s, stage in enumerate(stages):
        if not (isinstance(stage, tuple) and len(stage) == 3 and callable(stage[1]) and isinstance(stage[2], dict)):
            raise ValueError(f"stage {s} must be (model, method, kwargs) with method a meta-generator, got {stage!r:.80}")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list")
    first = stages[0][0].tokenizer
    for s, (model, _, _) in enumerate(stages[1:], 1):
        tok = model.tokenizer
        if (first is None) != (tok is None) or (tok is not None and tok.token_bytes() != first.token_bytes()) \
                or model.config.vocab_size != stages[0][0].config.vocab_size:
            raise ValueError(f"stage {s}'s model has another tokenizer than stage 0's: a cascade's models must "
                             f"share one (answers and prompts are compared across stages)")


def cascade(stages, prompts, *, accept, references=None, budget: Budget | None = None) -> Result:
    """Run the ``stages`` in order, each on the prompts not yet accepted (see the module docstring).

    ``accept(result, g) -> bool`` judges prompt ``g`` of a stage's ``Result``, or a list of such
    functions, one for each stage but the last (a greedy stage has no votes to agree: a verifier or
    a reward threshold judges it); ``references`` (one per prompt) go to every stage's method. ``info[g]["stage"]``
    is the stage that answered prompt ``g`` (its other fields: that stage's own ``info``), ``parts`` the
    budget of each stage, ``budget`` their sum (added to the ``budget`` given, if one is).
    """
    _check(stages, prompts)
    accepts = list(accept) if isinstance(accept, (list, tuple)) else [accept] * (len(stages) - 1)
    if len(accepts) != len(stages) - 1 or not all(map(callable, accepts)):
        raise ValueError(f"accept must be a function (result, g) -> bool, or a list of {len(stages) - 1} (one per "
                         f"stage but the last), got {accept!r:.60}")
    g = len(prompts)
    out = {k: [None] * g for k in FIELDS}
    waiting, parts = list(range(g)), []
    for s, (model, method, kwargs) in enumerate(stages):
        if not waiting:
            break
        spent = Budget()
        refs = {} if references is None else {"references": [references[i] for i in waiting]}
        r = method(model, [prompts[i] for i in waiting], budget=spent, **refs, **kwargs)
        parts.append(spent)
        last, left = s == len(stages) - 1, []
        for j, i in enumerate(waiting):
            if not last and not accepts[s](r, j):
                left.append(i)
                continue
            for k in FIELDS:
                out[k][i] = getattr(r, k)[j]
            out["info"][i] = {"stage": s, **(out["info"][i] or {})}
        waiting = left
    total = Budget() if budget is None else budget
    for b in parts:
        total.add(b)
    return Result(method="cascade", prompts=list(prompts), budget=total, parts=parts, **out)


def agreement(fraction: float):
    """``accept`` for voting stages: the winning answer has at least ``fraction`` of the votes."""
    def accept(result, g):
        votes = [w for _, w in result.votes[g]]
        return bool(votes) and max(votes) >= fraction * sum(votes) and result.answers[g] is not None
    return accept


def score_at_least(threshold: float):
    """``accept`` by the chosen rollout's score (a verifier's 1.0, a reward model's logit, ...)."""
    def accept(result, g):
        c = result.chosen[g]
        return c is not None and result.scores[g][c] is not None and result.scores[g][c] >= threshold
    return accept
