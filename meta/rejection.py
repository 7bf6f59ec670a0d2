"""Rejection sampling: draw rounds of rollouts until a verifier accepts one or the budget ends."""
from __future__ import annotations

from engine.checks import check_int
from meta.common import check_threshold, draw_rounds, finish, setup
from meta.result import Result


def rejection_sample(model, prompts, *, n: int, scorer, round_size: int = 4, threshold: float = 1.0,
                     sampler=None, seed: int = 0, max_new_tokens: int = 64, references=None, answer=None,
                     budget=None, stop_tokens=None) -> Result:
    """Per prompt, the first rollout (lowest number) whose score is >= ``threshold``.

    Rollouts are drawn in rounds of ``round_size`` for the prompts not yet accepted, numbered
    on from the previous round (so round draws equal one larger draw), at most ``n`` per prompt.
    A round that could exceed the budget's limit is shrunk to what fits, or not drawn. A prompt
    never accepted gets answer ``None``; ``info[g]`` records its rollouts and acceptance.
    """
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    if scorer is None:
        raise ValueError("rejection_sample needs a scorer (the verifier that accepts)")
    check_int("round_size", round_size, 1)
    check_threshold(threshold)
    chosen = [None] * len(prompts)

    def settled(i, first, answers, scores):
        hit = [r for r, v in enumerate(scores[first:]) if v >= threshold]
        if hit:
            chosen[i] = first + hit[0]
        return bool(hit)

    texts, lengths, answers, scores, _ = draw_rounds(
        model, prompts, n=n, round_size=round_size, settled=settled, scorer=scorer, sampler=sampler, seed=seed,
        max_new_tokens=max_new_tokens, references=references, answer=answer, budget=budget,
        stop_tokens=stop_tokens)
    info = [{"rollouts": len(t), "accepted": c is not None} for t, c in zip(texts, chosen)]
    return Result(method="rejection_sample", prompts=list(prompts),
                  answers=[None if c is None else a[c] for a, c in zip(answers, chosen)], chosen=chosen, texts=texts,
                  lengths=lengths, extracted=answers, scores=scores, votes=[[] for _ in prompts],
                  budget=finish(budget, t0), info=info)
