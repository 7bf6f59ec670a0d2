"""Chained arithmetic written as a chain of thought: a verifiable multi-step task.

A problem is a chain of additions and subtractions, e.g. ``47+38-19``. Its solution is one
step per line and a final answer line::

    Q: 47+38-19=?
    47+38=85
    85-19=66
    A: 66

Every operand and every running total of the reference (left-to-right) solution stays within
``[0, 10**digits - 1]``. :meth:`Problem.random_solution` takes the terms in another order
(``84+18=102``, ``102-61=41``, ...): the policy is trained on those. Difficulty levels set the
number of steps and digits.
Splits are fixed-seed: ``val`` and ``test`` are fixed lists of distinct questions, disjoint from
each other; ``train`` is an endless stream that never yields a question of the held-out splits.
"""
from __future__ import annotations

import dataclasses
import random
import re

from meta.tasks.splits import Splits


@dataclasses.dataclass(frozen=True)
class Level:
    """A difficulty level: steps drawn uniformly from [min_steps, max_steps], ``digits``-digit
    numbers; ``held_out`` distinct problems in each of its ``val`` and ``test`` lists."""
    name: str
    min_steps: int
    max_steps: int
    digits: int
    held_out: int = 1000


LEVELS: dict[str, Level] = {
    "easy": Level("easy", 1, 2, 1, held_out=100),     # 900 questions in all (90 of one step)
    "medium": Level("medium", 2, 3, 2),
    "hard": Level("hard", 4, 5, 2),
}

DIGITS = r"([0-9]{1,100})"      # ASCII only (\d takes any script's digits); bounded (int() refuses > 4300)
STEP_RE = re.compile(rf"^{DIGITS}([+-]){DIGITS}={DIGITS}$")
ANSWER_RE = re.compile(rf"^A: {DIGITS}$")
PROMPT_RE = re.compile(rf"^Q: ({DIGITS}(?:[+-]{DIGITS})+)=\?\n?$")


@dataclasses.dataclass(frozen=True)
class Problem:
    """``operands[0] ops[0] operands[1] ops[1] ...``; ``level`` names its difficulty."""
    operands: tuple[int, ...]
    ops: tuple[str, ...]
    level: str = ""

    @property
    def expression(self) -> str:
        """The chain as written in the question, e.g. ``47+38-19``."""
        out = str(self.operands[0])
        for op, b in zip(self.ops, self.operands[1:]):
            out += f"{op}{b}"
        return out

    @property
    def prompt(self) -> str:
        """The question the model is given: ``Q: 47+38-19=?`` and a newline."""
        return f"Q: {self.expression}=?\n"

    def totals(self) -> list[int]:
        """Running total after each step."""
        out, t = [], self.operands[0]
        for op, b in zip(self.ops, self.operands[1:]):
            t = t + b if op == "+" else t - b
            out.append(t)
        return out

    @property
    def answer(self) -> int:
        """The value of the chain."""
        return self.totals()[-1]

    def terms(self) -> list[tuple[str, int]]:
        """The chain's signed operands, ``("+", operands[0])`` then ``(op, operand)`` for each step."""
        return [("+", self.operands[0]), *zip(self.ops, self.operands[1:])]

    def ordered_solution(self, order) -> str:
        """A chain of thought that adds the :meth:`terms` in ``order`` (a permutation of their indices).

        The first line combines ``order[0]`` and ``order[1]``; each later line takes the running
        total and the next term. ``order[0]`` must be a ``+`` term and no running total may drop
        below 0 (a ``ValueError`` otherwise); totals may exceed the level's digits.
        """
        terms, order = self.terms(), list(order)
        if sorted(order) != list(range(len(terms))):
            raise ValueError(f"order must be a permutation of 0..{len(terms) - 1}, got {order}")
        if terms[order[0]][0] != "+":
            raise ValueError(f"the first term of an order must be added, but term {order[0]} is subtracted")
        total, lines = terms[order[0]][1], []
        for i in order[1:]:
            op, b = terms[i]
            new = total + b if op == "+" else total - b
            if new < 0:
                raise ValueError(f"order {order} takes the running total below 0 ({total}{op}{b})")
            lines.append(f"{total}{op}{b}={new}")
            total = new
        return "\n".join(lines + [f"A: {total}"])

    @property
    def solution(self) -> str:
        """The reference chain of thought (without the prompt), left to right, ending with ``A: <answer>``."""
        return self.ordered_solution(range(len(self.operands)))

    def random_order(self, rng: random.Random, tries: int = 30) -> list[int]:
        """The first of ``tries`` uniform permutations of the terms that :meth:`ordered_solution`
        accepts, else the reference order."""
        order = list(range(len(self.operands)))
        for _ in range(tries):
            candidate = rng.sample(order, len(order))
            try:
                self.ordered_solution(candidate)
                return candidate
            except ValueError:
                continue
        return order

    def random_solution(self, rng: random.Random, tries: int = 30) -> str:
        """A chain of thought in a random order (:meth:`random_order`). Training on these gives the
        policy several paths to one answer, which is what makes voting over samples pay."""
        return self.ordered_solution(self.random_order(rng, tries))

    def flawed_solution(self, rng: random.Random) -> tuple[str, str]:
        """A training pair for feedback turns: a chain of thought in a random order with one mistake
        of the kinds a tiny policy makes, later steps carrying it forward correctly so the answer is
        wrong, and the same chain without it (the corrected attempt). The mistake, one kind in three:
        a step's result off by 1-10 (a slip), a step that takes an earlier step's term again instead
        of its own (a reused term), or a term left out (every step right, the answer wrong)."""
        order = self.random_order(rng)
        terms, steps = self.terms(), order[1:]
        at, kind = rng.randrange(len(steps)), rng.choice(("slip", "reuse", "skip"))
        if kind == "reuse" and at > 0:
            steps = steps[:at] + [rng.choice(order[:at + 1])] + steps[at + 1:]
        elif kind == "skip" and len(steps) > 1:
            steps = steps[:at] + steps[at + 1:]
        else:
            kind = "slip"
        delta = rng.choice([d for d in range(-10, 11) if d])
        total, out = terms[order[0]][1], []
        for i, t in enumerate(steps):
            op, b = terms[t]
            new = total + b if op == "+" else total - b
            if kind == "slip" and i == at:
                new = new + delta if new + delta >= 0 else new - delta     # a slip never writes a negative
            if new < 0:                                   # carried below 0: draw again
                return self.flawed_solution(rng)
            out.append(f"{total}{op}{b}={new}")
            total = new
        if total == self.answer:                          # a reuse that happens to land on the answer
            return self.flawed_solution(rng)
        return "\n".join(out + [f"A: {total}"]), self.ordered_solution(order)


