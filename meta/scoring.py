"""Scorers: map finished rollouts to one score each (outcome) or one score per step (process).

Every scorer is called as ``scorer(prompts, texts, references=None, budget=None) -> float [G, N]``
with ``texts[g][r]`` the rollouts of prompt ``g`` and ``references[g]`` its reference (whatever
the scorer reads: a task's problem, an answer, or ``None``); it adds its own cost to ``budget``.
A scorer may also have ``check(prompts, references)``, which meta-generators call before
drawing anything.

* :class:`FunctionScorer` — any Python function on texts (a programmatic verifier);
* :class:`ProcessScorer` — per-step scores aggregated by ``last``, ``min``, ``prod`` or ``mean``;
* :class:`LMJudge` — the log-probability a rollax model gives a verdict token after a template,
  one batched forward on the model's device;
* :class:`RewardModel` — a learned outcome reward model (a rollax model's scalar head).

A task brings its own verifiers, e.g. :mod:`meta.tasks.arith_verifiers`.
"""
from __future__ import annotations

import functools
import string
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import models
from engine.checks import check_int
from meta.budget import Budget, param_count

AGGREGATIONS = ("last", "min", "prod", "mean")


def _shape_check(texts, scores) -> np.ndarray:
    scores = [np.asarray(s, np.float64).reshape(-1) for s in scores]    # float32 made ties and 0.5**200 == 0
    if len(scores) != len(texts) or any(len(s) != len(t) for s, t in zip(scores, texts)):
        raise ValueError("a scorer must return one score per rollout")
    return scores


def _stack(rows) -> np.ndarray:
    lens = {len(r) for r in rows}
    return np.stack(rows) if len(lens) == 1 else np.array(rows, dtype=object)


class FunctionScorer:
    """An outcome scorer from ``fn(prompt, text, reference) -> float`` (a programmatic verifier)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, prompts, texts, references=None, budget: Budget | None = None):
        refs = [None] * len(texts) if references is None else references
        if budget is not None:
            budget.scorer_calls += 1
        return _stack(_shape_check(texts, [[self.fn(p, t, ref) for t in row]
                                           for p, row, ref in zip(prompts, texts, refs)]))


def aggregate(steps: np.ndarray, how: str) -> float:
    """One score from per-step scores: ``last``, ``min``, ``prod`` or ``mean``; no steps scores 0."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; known: {', '.join(AGGREGATIONS)}")
    steps = np.asarray(steps, np.float64)
    if steps.size == 0:
        return 0.0
    return float({"last": steps[-1], "min": steps.min(), "prod": steps.prod(), "mean": steps.mean()}[how])


class ProcessScorer:
    """A process scorer: ``steps(prompts, texts, references) -> [G][N] arrays of per-step scores``.

    Called as an outcome scorer it aggregates each rollout's steps (``aggregation``); ``steps``
    gives the per-step scores themselves.
    """

    def __init__(self, step_fn: Callable, aggregation: str = "min"):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        self.step_fn, self.aggregation = step_fn, aggregation

    def steps(self, prompts, texts, references=None, budget: Budget | None = None) -> list:
        """Per-step scores of every rollout: ``[G][N]`` float arrays."""
        if budget is not None:
            budget.scorer_calls += 1
        return self.step_fn(prompts, texts, references)

    def __call__(self, prompts, texts, references=None, budget: Budget | None = None):
        steps = self.steps(prompts, texts, references, budget)
        return _stack(_shape_check(texts, [[aggregate(s, self.aggregation) for s in row] for row in steps]))


