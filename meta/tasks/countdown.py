"""Countdown: reach a target from a few numbers with + - * /, one operation per step (a search task).

The search benchmark of "Stream of Search" (Gandhi et al. 2024) and TinyZero. A problem gives
3-4 numbers and a target; a solution combines two available numbers per line, each given or
derived number used at most once, until a line's result is the target::

    Q: 25 3 9 75 -> 47
    75-25=50
    50-3=47
    A: 47

Rules: results are whole numbers >= 0 (``a-b`` needs ``a >= b``; ``a/b`` needs ``b > 0`` dividing
``a``); ``+`` and ``*`` take their operands in either order. Every problem is solvable (a small
exact solver, :func:`solvable`, checks it when it is drawn); the target is never one of the
given numbers and the hard level's problems need at least 3 steps. Difficulty levels set the
count of numbers, their range and the target's range.

Splits are fixed-seed: ``val`` and ``test`` are fixed lists of distinct questions, disjoint from
each other; ``train`` is an endless stream that never yields a question of the held-out splits.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import numbers
import random
import re
import zlib
from typing import Iterator

from meta.tasks import arith
from meta.tasks.arith import ANSWER_RE, DIGITS, Parsed  # noqa: F401  (the same answer line and parse result)


@dataclasses.dataclass(frozen=True)
class Level:
    """A difficulty level: ``count`` numbers drawn from [1, ``top``], a target drawn from
    [``low``, ``high``] that needs at least ``min_steps`` steps; ``held_out`` distinct problems in
    each of its ``val`` and ``test`` lists."""
    name: str
    count: int
    top: int
    low: int
    high: int
    min_steps: int = 1
    held_out: int = 1000


LEVELS: dict[str, Level] = {
    "easy": Level("easy", 3, 9, 10, 50, held_out=200),      # about 6,800 questions in all
    "medium": Level("medium", 4, 9, 10, 50, min_steps=2),
    "hard": Level("hard", 4, 12, 10, 100, min_steps=2),       # 4 numbers, as Stream of Search's problems
}
SPLITS = ("train", "val", "test")
MOST_NUMBERS = 6            # in a prompt the verifiers read (the levels have at most 4)
OPS = "+-*/"

STEP_RE = re.compile(rf"^{DIGITS}([-+*/]){DIGITS}={DIGITS}$")      # arith's DIGITS: ASCII, at most 100
PROMPT_RE = re.compile(rf"^Q: ({DIGITS[1:-1]}(?: {DIGITS[1:-1]})*) -> {DIGITS}\n?$")


def apply(a: int, op: str, b: int) -> int | None:
    """``a op b`` by the task's rules, or ``None`` where it is not allowed (a negative difference,
    a division by zero or one that leaves a remainder)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    return a // b if b and a % b == 0 else None


def _moves(nums: tuple[int, ...]):
    """Every allowed step from the sorted multiset ``nums``: ``(a, op, b, c, rest)``, ``rest`` the
    sorted multiset after it (``a >= b``: the larger operand first)."""
    seen = set()
    for i in range(len(nums)):
        for j in range(i):
            a, b = nums[i], nums[j]                     # sorted: a >= b
            if (a, b) in seen:
                continue
            seen.add((a, b))
            others = nums[:j] + nums[j + 1:i] + nums[i + 1:]
            for op in OPS:
                c = apply(a, op, b)
                if c is not None:
                    yield a, op, b, c, tuple(sorted(others + (c,)))


@functools.lru_cache(maxsize=1 << 17)
def _values(nums: tuple[int, ...], steps: int) -> frozenset[int]:
    """Every value in the sorted multiset ``nums`` or made from it in at most ``steps`` steps
    (cached: used for small multisets and few steps, whose sets are small)."""
    out = set(nums)
    if steps > 0:
        for *_, rest in _moves(nums):
            out |= _values(rest, steps - 1)
    return frozenset(out)


def _reach(nums: tuple[int, ...], target: int, steps: int) -> bool:
    """Whether ``target`` is in the sorted multiset ``nums`` or made from it in at most ``steps`` steps:
    a depth-first search down to 3 numbers or 2 steps left, then :func:`_values`."""
    if steps <= 2 or len(nums) <= 3:
        return target in _values(nums, steps)
    return target in nums or any(_reach(rest, target, steps - 1) for *_, rest in _moves(nums))


