"""Program synthesis from examples, checked by execution: a verifiable task of another kind.

A problem shows three input/output examples of a hidden program in the list language of
:mod:`meta.tasks.listlang`; the solution is a program, one op per line, that fits them, each op
with its trace (a comment: the lists it leaves on the shown inputs; :meth:`Problem.write`)::

    [3,1,4,1] -> [4,3]
    [5,9,2,6] -> [9,6,5]
    [1,7,8,0] -> [8,7]
    P:
    filter >2 # [3,4] [5,9,6] [7,8]
    sort # [3,4] [5,6,9] [7,8]
    reverse # [4,3] [9,6,5] [8,7]

The verifier runs a program on the three shown and :data:`HIDDEN` held-out examples: right iff
every output matches. Programs are drawn from a small vocabulary (:data:`OPS`; a reduction
only last, never two ops of one family in a row); a problem is kept only when its program runs
on all its inputs with every value in ``[-99, 99]``, its shown outputs differ from each other,
and every op shows: without any one of them some shown output changes. Difficulty levels set the number of ops. Problems are told
apart by their prompt (the shown examples), as questions are in the other tasks: ``val`` and
``test`` are fixed lists of distinct prompts, disjoint from each other; ``train`` is an endless
stream that never yields a held-out prompt (at any level). A held-out problem's program may be
met in training on other inputs: the task is to tell from three examples which program fits.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import re
import zlib

from meta.tasks.listlang import Op, ParseError, RunError, parse, read_list, run, show
from meta.tasks.splits import Splits


@dataclasses.dataclass(frozen=True)
class Level:
    """A difficulty level: ops drawn uniformly from [min_ops, max_ops]; ``held_out`` distinct
    problems in each of its ``val`` and ``test`` lists."""
    name: str
    min_ops: int
    max_ops: int
    held_out: int = 500


LEVELS: dict[str, Level] = {
    "easy": Level("easy", 1, 2, held_out=100),
    "medium": Level("medium", 2, 3),
    "hard": Level("hard", 3, 4),
}
SHOWN, HIDDEN = 3, 5                 # examples in the prompt; held-out examples the verifier adds
MIN_LEN, MAX_LEN, TOP = 3, 5, 9      # an input: 3-5 elements in [0, 9]
BOUND = 99                           # every value of a generated problem's runs stays in [-99, 99]
MAX_OPS = max(lvl.max_ops for lvl in LEVELS.values())
ARROW, CUE, TRACE = " -> ", "P:\n", " # "
MAX_NEW_TOKENS = 192                 # a generation budget: the longest hard val or test solution is 163 tokens
ANSWER_RE = re.compile(r"(?!)")      # no answer line: every line of a solution is a step (an op)

# The generator's vocabulary, by family; a family is drawn uniformly, then one of its ops.
FAMILIES: dict[str, tuple[Op, ...]] = {
    "map": tuple(Op("map", f"{s}{k}") for s in "+-" for k in range(1, 4)) + (Op("map", "*2"),),
    "filter": tuple(Op("filter", f">{k}") for k in (2, 4, 6)) + tuple(Op("filter", f"<{k}") for k in (3, 5, 7))
    + (Op("filter", "even"), Op("filter", "odd")),
    "sort": (Op("sort"),),
    "reverse": (Op("reverse"),),
    "take": tuple(Op("take", str(k)) for k in range(1, 4)),
    "drop": tuple(Op("drop", str(k)) for k in range(1, 4)),
    "reduce": (Op("sum"), Op("max"), Op("min")),
}
OPS: tuple[Op, ...] = tuple(op for ops in FAMILIES.values() for op in ops)


def _probes() -> tuple[tuple[int, ...], ...]:
    rng = random.Random(zlib.crc32(b"program/probes"))
    return ((), (0,), (5, 5, 5, 5)) + tuple(_input(rng) for _ in range(21))


def _input(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randint(0, TOP) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))


PROBES = _probes()         # 24 fixed inputs: a program's behaviour is its outputs on them


def _output(ops, xs):
    """The output of ``ops`` on ``xs``, or None if the run stops."""
    try:
        return run(ops, xs)
    except RunError:
        return None


def behaviour_of(ops) -> tuple:
    """The outputs of ``ops`` on :data:`PROBES` (``None`` where a run stops): equal for programs
    that behave alike, so votes group them."""
    return tuple(_output(ops, xs) for xs in PROBES)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A hidden program (``ops``), its ``shown`` and ``hidden`` (input, output) examples, its level."""
    ops: tuple[Op, ...]
    shown: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    hidden: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    level: str = ""

    @property
    def prompt(self) -> str:
        """The shown examples, one ``[in] -> [out]`` line each, then ``P:`` and a newline."""
        return "".join(f"{show(i)}{ARROW}{show(o)}\n" for i, o in self.shown) + CUE

    @property
    def solution(self) -> str:
        """The hidden program as the task writes it (:meth:`write`; no trailing newline): a right answer."""
        return self.write(self.ops)

    @property
    def answer(self) -> str:
        """The hidden program's canonical text (:func:`answer` of :attr:`solution`, no traces): a reference
        only, as other programs are right too (the outcome verifier decides; ``graded_by_answer=False``)."""
        return "\n".join(map(str, self.ops))

    def write(self, ops) -> str:
        """``ops`` one a line, each with its trace: a comment of the lists it leaves on the shown inputs
        (``error`` from where a run stops). What the policy learns to write: the lists so far, next to the
        shown outputs, are what it reads to choose the next op (execution-guided synthesis)."""
        lines, states = [], [xs for xs, _ in self.shown]
        for op in ops:
            states = [None if xs is None else _output((op,), xs) for xs in states]
            lines.append(f"{op}{TRACE}" + " ".join("error" if xs is None else show(xs) for xs in states))
        return "\n".join(lines)

    def random_solution(self, rng: random.Random, swaps: int = 8) -> str:
        """A right program, its ops in a random order: ``swaps`` draws of two adjacent ops, each
        swap kept when the program stays right on every example (``sort``, ``filter >2`` and
        ``filter >2``, ``sort`` are both right). Training on these gives the policy several ways to
        write one program, as :meth:`meta.tasks.arith.Problem.random_solution` does for sums."""
        ops = list(self.ops)
        for _ in range(swaps if len(ops) > 1 else 0):
            i = rng.randrange(len(ops) - 1)
            swapped = ops[:i] + [ops[i + 1], ops[i]] + ops[i + 2:]
            if all(_output(swapped, xs) == out for xs, out in self.examples):
                ops = swapped
        return self.write(ops)

    def flawed_solution(self, rng: random.Random) -> tuple[str, str]:
        """A training pair for feedback turns: a right program in a random order
        (:meth:`random_solution`) with one mistake that a shown example exposes, and that program
        (the corrected attempt). The mistake, one kind in three: an op's constant changed (``map +3``
        for ``map +4``), an op of another family in its place, or an op left out (every op shows
        in the shown examples, so leaving one out always fails one)."""
        corrected = self.random_solution(rng)
        ops = parse(corrected)
        while True:                 # a changed op may still fit the shown examples (rarely): draw again
            at, kind = rng.randrange(len(ops)), rng.choice(("constant", "family", "skip"))
            if kind == "skip":
                flawed = ops[:at] + ops[at + 1:]
            else:
                family = next(f for f, members in FAMILIES.items() if ops[at] in members)
                pool = [op for op in (FAMILIES[family] if kind == "constant" else OPS)
                        if op != ops[at] and (kind == "constant" or op not in FAMILIES[family])
                        and (op.name not in ("sum", "max", "min") or at == len(ops) - 1)]
                flawed = ops[:at] + (rng.choice(pool),) + ops[at + 1:] if pool else ()
            if flawed and any(_output(flawed, xs) != out for xs, out in self.shown):
                return self.write(flawed), corrected

    @property
    def examples(self) -> tuple:
        """Every example the verifier checks: the shown ones, then the hidden ones."""
        return self.shown + self.hidden

    @functools.cached_property
    def behaviour(self) -> tuple:
        """:func:`behaviour_of` the hidden program."""
        return behaviour_of(self.ops)


