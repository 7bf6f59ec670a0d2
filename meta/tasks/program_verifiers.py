"""The program task's verifiers and feedback: on text, and as the scorers meta-generators take.

On lists of texts (the generated programs, i.e. what follows the prompt):

* outcome: ``texts[R], problems[R] -> scores[R]`` — 1.0 where the program parses and its
  outputs match on every example, shown and hidden (:func:`outcome_scores`);
* process: ``texts[R], problems[R] -> [scores[lines_r] per text]`` — 1.0 for each op line after
  which the program can still be completed into a right one (:func:`step_scores`);
* feedback: ``feedback(prompt, text) -> str | None`` — a failing shown example (input, expected
  and actual output) or the parse error, as one line; ``None`` when every shown example passes.

As scorers (``scorer(prompts, texts[G][N], references, budget) -> [G, N]``, see
:mod:`meta.scoring`): :class:`OutcomeVerifier` and :func:`process_verifier`, references
``program.Problem`` or, as a dataset gives them, right programs' texts (:func:`reference_problem`).
"""
from __future__ import annotations

import collections
import functools
from typing import Sequence

import numpy as np

from meta.scoring import FunctionScorer, ProcessScorer
from meta.tasks import arith_verifiers
from meta.tasks.listlang import MAX_STEPS, ParseError, RunError, parse, parse_op, run, show
from meta.tasks.program import ARROW, MAX_OPS, OPS, Problem, from_prompt, read_prompt

REJECT = "no: "              # the start of a feedback line


def _check(texts, problems):
    """``texts`` and ``problems`` (needed) as lists, checked as every task's verifiers check them."""
    return arith_verifiers._check(texts, problems, True, Problem)


def _outputs(ops, examples):
    """The program's output on each example's input (``None`` where the run stops)."""
    out = []
    for xs, _ in examples:
        try:
            out.append(run(ops, xs))
        except RunError:
            out.append(None)
    return out


def right(text: str | None, problem: Problem) -> bool:
    """Whether ``text`` is a program whose outputs match on all of ``problem.examples``
    (``None``, a non-parsing text or a stopped run: wrong)."""
    try:
        ops = parse(text)
    except ParseError:
        return False
    return _outputs(ops, problem.examples) == [out for _, out in problem.examples]


def outcome_scores(texts: Sequence[str | None], problems: Sequence[Problem]) -> np.ndarray:
    """Outcome verifier: float32 [R], 1.0 where the text is a program right on every example of its
    problem (:func:`right`). ``None`` (an extractor's "no answer") scores 0."""
    texts, problems = _check(texts, problems)
    return np.array([float(right(t, p)) for t, p in zip(texts, problems)], np.float32)


@functools.lru_cache(maxsize=None)
def _factor_counts(depth: int) -> dict[int, int]:
    """Each product of at most ``depth`` of the vocabulary's ``map *k`` factors -> how many it takes."""
    factors = {int(op.arg[1:]) for op in OPS if op.name == "map" and op.arg[0] == "*"}
    out = {1: 0}
    for n in range(1, depth + 1):
        out.update({a * k: n for a in list(out) for k in factors if a * k not in out})
    return out


def _subsequence(short, long) -> bool:
    rest = iter(long)
    return all(v in rest for v in short)


def _least_ops(state, target, depth: int) -> int:
    """A lower bound on the ops that take ``state`` to ``target`` (``state != target``); over ``depth``
    when none do.

    Unless a ``sum`` may make the outputs (all of length <= 1), the ops apply one map
    ``x -> a*x + b`` to every element (each factor of ``a`` and a nonzero ``b`` take a ``map`` op)
    and the others pick, reorder or reduce to one element: each target list is the image of a part
    of its state list, in order unless a ``sort`` or ``reverse`` is left, and shorter only if a
    ``filter``, ``take``, ``drop`` or reduction is left.
    """
    if all(len(t) <= 1 for t in target):
        return 1
    shrink = any(len(s) > len(t) for s, t in zip(state, target))
    pairs = [(s, collections.Counter(t), t) for s, t in zip(state, target) if t]
    best = depth + 1
    for a, maps in _factor_counts(depth).items():
        for b in {pairs[0][2][0] - a * x for x in pairs[0][0]}:
            mapped = [tuple(a * y + b for y in s) for s, _, _ in pairs]
            if all(not counts - collections.Counter(m) for m, (_, counts, _) in zip(mapped, pairs)):
                reorder = not all(_subsequence(t, m) for m, (_, _, t) in zip(mapped, pairs))
                best = min(best, maps + (b != 0) + reorder + shrink)
    return best


