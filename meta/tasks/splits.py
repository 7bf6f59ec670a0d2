"""Fixed held-out lists and a training stream for a task with difficulty levels (shared by the tasks).

A task gives its levels (each with a ``held_out`` size), a generator ``sample(rng, level_name)``
and ``key(problem)``, what makes two problems the same (``arith``: the question; ``program``:
the behaviour). ``val`` and ``test`` are then fixed-seed lists of distinct keys, disjoint from
each other, and ``train`` an endless stream that never yields a held-out key.
"""
from __future__ import annotations

import numbers
import random
import zlib
from typing import Callable, Hashable, Iterator

SPLITS = ("train", "val", "test")


class Splits:
    """The splits of one task: ``levels`` maps a name to its level (with ``held_out``), ``sample``
    draws a problem of a level, ``key`` tells problems apart, ``salt`` keeps tasks' draws apart."""

    def __init__(self, levels: dict, sample: Callable[[random.Random, str], object],
                 key: Callable[[object], Hashable], salt: str = ""):
        self.levels, self.sample, self.key, self.salt = levels, sample, key, salt
        self._lists: dict = {}
        self._keys: dict = {}

    def level(self, name: str):
        """The level called ``name``; raises ``ValueError`` for an unknown name."""
        if name not in self.levels:
            raise ValueError(f"unknown level {name!r}; known: {', '.join(self.levels)}")
        return self.levels[name]

    def _rng(self, split: str, lvl: str, seed: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.salt}{split}/{lvl}/{seed}".encode()))

    def _check_split(self, split: str, levels) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        for name in levels:
            self.level(name)

    def held_out(self, split: str, lvl: str, n: int | None = None, seed: int = 0) -> list:
        """The first ``n`` (default all: the level's ``held_out``) problems of the fixed ``val`` or
        ``test`` list of level ``lvl``.

        Each list holds problems of distinct keys, and ``val`` none of ``test``'s: a draw of the
        split's own seeded generator that repeats one is skipped. Deterministic for a given
        ``seed``; the first ``n`` are a prefix of any longer request.
        """
        self._check_split(split, [lvl])
        if split == "train":
            raise ValueError("the train split is a stream: use train_stream()")
        size = self.levels[lvl].held_out
        n = size if n is None else n
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= size:
            raise ValueError(f"n must be an int in [1, {size}] for level {lvl!r}, got {n!r}")
        return list(self._held_out(split, lvl, seed)[:n])

    def _held_out(self, split: str, lvl: str, seed: int) -> tuple:
        if (split, lvl, seed) not in self._lists:
            taken = set() if split == "test" else {self.key(p) for p in self._held_out("test", lvl, seed)}
            rng, out = self._rng(split, lvl, seed), []
            while len(out) < self.levels[lvl].held_out:
                p = self.sample(rng, lvl)
                if self.key(p) not in taken:
                    taken.add(self.key(p))
                    out.append(p)
            self._lists[split, lvl, seed] = tuple(out)
        return self._lists[split, lvl, seed]

    def held_out_keys(self, seed: int = 0) -> frozenset:
        """The keys of every held-out problem (all levels, val and test)."""
        if seed not in self._keys:
            self._keys[seed] = frozenset(self.key(p) for split in ("val", "test") for lvl in self.levels
                                         for p in self._held_out(split, lvl, seed))
        return self._keys[seed]

    def train_stream(self, mix: dict[str, float], seed: int = 0) -> Iterator:
        """Endless training problems, levels drawn with weights ``mix`` (e.g. ``{"easy": 1, "hard": 2}``).

        Deterministic per seed; never yields a problem whose key is held out: such a draw is
        redrawn at its level, so the levels keep the proportions of ``mix``.
        """
        self._check_split("train", mix)
        if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"mix needs non-negative weights with a positive sum, got {mix}")
        return self._stream(mix, seed)

    def _stream(self, mix: dict[str, float], seed: int) -> Iterator:
        names, weights = list(mix), [mix[k] for k in mix]
        banned = self.held_out_keys()
        rng = self._rng("train", ",".join(names), seed)
        while True:
            name = rng.choices(names, weights)[0]
            p = self.sample(rng, name)
            while self.key(p) in banned:
                p = self.sample(rng, name)
            yield p
