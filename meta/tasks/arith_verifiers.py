"""The arithmetic task's verifiers: on text, and as the scorers meta-generators take.

On lists of texts (the generated solutions, i.e. what follows the prompt):

* outcome: ``texts[R], problems[R] -> scores[R]`` — 1.0 where the final answer is right
  (:func:`outcome_scores`);
* process: ``texts[R], problems[R] | None -> [scores[steps_r] per text]`` — 1.0 for each step
  whose arithmetic is right given its inputs (and, given the problem, whose inputs are the
  previous step's result and a term of the chain not used yet, in any order)
  (:func:`process_scores`, :func:`step_scores`).

As scorers (``scorer(prompts, texts[G][N], references, budget) -> [G, N]``, see
:mod:`meta.scoring`): :class:`OutcomeVerifier` (references: ``arith.Problem`` or answers) and
:func:`process_verifier` (references: ``arith.Problem`` or ``None``).
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from meta.scoring import FunctionScorer, ProcessScorer
from meta.tasks.arith import Problem, answer, from_prompt, parse


def _check(texts, problems, need_problems: bool, kind: type = Problem):
    """``texts`` and ``problems`` as lists (``problems``: ``None`` each when absent and not needed),
    or a ``ValueError`` naming what is wrong; ``kind`` is the task's problem type (shared by the tasks)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    texts = list(texts)
    if problems is None:
        if need_problems:
            raise ValueError("the outcome verifier needs the problems to know the right answers")
        return texts, [None] * len(texts)
    problems = list(problems)
    if len(problems) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(problems)} problems")
    bad = [i for i, p in enumerate(problems) if not isinstance(p, kind)]
    if bad:
        raise ValueError(f"problems must be {kind.__module__.rsplit('.', 1)[-1]}.Problem instances; item {bad[0]} is "
                         f"{type(problems[bad[0]]).__name__}")
    return texts, problems


def outcome_scores(texts: Sequence[str], problems: Sequence[Problem]) -> np.ndarray:
    """Outcome verifier: float32 [R], 1.0 where the text's ``A: <n>`` line equals the problem's answer.

    A text with no answer line scores 0. Only the answer is checked, not the steps.
    """
    texts, problems = _check(texts, problems, need_problems=True)
    return np.array([float(parse(t).answer == p.answer) for t, p in zip(texts, problems)], np.float32)


def step_scores(text: str, problem: Problem | None = None) -> np.ndarray:
    """Process verifier of one text: float32 [number of step lines], 1.0 per correct step.

    A step scores 1 when its line parses and its result is its inputs' sum or difference.
    With ``problem`` given, its inputs must also be ones the chain allows at that line, in any
    order (see :meth:`Problem.ordered_solution`): the right side is a term of the chain
    (operator and operand) not used yet, and the left side is the previous step's result, or on
    the first step line another unused ``+`` term. A line uses the terms it names even when its
    arithmetic is wrong, so an arithmetic slip costs its own step only, while a later step that
    carries it forward correctly still scores 1. Malformed lines and lines after every term is
    used score 0; missing steps are not scored (the outcome verifier sees them).
    """
    parsed = parse(text)
    unused = None if problem is None else collections.Counter(problem.terms())
    out, previous = [], None
    for step in parsed.steps:
        ok = step is not None and step.correct
        if step is not None and unused is not None:
            left_ok = step.left == previous
            if previous is None and unused[("+", step.left)] > 0:
                unused[("+", step.left)] -= 1
                left_ok = True
            right_ok = unused[(step.op, step.right)] > 0
            if right_ok:
                unused[(step.op, step.right)] -= 1
            ok = ok and left_ok and right_ok
        if step is not None:
            previous = step.result
        out.append(float(ok))
    return np.array(out, np.float32)


def process_scores(texts: Sequence[str], problems: Sequence[Problem] | None = None) -> list[np.ndarray]:
    """Process verifier: one float32 array of per-step scores (see :func:`step_scores`) per text."""
    texts, problems = _check(texts, problems, need_problems=False)
    return [step_scores(t, p) for t, p in zip(texts, problems)]


LINE = 16       # characters of a wrong line the feedback quotes (a right step line has at most 14)


def feedback(prompt: str, attempt: str) -> str | None:
    """External feedback for ``meta.refine``, read from the prompt (it states the whole problem):
    ``None`` when the attempt's answer is right, else one line in the task's own symbols (its
    tokenizer has no letters): ``"? <line>\n"`` for the first step :func:`step_scores` finds wrong,
    or ``"? A: <answer>\n"`` (the wrong or missing answer line) when every step is right."""
    p, parsed = from_prompt(prompt), parse(attempt)
    if parsed.answer == p.answer:
        return None
    lines = [line.strip() for line in attempt.split("\n") if line.strip()]     # as parse() reads them
    wrong = [i for i, ok in enumerate(step_scores(attempt, p)) if not ok]
    return f"? {lines[wrong[0]][:LINE]}\n" if wrong else f"? A: {'' if parsed.answer is None else str(parsed.answer)[:LINE]}\n"


def reference_answer(reference) -> int:
    """The integer answer of a reference: an ``arith.Problem``, an int, a whole float or a string of
    digits (as read from a dataset); otherwise a ``ValueError`` naming it."""
    if isinstance(reference, Problem):
        return reference.answer
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        return int(reference)
    if isinstance(reference, float) and reference.is_integer():
        return int(reference)
    if isinstance(reference, str) and reference.strip().removeprefix("-").isdigit():
        return int(reference)
    raise ValueError(f"the outcome verifier needs an integer answer (or arith.Problem) as each reference, "
                     f"got {reference!r}")


class OutcomeVerifier(FunctionScorer):
    """The outcome verifier as a scorer: 1.0 where the rollout's ``A: <n>`` equals the reference's answer.

    References are ``arith.Problem`` instances or answers (see :func:`reference_answer`).
    """

    def __init__(self):
        super().__init__(lambda prompt, text, reference: float(answer(text) == reference_answer(reference)))

    def check(self, prompts, references=None) -> None:
        """A ``ValueError`` unless there is a reference this verifier can read for every prompt."""
        if references is None:
            raise ValueError("the outcome verifier needs references (arith.Problem or answers)")
        for ref in references:
            reference_answer(ref)

    def __call__(self, prompts, texts, references=None, budget=None):
        self.check(prompts, references)
        return super().__call__(prompts, texts, references, budget)


def process_verifier(aggregation: str = "min") -> ProcessScorer:
    """The process verifier (:func:`process_scores`) as a process scorer, steps aggregated by ``aggregation``.

    With ``arith.Problem`` references each step must also follow the chain; otherwise only its
    arithmetic is checked (reference-free).
    """
    def steps(prompts, texts, references):
        refs = references if references is not None else [None] * len(texts)
        return [process_scores(list(row), [ref] * len(row) if isinstance(ref, Problem) else None)
                for row, ref in zip(texts, refs)]
    return ProcessScorer(steps, aggregation)