_MAPS = {op.arg: op for op in OPS if op.name == "map"}
_KEEP_LENGTH = tuple(op for op in OPS if op.name in ("sort", "reverse"))
_SHRINK = tuple(op for op in OPS if op.name in ("filter", "take", "drop"))
_REDUCE = tuple(op for op in OPS if op.name in ("sum", "max", "min"))


def _candidates(s0, t0):
    """The ops of :data:`program.OPS` that may take ``s0`` to ``t0`` (a superset, cheap to find)."""
    out = list(_SHRINK) * _subsequence(t0, s0) + list(_REDUCE) * (len(t0) == 1)
    if len(s0) == len(t0):
        out += _KEEP_LENGTH
        if not s0:
            out += _MAPS.values()
        else:                                   # a map is fixed by its first element
            d, (x, y) = t0[0] - s0[0], (s0[0], t0[0])
            out += [op for op in (_MAPS.get(f"+{d}"), _MAPS.get(f"-{-d}"), x and y % x == 0 and _MAPS.get(f"*{y // x}"))
                    if op]
    return out


def _one_op(state, target) -> bool:
    """Whether one op of :data:`program.OPS` takes every list of ``state`` to that of ``target``."""
    s0, t0 = state[0], target[0]
    for op in _candidates(s0, t0):
        try:
            if op.apply(s0) == t0 and all(op.apply(s) == t for s, t in zip(state, target)):
                return True
        except RunError:
            continue
    return False


def _completable(state, target, depth: int, memo: dict) -> bool:
    """Whether at most ``depth`` ops of :data:`program.OPS` take every list of ``state`` to the
    matching list of ``target`` (both tuples of lists, one per example); ``memo`` caches answers."""
    if state == target:
        return True
    if depth == 0 or any(len(s) < len(t) != 1 for s, t in zip(state, target)):
        return False                    # no op lengthens a list, but a reduction makes one of length 1
    if depth == 1:
        return _one_op(state, target)
    key = (state, depth)
    if key not in memo:
        memo[key] = _least_ops(state, target, depth) <= depth and any(
            _completable(after, target, depth - 1, memo) for after in _successors(state))
    return memo[key]


def _successors(state):
    """The states one op of :data:`program.OPS` leads to (runs that stop lead nowhere)."""
    for op in OPS:
        try:
            yield tuple(map(op.apply, state))
        except RunError:
            continue


@functools.lru_cache(maxsize=256)
def _memo(problem: Problem) -> dict:
    """The search's answers for ``problem``, kept across calls: a search scores the same prefixes
    of a problem's rollouts again after every step."""
    return {}