@dataclasses.dataclass(frozen=True)
class Step:
    """One parsed step line ``left op right = result``."""
    left: int
    op: str
    right: int
    result: int

    @property
    def correct(self) -> bool:
        """Whether ``result`` is the value of ``left op right``."""
        return self.result == (self.left + self.right if self.op == "+" else self.left - self.right)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A parsed solution: one entry per step line (``None`` where the line is malformed) and the answer."""
    steps: tuple[Step | None, ...]
    answer: int | None

    @property
    def well_formed(self) -> bool:
        """Every line parsed and there is a final answer."""
        return self.answer is not None and all(s is not None for s in self.steps)


def sample_problem(rng: random.Random, lvl: Level | str) -> Problem:
    """One random problem of level ``lvl`` drawn from ``rng`` (totals stay within the digits)."""
    lvl = level(lvl) if isinstance(lvl, str) else lvl
    top = 10 ** lvl.digits - 1
    low = 0 if lvl.digits == 1 else 10 ** (lvl.digits - 1)
    steps = rng.randint(lvl.min_steps, lvl.max_steps)
    least = max(low, 1)                      # smallest operand after the first
    total = rng.randint(low, top)
    operands, ops = [total], []
    for _ in range(steps):
        op = rng.choice([op for op, ok in (("+", total + least <= top), ("-", total >= least)) if ok])
        b = rng.randint(least, top - total) if op == "+" else rng.randint(least, total)
        total = total + b if op == "+" else total - b
        operands.append(b)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops), lvl.name)


def from_prompt(prompt: str) -> Problem:
    """The problem a prompt ``Q: <chain>=?`` states (its level unknown: ``""``); a ``ValueError`` otherwise."""
    m = PROMPT_RE.match(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(f"not a tiny-arith prompt ('Q: <a>+<b>-...=?'): {prompt!r:.80}")
    parts = re.split(r"([+-])", m.group(1))
    return Problem(tuple(int(x) for x in parts[::2]), tuple(parts[1::2]))


SPLIT = Splits(LEVELS, sample_problem, lambda p: p.expression)
level = SPLIT.level                            # (name) -> Level; a ValueError for an unknown name
held_out = SPLIT.held_out                      # (split, level, n=None, seed=0) -> [Problem]: val / test lists
train_stream = SPLIT.train_stream              # (mix, seed=0) -> endless training problems
held_out_questions = SPLIT.held_out_keys       # (seed=0) -> the expressions of every held-out problem


def parse(text: str, step_re: re.Pattern = STEP_RE, step: type = Step) -> Parsed:
    """Parse a generated solution (the text after the prompt) into steps and a final answer.

    Lines before ``A: <n>`` are step lines ``a+b=c`` / ``a-b=c``; a line that is not one is
    recorded as ``None``. Text after the answer line is ignored; no answer line gives
    ``answer=None``. Blank lines are skipped. (Another task's steps: ``step_re``, whose four
    groups are ``step``'s fields, as in ``meta.tasks.countdown``.)
    """
    if not isinstance(text, str):
        raise ValueError(f"parse expects a string, got {type(text).__name__}")
    steps, answer = [], None
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        m = ANSWER_RE.match(line)
        if m:
            answer = int(m.group(1))
            break
        m = step_re.match(line)
        steps.append(step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) if m else None)
    return Parsed(tuple(steps), answer)



def answer(text: str) -> int | None:
    """The answer of a solution text: the integer of its ``A: <n>`` line, or ``None`` (no such line).

    The task's answer extractor: pass it as a meta-generator's ``answer=``.
    """
    return parse(text).answer


def max_new_tokens(problems) -> int:
    """A generation budget that fits a solution of every problem in any order, with room to spare.

    Characters bound tokens (digits are single pieces); no running total of any order exceeds
    the sum of the chain's added terms, which bounds the width of each line.
    """
    def longest(p: Problem) -> int:
        width = len(str(sum(b for op, b in p.terms() if op == "+")))
        return sum(2 * width + len(str(b)) + 3 for _, b in p.terms()[1:]) + len(f"A: {p.answer}")
    return max(map(longest, problems)) + 8
