"""pass@k (coverage): the unbiased estimator, and a meta-generator reporting it."""
from __future__ import annotations

import math

import numpy as np

from engine.checks import check_int
from meta.common import check_threshold, finish, scored_draw
from meta.result import Result


def pass_at_k(n: int, c, k: int) -> np.ndarray:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (per problem): 1 - C(n-c, k) / C(n, k)."""
    check_int("n", n, 1)
    check_int("k", k, 1)
    if k > n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    c = np.asarray(c)
    if not np.issubdtype(c.dtype, np.integer) or np.any((c < 0) | (c > n)):
        raise ValueError(f"correct counts must be integers in [0, {n}], got {c.reshape(-1)[:8].tolist()}")
    return np.array([1.0 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c.reshape(-1)]).reshape(c.shape)


def coverage(model, prompts, *, n: int, scorer, ks=None, sampler=None, seed: int = 0, max_new_tokens: int = 64,
             references=None, answer=None, budget=None, stop_tokens=None, threshold: float = 1.0) -> Result:
    """pass@k for ``ks`` (default 1, 2, 4, .. below ``n``, and ``n``) from ``n`` rollouts per prompt;
    ``info[g]["pass@k"]``.

    A rollout is correct when its score is >= ``threshold``. The chosen answer is the first correct
    rollout's (an oracle's choice), ``None`` when none is.
    """
    check_int("n", n, 1)
    if ks is not None and not isinstance(ks, (list, tuple)):
        raise ValueError(f"ks must be a list of integers, got {ks!r}")
    ks = sorted({1 << i for i in range(n.bit_length())} | {n}) if ks is None else list(ks)
    for k in ks:                                          # before any rollout is drawn
        check_int("each of ks", k, 1)
        if k > n:
            raise ValueError(f"pass@{k} needs at least {k} rollouts per prompt; n is {n}")
    check_threshold(threshold)
    d, scores, answers, budget, t0 = scored_draw("pass@k", model, prompts, n=n, scorer=scorer, sampler=sampler,
                                                 seed=seed, max_new_tokens=max_new_tokens, references=references,
                                                 answer=answer, budget=budget, stop_tokens=stop_tokens)
    correct = [[s >= threshold for s in row] for row in scores]
    chosen = [row.index(True) if any(row) else None for row in correct]
    info = [{f"pass@{k}": float(pass_at_k(n, sum(row), k)) for k in ks} for row in correct]
    return Result(method="pass_at_k", prompts=list(prompts),
                  answers=[None if c is None else a[c] for a, c in zip(answers, chosen)], chosen=chosen,
                  texts=d.texts, lengths=d.lengths.tolist(), extracted=answers, scores=scores,
                  votes=[[] for _ in prompts], budget=finish(budget, t0), info=info)
