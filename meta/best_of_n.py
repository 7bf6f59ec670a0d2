"""Best-of-N: draw N rollouts per prompt, keep the one a scorer likes best."""
from __future__ import annotations

import numpy as np

from meta.common import finish, scored_draw
from meta.result import Result


def best_of_n(model, prompts, *, n: int, scorer, sampler=None, seed: int = 0, max_new_tokens: int = 64,
              references=None, answer=None, budget=None, stop_tokens=None) -> Result:
    """The highest-scoring of ``n`` rollouts per prompt; ties go to the lowest rollout number.

    ``scorer`` is an outcome scorer (see :mod:`meta.scoring`); ``answer(text)`` extracts the
    answer (default: the whole text, stripped; see :func:`meta.common.extract`). ``budget`` (a
    :class:`meta.Budget`) may carry a limit; a draw that could exceed it raises ``ValueError``
    before anything is generated.
    """
    d, scores, answers, budget, t0 = scored_draw("best_of_n", model, prompts, n=n, scorer=scorer, sampler=sampler,
                                                 seed=seed, max_new_tokens=max_new_tokens, references=references,
                                                 answer=answer, budget=budget, stop_tokens=stop_tokens)
    chosen = [int(np.argmax(s)) for s in scores]                     # argmax: first of the maxima
    return Result(method="best_of_n", prompts=list(prompts), answers=[a[c] for a, c in zip(answers, chosen)],
                  chosen=chosen, texts=d.texts, lengths=d.lengths.tolist(), extracted=answers, scores=scores,
                  votes=[[] for _ in prompts], budget=finish(budget, t0))