def _bounded_run(ops, xs):
    """The output of ``ops`` on ``xs`` if the run keeps every value in [-BOUND, BOUND], else None."""
    try:
        for op in ops:
            xs = op.apply(xs)
            if op.name in ("map", "sum") and xs and (max(xs) > BOUND or min(xs) < -BOUND):
                return None
    except RunError:
        return None
    return xs


def _program(rng: random.Random, n: int) -> tuple[Op, ...]:
    """``n`` ops, each of a family drawn uniformly but never the previous op's (two maps, takes,
    drops or filters in a row are mostly one op of another constant); a reduction only last."""
    ops, family = [], None
    for i in range(n):
        family = rng.choice([f for f in FAMILIES if f != family and (f != "reduce" or i == n - 1)])
        ops.append(rng.choice(FAMILIES[family]))
    return tuple(ops)


def _examples(ops, inputs) -> tuple | None:
    """(input, output) pairs of ``ops`` on ``inputs`` if every run stays in bounds, else None."""
    outs = [_bounded_run(ops, xs) for xs in inputs]
    return None if any(o is None for o in outs) else tuple(zip(inputs, outs))


def _shows_every_op(ops, shown) -> bool:
    """Whether the program without any one of its ops changes some shown output."""
    return all(any(_output(ops[:i] + ops[i + 1:], xs) != out for xs, out in shown) for i in range(len(ops)))