def solvable(nums, target: int, steps: int | None = None) -> bool:
    """The exact solver: can ``target`` be reached from the numbers ``nums`` (each used at most
    once) in at most ``steps`` steps (default: as many as the numbers allow)?"""
    nums = tuple(sorted(nums))
    return _reach(nums, target, len(nums) - 1 if steps is None else steps)


def shortest(nums, target: int) -> int | None:
    """The fewest steps that reach ``target`` from ``nums`` (0 when it is one of them), ``None`` if none do."""
    return next((k for k in range(len(nums)) if solvable(nums, target, k)), None)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Reach ``target`` from ``numbers`` (in the order the question writes them); ``level`` names its difficulty."""
    numbers: tuple[int, ...]
    target: int
    level: str = ""

    @property
    def question(self) -> str:
        """The question without ``Q:``, e.g. ``25 3 9 75 -> 47`` (the key of the splits)."""
        return f"{' '.join(map(str, self.numbers))} -> {self.target}"

    @property
    def prompt(self) -> str:
        """The question the model is given: ``Q: 25 3 9 75 -> 47`` and a newline."""
        return f"Q: {self.question}\n"

    @property
    def answer(self) -> int:
        """The value a right solution ends on (the target): what :func:`answer` reads from one."""
        return self.target

    def random_solution(self, rng: random.Random | None = None) -> str:
        """A shortest solution: each line a step whose result still reaches the target in the steps
        left, the larger operand first, then ``A: <target>``. With ``rng`` the step is drawn
        uniformly among those; without, it is the first in sorted order (:attr:`solution`)."""
        nums, lines = tuple(sorted(self.numbers)), []
        for left in range(shortest(nums, self.target) - 1, -1, -1):
            ok = [m for m in _moves(nums) if _reach(m[4], self.target, left)]
            a, op, b, c, nums = rng.choice(ok) if rng is not None else ok[0]
            lines.append(f"{a}{op}{b}={c}")
        return "\n".join(lines + [f"A: {self.target}"])

    @property
    def solution(self) -> str:
        """The reference solution (without the prompt): the first shortest one in sorted order."""
        return self.random_solution(None)


class Step(arith.Step):
    """One parsed step line ``left op right = result`` (``+ - * /``)."""

    @property
    def correct(self) -> bool:
        """Whether ``result`` is ``left op right`` by the task's rules (:func:`apply`)."""
        return apply(self.left, self.op, self.right) == self.result


def level(name: str) -> Level:
    """The :class:`Level` called ``name``; raises ``ValueError`` for an unknown name."""
    if name not in LEVELS:
        raise ValueError(f"unknown level {name!r}; known: {', '.join(LEVELS)}")
    return LEVELS[name]


def sample_problem(rng: random.Random, lvl: Level | str, split: str | None = None) -> Problem:
    """One random solvable problem of level ``lvl`` drawn from ``rng``: numbers uniform in
    [1, top], the target uniform in [low, high]; a draw whose target is a given number, cannot be
    reached or is reached in fewer than ``min_steps`` steps is drawn again, and so is one outside
    ``split`` (when given; checked first, as it is cheap)."""
    lvl = level(lvl) if isinstance(lvl, str) else lvl
    while True:
        p = Problem(tuple(rng.randint(1, lvl.top) for _ in range(lvl.count)), rng.randint(lvl.low, lvl.high), lvl.name)
        if split is not None and split_of(p.question) != split:
            continue
        nums = tuple(sorted(p.numbers))
        if not _reach(nums, p.target, lvl.min_steps - 1) and _reach(nums, p.target, lvl.count - 1):
            return p


