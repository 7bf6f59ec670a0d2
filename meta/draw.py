"""Drawing rollouts for meta-generators: one shared-prefix call per chunk, with the budget counted."""
from __future__ import annotations

import dataclasses

import numpy as np

import engine
from meta.budget import Budget, param_count


@dataclasses.dataclass
class Drawn:
    """Rollouts ``first .. first+n-1`` of G prompts."""
    texts: list            # [G][n] decoded text (token ids joined by spaces for a model without tokenizer)
    tokens: np.ndarray     # int32 [G, n, T]
    lengths: np.ndarray    # int [G, n]


def rollout_texts(r: engine.Rollouts) -> list:
    """Each rollout's text [G][N]: ``r.text``, or its token ids joined by spaces (a model without a tokenizer)."""
    if r.text is not None:
        return [list(row) for row in r.text]
    return [[" ".join(map(str, t[:k].tolist())) for t, k in zip(row, ks)] for row, ks in zip(r.tokens, r.lengths)]


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def draw(model, prompts, *, n: int, sampler, seed: int, max_new_tokens: int, budget: Budget,
         first_rollout: int = 0, stop_tokens=None, rows: int = 2048, stop=None, keep_stop: bool = False) -> Drawn:
    """``n`` rollouts of each prompt (numbered from ``first_rollout``), counted in ``budget``.

    Prompts go in chunks of at most ``rows`` rollouts, each chunk padded (repeating its last
    prompt) to a power-of-two number of prompts so that few shapes are compiled. Draws depend
    only on ``seed``, the prompt, the rollout number and its sampler settings (fields [], [G] or
    [G, n]), never on the chunking. ``stop`` / ``keep_stop``: stop strings, as in ``engine.generate``.
    """
    engine.checks.check_int("n", n, 1)
    ids = engine.checks.check_prompts(model, list(prompts), max_new_tokens)
    engine.checks.stop_strings(model, stop)          # checked before any work
    if budget.affordable(len(ids) * n, max_new_tokens) < len(ids) * n:
        raise ValueError(f"{len(ids)} prompts x {n} rollouts x {max_new_tokens} tokens do not fit in the "
                         f"budget ({budget.max_generated - budget.generated} tokens left)")
    params = param_count(model.params)
    sampler = sampler.broadcast((len(ids), n))
    size = max(1, min(_pow2(len(ids)), rows // n))
    texts, tokens, lengths = [], [], []
    for lo in range(0, len(ids), size):
        real = min(size, len(ids) - lo)
        at = list(range(lo, lo + real)) + [lo + real - 1] * (size - real)     # padded with the last prompt
        out = engine.generate(model, [ids[i] for i in at], max_new_tokens=max_new_tokens, sampler=sampler.take(at),
                              n=n, seed=seed, stop_tokens=stop_tokens, first_rollout=first_rollout, stop=stop,
                              keep_stop=keep_stop)
        length = np.asarray(out.lengths)[:real]
        tok = np.asarray(out.tokens)[:real]
        texts += rollout_texts(out)[:real]
        tokens.append(tok)
        lengths.append(length)
        prefilled = sum(len(ids[i]) for i in at[:real])
        budget.generated += int(length.sum())
        budget.prefilled += prefilled
        budget.policy_flops += 2.0 * params * (int(length.sum()) + prefilled)
        budget.policy_calls += 1 + int(length.max())
    return Drawn(texts, np.concatenate(tokens), np.concatenate(lengths))
