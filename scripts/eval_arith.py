"""Run a model on a task's problems and score it (shared by ``train_tiny``, ``demo`` and tests).

Named for the first task; the problems' task (``meta.tasks.of``) gives the budget and the verifier.
"""
from __future__ import annotations

import numpy as np

from engine import generate
from meta import tasks
from sampling import Sampler

METRIC_SAMPLE = 50            # the recorded greedy accuracy is on the first 50 hard test problems
# Sampling temperature of the demo, the meta table and the reward model's rollouts: chosen on 200 val
# hard problems among 0.4-1.0 (best mean of self-consistency@16 and @64; docs/meta.md).
TEMPERATURE = 0.8
# Adaptive self-consistency's setting in the demo and the meta table: the cheapest setting whose
# accuracy is within 1 point of self-consistency@64 on those val problems at TEMPERATURE (docs/meta.md).
ADAPTIVE = dict(round_size=4, rule="beta", confidence=0.9)


def max_new_tokens(problems) -> int:
    """A generation budget that fits a solution of every problem: their task's ``max_new_tokens``
    (for arithmetic :func:`meta.tasks.arith.max_new_tokens`)."""
    return tasks.of(problems[0]).problems.max_new_tokens(problems)


def solve(model, problems, *, n: int = 1, sampler: Sampler | None = None, seed: int = 0,
          rows: int = 2048, progress=None) -> tuple[list[list[str]], np.ndarray]:
    """``n`` solutions per problem: texts [G][n] and tokens generated int [G, n].

    Problems are run in chunks of at most ``rows`` rollouts, every chunk padded to the same
    shape so the decode loop compiles once; ``progress`` (a tqdm bar, optional) advances by
    the problems of each chunk. Draws depend on ``seed`` only, not on the chunking.
    """
    if not problems:
        raise ValueError("solve needs at least one problem")
    if n < 1 or rows < n:
        raise ValueError(f"need 1 <= n <= rows, got n={n}, rows={rows}")
    per_chunk = min(len(problems), rows // n)
    budget = max_new_tokens(problems)
    texts, lengths = [], []
    for lo in range(0, len(problems), per_chunk):
        chunk = list(problems[lo:lo + per_chunk])
        real = len(chunk)
        chunk += [chunk[-1]] * (per_chunk - real)                 # pad: same shape, one compile
        out = generate(model, [p.prompt for p in chunk], max_new_tokens=budget, sampler=sampler, n=n,
                       seed=seed)
        texts += out.text[:real]
        lengths.append(np.asarray(out.lengths)[:real])
        if progress is not None:
            progress.update(real)
    return texts, np.concatenate(lengths)


def greedy_accuracy(model, problems) -> float:
    """Fraction of ``problems`` whose greedy solution is right by their task's outcome verifier."""
    texts, _ = solve(model, problems)
    return float(tasks.of(problems[0]).verifiers.outcome_scores([t[0] for t in texts], problems).mean())


def fix_rate(model, problems, seed: int = 0) -> float:
    """Fraction of ``problems`` whose greedy next attempt is right after a flawed attempt and the
    verifier's feedback on it (``Problem.flawed_solution``: one mistake; ``verifiers.feedback``), laid
    out as ``meta.refine`` appends them: how well ``model`` uses feedback, apart from how well it drafts."""
    import random
    task, rng, tok = tasks.of(problems[0]), random.Random(seed), model.tokenizer
    prompts = []
    for p in problems:
        flawed, _ = p.flawed_solution(rng)
        prompts.append(tok.encode(p.prompt) + tok.encode(flawed, bos=False) + [tok.eos_id]
                       + tok.encode(task.verifiers.feedback(p.prompt, flawed), bos=False))
    texts = generate(model, prompts, max_new_tokens=max_new_tokens(problems)).text
    return float(task.verifiers.outcome_scores([t[0] for t in texts], problems).mean())