def from_prompt(prompt: str) -> Problem:
    """The problem a prompt ``Q: <numbers> -> <target>`` states; a ``ValueError`` naming it otherwise."""
    m = PROMPT_RE.match(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(f"not a countdown prompt ('Q: <numbers> -> <target>'): {prompt!r}")
    if len(m.group(1).split()) > MOST_NUMBERS:               # the solver's search grows fast with the count
        raise ValueError(f"a countdown prompt has at most {MOST_NUMBERS} numbers: {prompt!r}")
    return Problem(tuple(int(x) for x in m.group(1).split()), int(m.group(2)))


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by a hash of its text: ``test`` (5% of questions),
    ``val`` (5%) or ``train``. The splits are disjoint by construction, whatever is drawn."""
    bucket = zlib.crc32(f"countdown/{question}".encode()) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _draws(split: str, lvl: str, seed: int) -> Iterator[Problem]:
    """Endless problems of level ``lvl`` in ``split`` (by :func:`split_of`), in the order a
    generator seeded by ``(split, lvl, seed)`` draws them; repeats included."""
    rng = random.Random(zlib.crc32(f"countdown/{split}/{lvl}/{seed}".encode()))
    while True:
        yield sample_problem(rng, lvl, split)


def held_out(split: str, lvl: str, n: int | None = None, seed: int = 0) -> list[Problem]:
    """The first ``n`` (default all: ``LEVELS[lvl].held_out``) problems of the fixed ``val`` or
    ``test`` list of level ``lvl``.

    Each list holds distinct questions (drawn without replacement: a repeat is skipped), and no
    question is in two splits (:func:`split_of`). Deterministic for a given ``seed``; the first
    ``n`` are a prefix of any longer request, and only those are drawn.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if split == "train":
        raise ValueError("the train split is a stream: use train_stream()")
    size = level(lvl).held_out
    n = size if n is None else n
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= size:
        raise ValueError(f"n must be an int in [1, {size}] for level {lvl!r}, got {n!r}")
    draws, out, seen = _held_out(split, lvl, seed)
    while len(out) < n:
        p = next(draws)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out[:n]


@functools.lru_cache(maxsize=None)
def _held_out(split: str, lvl: str, seed: int) -> tuple[Iterator[Problem], list[Problem], set[str]]:
    """The draws of a held-out list and the prefix of it drawn so far (grown by :func:`held_out`)."""
    return _draws(split, lvl, seed), [], set()


def train_stream(mix: dict[str, float], seed: int = 0) -> Iterator[Problem]:
    """Endless training problems, levels drawn with weights ``mix`` (e.g. ``{"easy": 1, "hard": 2}``).

    Deterministic per seed; never yields a question of a held-out split (:func:`split_of`): such
    a draw is redrawn at its level, so the levels keep the proportions of ``mix``.
    """
    for name in mix:
        level(name)
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix needs non-negative weights with a positive sum, got {mix}")
    names, weights = list(mix), [mix[k] for k in mix]
    rng = random.Random(zlib.crc32(f"countdown/train/{','.join(names)}/{seed}".encode()))
    while True:
        yield sample_problem(rng, rng.choices(names, weights)[0], "train")


def parse(text: str) -> Parsed:
    """Parse a generated solution (the text after the prompt) into steps and a final answer, as
    :func:`arith.parse` does: lines before ``A: <n>`` are step lines ``a+b=c`` (``+ - * /``), a
    line that is not one is recorded as ``None``, text after the answer line is ignored, no answer
    line gives ``answer=None`` and blank lines are skipped."""
    return arith.parse(text, STEP_RE, Step)


def answer(text: str) -> int | None:
    """The answer of a solution text, checked as far as the text alone allows: the integer of its
    ``A: <n>`` line when every step line parses, every step's arithmetic is right and ``n`` is the
    last step's result; otherwise ``None``. (Whether the steps use the given numbers needs the
    problem: the outcome verifier checks that.) The task's answer extractor for a meta-generator."""
    parsed = parse(text)
    if not parsed.well_formed or not parsed.steps or not all(s.correct for s in parsed.steps):
        return None
    return parsed.answer if parsed.answer == parsed.steps[-1].result else None


def max_new_tokens(problems) -> int:
    """A generation budget that fits a solution of every problem, with room to spare: one line per
    step, each of at most three numbers one digit wider than the larger of the target and the
    largest number squared (every shortest solution of the levels fits), and the answer line."""
    def longest(p: Problem) -> int:
        width = len(str(max(p.target, max(p.numbers) ** 2))) + 1
        return (len(p.numbers) - 1) * (3 * width + 3) + len(f"A: {p.target}")
    return max(map(longest, problems)) + 8


def walk(problem: Problem, text: str):
    """The steps of ``text`` played on ``problem``'s numbers: per step line ``(step, ok, pool)``,
    ``ok`` when it parses, its arithmetic is right and both operands are available (a number
    used twice needs two copies), ``pool`` the multiset (``collections.Counter``) after it. A
    step that parses takes the operands it names that are available and adds its written result,
    even when it is wrong, so a later step is judged on the numbers the text has in hand."""
    pool = collections.Counter(problem.numbers)
    for step in parse(text).steps:
        ok = False
        if step is not None:
            need = collections.Counter([step.left, step.right])
            ok = step.correct and all(pool[x] >= k for x, k in need.items())
            pool -= need
            pool[step.result] += 1
        yield step, ok, +pool
