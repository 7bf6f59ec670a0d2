"""A tiny list-processing language: a program is a pipeline of ops over a list of integers, one op a line.

::

    filter >2
    sort
    reverse

maps ``[3,1,4]`` to ``[4,3]``. The ops (``k`` is 1-3 ASCII digits):

==============  ==========================================
``map +k``      add ``k`` to every element (``-k``: subtract, ``*k``: multiply)
``filter >k``   keep the elements greater than ``k`` (``<k``: less than)
``filter even`` keep the even elements (``odd``: the odd ones)
``sort``        ascending
``reverse``     last element first
``take k``      the first ``k`` elements
``drop k``      all but the first ``k`` elements
``sum``         ``[sum of the elements]`` (``[0]`` for an empty list)
``max``         ``[largest element]`` (``min``: smallest); an error on an empty list
==============  ==========================================

Every op maps a list to a list, so ops compose in any order. There are no loops, and no op
lengthens a list; a program of more than :data:`MAX_STEPS` ops does not parse, and a run stops
with a :class:`RunError` as soon as a value leaves ``[-MAX_VALUE, MAX_VALUE]`` (``map *999``
a few times) or ``max`` / ``min`` meets an empty list. Malformed text is a :class:`ParseError`
naming its line, never an exception of another kind.

A ``#`` starts a comment, to the line's end: ``filter >2 # [3,4]`` is ``filter >2``. The program
task writes each op's results on the shown inputs there (a trace the model reads as it writes).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

MAX_STEPS = 16               # ops in a program: the step limit
MAX_VALUE = 10 ** 6          # a run stops once a value's magnitude exceeds this
MAX_LEN = 64                 # elements of an input list

OP_RE = re.compile(r"map ([-+*])([0-9]{1,3})|filter ([<>])([0-9]{1,3})|filter (even|odd)"
                   r"|(take|drop) ([0-9]{1,3})|(sort|reverse|sum|max|min)")
LIST_RE = re.compile(r"\[(-?[0-9]{1,7}(?:,-?[0-9]{1,7})*)?\]")


class ParseError(ValueError):
    """Program text that is not a program; the message names the line."""


class RunError(ValueError):
    """A run stopped: a value out of range or ``max`` / ``min`` of an empty list."""


@dataclasses.dataclass(frozen=True)
class Op:
    """One op: ``name`` is ``map``, ``filter``, ``take``, ``drop``, ``sort``, ``reverse``, ``sum``,
    ``max`` or ``min``; ``arg`` is ``"+3"``, ``">2"``, ``"even"``, ``"3"`` or ``""``."""
    name: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.arg}" if self.arg else self.name

    @functools.cached_property
    def apply(self) -> Callable[[tuple[int, ...]], tuple[int, ...]]:
        """The op as a function on a tuple of ints: ``op.apply(xs)`` is its output, or a :class:`RunError`
        if a value leaves the range or a ``max`` / ``min`` has no elements."""
        name, arg = self.name, self.arg
        k = int(arg[1:]) if arg[:1] in ("+", "-", "*", "<", ">") else int(arg) if arg.isdigit() else 0
        return {
            "map": {"+": lambda xs: _in_range(tuple(x + k for x in xs)),
                    "-": lambda xs: _in_range(tuple(x - k for x in xs)),
                    "*": lambda xs: _in_range(tuple(x * k for x in xs))}.get(arg[:1]),
            "filter": {">": lambda xs: tuple(x for x in xs if x > k),
                       "<": lambda xs: tuple(x for x in xs if x < k),
                       "e": lambda xs: tuple(x for x in xs if x % 2 == 0),
                       "o": lambda xs: tuple(x for x in xs if x % 2 == 1)}.get(arg[:1]),
            "take": lambda xs: xs[:k],
            "drop": lambda xs: xs[k:],
            "sort": lambda xs: tuple(sorted(xs)),
            "reverse": lambda xs: xs[::-1],
            "sum": lambda xs: _in_range((sum(xs),)),
            "max": lambda xs: (max(xs),) if xs else _empty("max"),
            "min": lambda xs: (min(xs),) if xs else _empty("min"),
        }[name]


def _in_range(xs: tuple[int, ...]) -> tuple[int, ...]:
    if xs and (max(xs) > MAX_VALUE or min(xs) < -MAX_VALUE):
        raise RunError("value out of range")
    return xs


def _empty(name: str):
    raise RunError(f"{name} of an empty list")


def code(line: str) -> str:
    """A line without its comment (from ``#`` to the end) and surrounding spaces: ``""`` for a blank line."""
    return line.split("#", 1)[0].strip()


def parse_op(line: str) -> Op:
    """One op from its line (a comment and surrounding spaces ignored); a :class:`ParseError` otherwise."""
    m = OP_RE.fullmatch(code(line))
    if m is None:
        raise ParseError(f"unknown op {code(line)[:20]!r}")
    g = m.groups()
    if g[0]:
        return Op("map", g[0] + str(int(g[1])))
    if g[2]:
        return Op("filter", g[2] + str(int(g[3])))
    if g[4]:
        return Op("filter", g[4])
    if g[5]:
        return Op(g[5], str(int(g[6])))
    return Op(g[7])


def parse(text: str) -> tuple[Op, ...]:
    """The ops of a program text, one per line that is not blank once its comment is cut.

    A :class:`ParseError` for a non-string, an empty program, a line that is no op (the message
    names its number, counting blank lines) or more than :data:`MAX_STEPS` ops.
    """
    if not isinstance(text, str):
        raise ParseError(f"a program is a string, got {type(text).__name__}")
    ops = []
    for number, line in enumerate(text.split("\n"), 1):
        if not code(line):
            continue
        if len(ops) == MAX_STEPS:
            raise ParseError(f"more than {MAX_STEPS} steps")
        try:
            ops.append(parse_op(line))
        except ParseError as e:
            raise ParseError(f"line {number}: {e}") from None
    if not ops:
        raise ParseError("empty program")
    return tuple(ops)


def run(ops, xs) -> tuple[int, ...]:
    """The output of the program ``ops`` (from :func:`parse`) on the list ``xs``.

    ``xs`` must be a list or tuple of at most :data:`MAX_LEN` ints of magnitude at most
    :data:`MAX_VALUE` (a ``ValueError`` otherwise); a :class:`RunError` if the run stops.
    """
    if not isinstance(xs, (list, tuple)) or len(xs) > MAX_LEN or any(
            isinstance(x, bool) or not isinstance(x, int) or abs(x) > MAX_VALUE for x in xs):
        raise ValueError(f"an input is a list of at most {MAX_LEN} ints in [-{MAX_VALUE}, {MAX_VALUE}], got {xs!r}")
    xs = tuple(xs)
    for op in ops:
        xs = op.apply(xs)
    return xs


def show(xs) -> str:
    """A list as the task writes it: ``[3,1,4]``, ``[]``."""
    return "[" + ",".join(map(str, xs)) + "]"


def read_list(text: str) -> tuple[int, ...]:
    """The list written as :func:`show` writes it; a ``ValueError`` for anything else."""
    m = LIST_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a list: {text.strip()[:40]!r}")
    return tuple(int(x) for x in m.group(1).split(",")) if m.group(1) else ()
