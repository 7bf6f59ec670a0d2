"""Rejection sampling: draw rounds of rollouts until a verifier accepts one or the budget ends."""
from __future__ import annotations

from meta.common import extract, finish, score, setup
from meta.draw import draw
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
    if round_size < 1:
        raise ValueError(f"round_size must be >= 1, got {round_size}")
    g = len(prompts)
    texts, lengths, scores, answers = ([[] for _ in range(g)] for _ in range(4))
    chosen = [None] * g
    drawn = 0
    while drawn < n:
        active = [i for i in range(g) if chosen[i] is None]
        if not active:
            break
        k = min(round_size, n - drawn, budget.affordable(len(active) * round_size, max_new_tokens) // len(active))
        if k < 1:
            break
        sub = [prompts[i] for i in active]
        refs = None if references is None else [references[i] for i in active]
        d = draw(model, sub, n=k, sampler=sampler, seed=seed, max_new_tokens=max_new_tokens, budget=budget,
                 first_rollout=drawn, stop_tokens=stop_tokens)
        s = score(scorer, sub, d.texts, refs, budget)
        a = extract(answer, d.texts)
        for j, i in enumerate(active):
            texts[i] += d.texts[j]
            lengths[i] += d.lengths[j].tolist()
            scores[i] += s[j]
            answers[i] += a[j]
            hit = [r for r, v in enumerate(s[j]) if v >= threshold]
            if hit:
                chosen[i] = drawn + hit[0]
        drawn += k
    info = [{"rollouts": len(t), "accepted": c is not None} for t, c in zip(texts, chosen)]
    return Result("rejection_sample", list(prompts), [None if c is None else a[c] for a, c in zip(answers, chosen)],
                  chosen, texts, lengths, answers, scores, [[] for _ in prompts], finish(budget, t0), info)
