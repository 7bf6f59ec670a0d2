"""The countdown task's verifiers: on text, and as the scorers meta-generators take.

On lists of texts (the generated solutions, i.e. what follows the prompt):

* outcome: ``texts[R], problems[R] -> scores[R]`` — 1.0 where the solution is right: every step
  parses, uses available numbers (each given or derived number at most once), has its arithmetic
  right by the task's rules, and the last step's result and the ``A:`` line are the target
  (:func:`outcome_scores`, :func:`correct`);
* process: ``texts[R], problems[R] | None -> [scores[steps_r] per text]`` — 1.0 for each step that
  is right and after which the target is still reachable from the numbers left (the exact solver
  decides) (:func:`process_scores`, :func:`step_scores`).

As scorers (``scorer(prompts, texts[G][N], references, budget) -> [G, N]``, see
:mod:`meta.scoring`): :class:`OutcomeVerifier` and :func:`process_verifier`. A countdown prompt
states the whole problem, so both read it from the prompt when no ``countdown.Problem`` reference
is given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from meta.scoring import FunctionScorer, ProcessScorer
from meta.tasks import arith_verifiers
from meta.tasks.countdown import Problem, _reach, from_prompt, parse, walk


def _check(texts, problems, need_problems: bool):
    return arith_verifiers._check(texts, problems, need_problems, Problem)


def correct(text: str, problem: Problem) -> bool:
    """Whether ``text`` solves ``problem``: at least one step, every step line parses and is right
    (available operands, right arithmetic), the last step's result is the target and the ``A:``
    line says it. Anything else (garbage, a division by zero, a number used twice) is wrong."""
    parsed = parse(text)
    if not parsed.well_formed or not parsed.steps or parsed.answer != problem.target:
        return False
    return all(ok for _, ok, _ in walk(problem, text)) and parsed.steps[-1].result == problem.target


def outcome_scores(texts: Sequence[str], problems: Sequence[Problem]) -> np.ndarray:
    """Outcome verifier: float32 [R], 1.0 where the text solves its problem (:func:`correct`)."""
    texts, problems = _check(texts, problems, need_problems=True)
    return np.array([float(correct(t, p)) for t, p in zip(texts, problems)], np.float32)


def step_scores(text: str, problem: Problem | None = None) -> np.ndarray:
    """Process verifier of one text: float32 [number of step lines], 1.0 per good step.

    Without ``problem`` a step scores 1 when its line parses and its arithmetic is right. With it,
    its operands must also be available (:func:`countdown.walk`: given numbers and earlier
    results, each used at most once), the target must still be reachable from the numbers left
    after it (the exact solver), and no earlier step may have reached the target already (the
    solution should have ended). A wrong step still spends the operands it names and adds its
    written result, so a later step is judged on the numbers the text has in hand. Malformed
    lines score 0; missing steps are not scored (the outcome verifier sees them).
    """
    if problem is None:
        return np.array([float(s is not None and s.correct) for s in parse(text).steps], np.float32)
    out, reached = [], False
    for step, ok, pool in walk(problem, text):
        nums = tuple(sorted(pool.elements()))
        out.append(float(ok and not reached and _reach(nums, problem.target, len(nums) - 1)))
        reached = reached or (ok and step.result == problem.target)
    return np.array(out, np.float32)


def process_scores(texts: Sequence[str], problems: Sequence[Problem] | None = None) -> list[np.ndarray]:
    """Process verifier: one float32 array of per-step scores (see :func:`step_scores`) per text."""
    texts, problems = _check(texts, problems, need_problems=False)
    return [step_scores(t, p) for t, p in zip(texts, problems)]


def reference_problem(prompt, reference=None) -> Problem:
    """The problem to check a rollout of ``prompt`` against: ``reference`` when it is a
    ``countdown.Problem``, else the problem the prompt states (a ``ValueError`` naming a prompt that
    is not a countdown question)."""
    return reference if isinstance(reference, Problem) else from_prompt(prompt)


class OutcomeVerifier(FunctionScorer):
    """The outcome verifier as a scorer: 1.0 where the rollout solves the problem (:func:`correct`).

    References are ``countdown.Problem`` instances, or ``None`` / anything else: the problem is
    then read from the prompt.
    """

    def __init__(self):
        super().__init__(lambda prompt, text, reference: float(correct(text, reference_problem(prompt, reference))))

    def check(self, prompts, references=None) -> None:
        """A ``ValueError`` unless every prompt's problem can be known (see :func:`reference_problem`)."""
        refs = [None] * len(prompts) if references is None else references
        for prompt, ref in zip(prompts, refs):
            reference_problem(prompt, ref)

    def __call__(self, prompts, texts, references=None, budget=None):
        self.check(prompts, references)
        return super().__call__(prompts, texts, references, budget)


def process_verifier(aggregation: str = "min") -> ProcessScorer:
    """The process verifier (:func:`process_scores`) as a process scorer, steps aggregated by
    ``aggregation``; each prompt's problem as :func:`reference_problem` finds it, and without one
    (a prompt that is not a countdown question) only each step's arithmetic is checked."""
    def steps(prompts, texts, references):
        refs = references if references is not None else [None] * len(texts)
        out = []
        for prompt, row, ref in zip(prompts, texts, refs):
            try:
                problem = reference_problem(prompt, ref)
            except ValueError:
                problem = None
            out.append(process_scores(list(row), None if problem is None else [problem] * len(row)))
        return out
    return ProcessScorer(steps, aggregation)