def _right_padded(model, seqs: list[list[int]], what: str, rows: int):
    """Token ids right-padded to a multiple of 16 tokens (padding never changes a score) and each row's
    last index, in chunks of ``rows`` sequences (fewer: a power of two; the last chunk padded with empty
    rows), so that calls with other numbers of sequences reuse few compilations."""
    longest = max(map(len, seqs))
    if longest > model.config.max_len:
        raise ValueError(f"a {what} sequence has {longest} tokens, over the model's maximum {model.config.max_len}")
    width = min(-(-longest // 16) * 16, model.config.max_len)
    rows = min(rows, 1 << (len(seqs) - 1).bit_length())
    for lo in range(0, len(seqs), rows):
        chunk = seqs[lo:lo + rows]
        ids = np.full((rows, width), model.config.pad_id, np.int32)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = s
        last = [len(s) - 1 for s in chunk] + [0] * (rows - len(chunk))
        yield len(chunk), jnp.asarray(ids), jnp.asarray(last)


def _unflatten(scores, texts):
    out, i = [], 0
    for row in texts:
        out.append(np.asarray(scores[i:i + len(row)]))
        i += len(row)
    return _stack(out)


class _ModelScorer:
    """Shared by model-based scorers: the template, encoding, batching and the budget."""

    rows = 512                 # sequences per forward call

    def __init__(self, model, template: str, what: str):
        if model.tokenizer is None:
            raise ValueError(f"{what} needs a model with a tokenizer")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}'s template {template!r} is not a format string: {e}") from e
        if not fields <= {"prompt", "text"}:
            raise ValueError(f"{what}'s template may use {{prompt}} and {{text}}, got "
                             f"{sorted(fields - {'prompt', 'text'})}")
        self.model, self.template, self.what = model, template, what

    def encode(self, prompt: str, text: str) -> list[int]:
        """The token ids the model scores for one rollout (BOS + the formatted template)."""
        return self.model.tokenizer.encode(self.template.format(prompt=prompt, text=text))

    def score_ids(self, ids, last):
        """Scores [B] of right-padded token ids [B, W], each read at its index ``last`` [B]."""
        raise NotImplementedError

    def __call__(self, prompts, texts, references=None, budget: Budget | None = None):
        self.check(prompts, references)
        seqs = [self.encode(p, t) for p, row in zip(prompts, texts) for t in row]
        batches = list(_right_padded(self.model, seqs, self.what, self.rows))
        scores = np.concatenate([np.asarray(self.score_ids(ids, last))[:real] for real, ids, last in batches])
        if budget is not None:
            budget.scorer_calls += len(batches)
            budget.scorer_tokens += sum(map(len, seqs))
            budget.scorer_flops += 2.0 * param_count(self.model.params) * sum(map(len, seqs))
        return _unflatten(scores, texts)

    def check(self, prompts, references=None) -> None:
        """A ``ValueError`` unless every prompt is a string: the template is filled with text (a
        token-id list would be read as its Python repr)."""
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"{self.what} formats its template with text; prompt {i} is not a string "
                                 f"(decode token-id prompts first)")


class LMJudge(_ModelScorer):
    """An LM judge: ``log p(verdict | template)`` under a rollax model, one batched forward.

    ``template`` is formatted with ``prompt`` and ``text`` (e.g. ``"{prompt}{text}\\nok? "``) and
    encoded with the judge's tokenizer; the score of a rollout is the log-probability (after
    log-softmax over the vocabulary) of token ``verdict`` at the next position. Sequences are
    right-padded (padding never changes the score) and run in batches of ``rows``.
    """

    def __init__(self, model, template: str, verdict: int | str):
        super().__init__(model, template, "an LM judge")
        if isinstance(verdict, str):
            ids = model.tokenizer.encode(verdict, bos=False)
            if len(ids) != 1:
                raise ValueError(f"the verdict {verdict!r} must be one token, got {len(ids)}")
            if model.tokenizer.decode(ids).strip() != verdict.strip():  # e.g. the unknown token
                raise ValueError(f"the verdict {verdict!r} is not a token of the judge's tokenizer (it reads back "
                                 f"as {model.tokenizer.decode(ids)!r})")
            verdict = ids[0]
        check_int("verdict (a token id or a one-token string)", verdict, 0)
        if verdict >= model.config.vocab_size:
            raise ValueError(f"verdict token {verdict} is outside the vocabulary")
        self.verdict = int(verdict)

    def score_ids(self, ids, last):
        return _judge(self.model.config, self.model.params, ids, last, self.verdict)


class RewardModel(_ModelScorer):
    """A learned outcome reward model: the scalar head of a rollax model (``config.score_head``).

    The score of a rollout is ``models.rewards`` at the last token of the formatted ``template``
    (default ``"{prompt}{text}"`` followed by EOS, as ``scripts.train_tiny --reward`` trains it):
    a logit; ``sigmoid`` of it is the predicted probability of being right (``weighted_vote``
    uses it as ``weight=meta.sigmoid``). One batched right-padded forward.
    """

    def __init__(self, model, template: str = "{prompt}{text}", eos: bool = True):
        if not model.config.score_head:
            raise ValueError("RewardModel needs a model with a scalar head (config.score_head); "
                             "train one with scripts.train_tiny --reward")
        super().__init__(model, template, "a reward model")
        self.eos = eos

    def encode(self, prompt: str, text: str) -> list[int]:
        ids = super().encode(prompt, text)
        return ids + [self.model.tokenizer.eos_id] if self.eos else ids

    def score_ids(self, ids, last):
        return _reward_at(self.model.config, self.model.params, ids, last)


def sigmoid(x):
    """The logistic function (a reward model's logit -> probability), for ``weighted_vote(weight=...)``."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@functools.partial(jax.jit, static_argnums=0)
def _reward_at(config, params, ids, last):
    return jnp.take_along_axis(models.rewards(config, params, ids), last[:, None], axis=1)[:, 0]


@jax.jit
def _gather_verdict(logits, last, verdict):
    lp = jax.nn.log_softmax(jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], axis=-1)
    return lp[:, verdict]


_forward = jax.jit(models.forward, static_argnums=0)


def _judge(config, params, ids, last, verdict):
    logits, _ = _forward(config, params, ids)
    return _gather_verdict(logits, last, verdict)