def sample_problem(rng: random.Random, lvl: Level | str) -> Problem:
    """One random problem of level ``lvl`` drawn from ``rng``: redrawn until its examples are
    in bounds, its shown outputs distinct and every op shows in them (the module docstring)."""
    lvl = level(lvl) if isinstance(lvl, str) else lvl
    while True:
        ops = _program(rng, rng.randint(lvl.min_ops, lvl.max_ops))
        shown = _examples(ops, [_input(rng) for _ in range(SHOWN)])
        if shown is None or len({out for _, out in shown}) < SHOWN or not _shows_every_op(ops, shown):
            continue
        hidden = _examples(ops, [_input(rng) for _ in range(HIDDEN)])
        if hidden is not None:
            return Problem(ops, shown, hidden, lvl.name)


SPLIT = Splits(LEVELS, sample_problem, lambda p: p.prompt, salt="program/")
level = SPLIT.level                            # (name) -> Level; a ValueError for an unknown name
held_out = SPLIT.held_out                      # (split, level, n=None, seed=0) -> [Problem]: val / test lists
train_stream = SPLIT.train_stream              # (mix, seed=0) -> endless training problems
held_out_prompts = SPLIT.held_out_keys         # (seed=0) -> the prompts of every held-out problem


def read_prompt(prompt: str) -> tuple:
    """The (input, output) examples of a prompt as :attr:`Problem.prompt` writes it; a
    ``ValueError`` naming the prompt otherwise."""
    lines = prompt.split("\n") if isinstance(prompt, str) else []
    if len(lines) < 3 or lines[-2:] != [CUE.strip(), ""]:
        raise ValueError(f"not a program prompt (examples, then {CUE.strip()!r} and a newline): {prompt!r}")
    examples = []
    for line in lines[:-2]:
        parts = line.split(ARROW)
        try:
            if len(parts) != 2:
                raise ValueError(line)
            examples.append((read_list(parts[0]), read_list(parts[1])))
        except ValueError:
            raise ValueError(f"not a program prompt (each example a line '[in]{ARROW}[out]'): {prompt!r}") from None
    return tuple(examples)


def from_prompt(prompt: str, reference: str) -> Problem:
    """The problem ``prompt`` states with ``reference``, a right program's text (a dataset's answer),
    standing for the hidden one: its hidden examples are the reference's runs on :data:`PROBES`
    (those that do not stop), so a program is right when it fits the shown examples and behaves as
    the reference on the probes. A ``ValueError`` naming the prompt when it is not a program prompt,
    or the reference does not parse or fails a shown example."""
    shown = read_prompt(prompt)
    try:
        ops = parse(reference) if isinstance(reference, str) else None
    except ParseError as e:
        raise ValueError(f"the reference program of {prompt!r} does not parse: {e}") from None
    if ops is None or any(_output(ops, xs) != out for xs, out in shown):
        raise ValueError(f"the reference of {prompt!r} must be a program text that fits its shown examples, "
                         f"got {reference!r}")
    return Problem(ops, shown, tuple((xs, out) for xs in PROBES if (out := _output(ops, xs)) is not None))


def answer(text: str) -> str | None:
    """The program of a solution text, one op a line in canonical spelling, or ``None`` if it does
    not parse. The task's answer extractor; its output is itself a solution text."""
    try:
        return "\n".join(map(str, parse(text)))
    except ParseError:
        return None


def behaviour(text: str) -> tuple | None:
    """The behaviour (:func:`behaviour_of`) of a solution text's program, or ``None`` if it does not
    parse: an answer extractor that votes by what programs do, not how they are spelled."""
    try:
        return behaviour_of(parse(text))
    except ParseError:
        return None


def max_new_tokens(problems) -> int:
    """A generation budget that fits a solution of every problem: :data:`MAX_NEW_TOKENS`, the same for all."""
    return MAX_NEW_TOKENS