def step_scores(text: str, problem: Problem) -> np.ndarray:
    """Process verifier of one text: float32 [non-blank lines], 1.0 per line still on track.

    A line scores 1 when it and every line before it parse as ops and the program so far can
    still be made right on every example of ``problem``: by at most ``MAX_OPS - i`` more ops of
    the vocabulary :data:`program.OPS` after line ``i`` (none past ``MAX_OPS``). A last line with
    no newline after it ends the program (the model wrote EOS, or was cut off): it scores 1 only if
    the program is right as it stands, so a finished text's last step is its outcome. A line
    after a malformed one, whose run stops (``max`` of an empty list) or past ``MAX_STEPS`` scores 0.
    A line's comment (its trace) is not read; a line of comment only is no op here (0), where
    :func:`~meta.tasks.listlang.parse` skips it: each non-blank line is one step, as ``train_reward`` labels them.
    """
    if not isinstance(text, str) or not isinstance(problem, Problem):
        raise ValueError(f"step_scores expects a string and a program.Problem, got {type(text).__name__} "
                         f"and {type(problem).__name__}")
    lines = [line for line in text.split("\n") if line.strip()]
    finished = not text.endswith("\n")
    target = tuple(out for _, out in problem.examples)
    memo, out = _memo(problem), []
    state = tuple(xs for xs, _ in problem.examples)
    for i, line in enumerate(lines, 1):
        try:
            if state is not None and i <= MAX_STEPS:
                op = parse_op(line)
                state = tuple(op.apply(s) for s in state)
            else:
                state = None
        except (ParseError, RunError):
            state = None
        depth = 0 if finished and i == len(lines) else max(MAX_OPS - i, 0)
        out.append(float(state is not None and _completable(state, target, depth, memo)))
    return np.array(out, np.float32)


def process_scores(texts: Sequence[str], problems: Sequence[Problem]) -> list[np.ndarray]:
    """Process verifier: one float32 array of per-line scores (see :func:`step_scores`) per text."""
    texts, problems = _check(texts, problems)
    return [step_scores(t, p) for t, p in zip(texts, problems)]


def feedback(prompt: str, text: str) -> str | None:
    """What running ``text`` on the prompt's shown examples says, as one line ending in a newline;
    ``None`` when the program parses and every shown example passes (it may still fail a hidden one).

    ``no: line 2: unknown op 'sortt'`` (the parse error), ``no: [3,1,4,1] -> [3,4], want [4,3]``
    (the first failing example: its input, the program's output, the expected output) or
    ``no: [2,1] -> error: max of an empty list, want [2]`` (the run stopped). Only the prompt is
    read, so the feedback never tells the hidden examples.
    """
    examples = read_prompt(prompt)
    try:
        ops = parse(text)
    except ParseError as e:
        return f"{REJECT}{e}\n"
    for xs, want in examples:
        try:
            got = show(run(ops, xs))
        except RunError as e:
            got = f"error: {e}"
        if got != show(want):
            return f"{REJECT}{show(xs)}{ARROW}{got}, want {show(want)}\n"
    return None


def reference_problem(prompt, reference) -> Problem:
    """The problem to check a rollout of ``prompt`` against: ``reference`` when it is a
    ``program.Problem``, else the prompt's examples with ``reference`` a right program's text (a
    dataset's answer: :func:`program.from_prompt`); a ``ValueError`` naming the prompt otherwise."""
    return reference if isinstance(reference, Problem) else from_prompt(prompt, reference)


def reference_problems(prompts, references) -> list[Problem]:
    """Each prompt's problem (:func:`reference_problem`); ``references`` ``None`` is a ``ValueError``."""
    return [reference_problem(p, r) for p, r in zip(prompts, [None] * len(prompts) if references is None
                                                    else references)]


class OutcomeVerifier(FunctionScorer):
    """The outcome verifier as a scorer: 1.0 where the rollout is right on every example of its
    problem (:func:`reference_problem`: references are ``program.Problem`` or right programs' texts)."""

    def __init__(self):
        super().__init__(lambda prompt, text, problem: float(right(text, problem)))

    def check(self, prompts, references=None) -> None:
        """A ``ValueError`` unless every prompt's problem can be known (see :func:`reference_problem`)."""
        reference_problems(prompts, references)

    def __call__(self, prompts, texts, references=None, budget=None):
        return super().__call__(prompts, texts, reference_problems(prompts, references), budget)   # once a prompt


def process_verifier(aggregation: str = "min") -> ProcessScorer:
    """The process verifier (:func:`step_scores`) as a process scorer, steps aggregated by
    ``aggregation``; references as :class:`OutcomeVerifier` takes them."""
    def steps(prompts, texts, references):
        return [process_scores(list(row), [problem] * len(row))
                for row, problem in zip(texts, reference_problems(prompts, references))]
    return ProcessScorer(steps, aggregation)
