"""Chained programs: several generation calls that share one decoding state.

A prompt becomes a short program: plan, then solve following the plan; generate, then extract the
answer in a constrained format; check a first step, prune, go on. Each call continues the same
rollouts from the KV cache (nothing is prefilled twice) and names what it wrote, so later
Python can read it. ``Program`` is a thin record over ``engine.start / decode / append / select``:

    p = Program(model, prompts, capacity=128, n=4)
    p.gen("work", max_new_tokens=96, stop=["A:"])          # [G][N] texts, each ending in "A:"
    p.add(" ")                                             # revives the rollouts the stop string ended
    p.gen("answer", max_new_tokens=4, sampler=Sampler(temperature=0.0, constraint=digits))
"""
from __future__ import annotations

import numpy as np

import engine
from engine.checks import stop_ids
from models.tokenizer import CONTEXT, continuation


def segment_texts(model, state, start, stop_tokens=None) -> list:
    """Each rollout's text from its token ``start`` [G, N] on, [G][N] (a final stop token left out;
    token ids joined by spaces for a model without a tokenizer)."""
    r = engine.rollouts(state)
    stops = set(np.asarray(stop_ids(model.config, stop_tokens)).tolist())
    prompt, first = np.asarray(state.prompt), np.asarray(state.cache.pstart)
    g, n = state.shape
    out = [[None] * n for _ in range(g)]
    for i in range(g):
        for m in range(n):
            a, b = int(start[i, m]), int(r.lengths[i, m])
            ids = r.tokens[i, m, a:b].tolist()
            ids = ids[:-1] if ids and ids[-1] in stops else ids
            if model.tokenizer is None:
                out[i][m] = " ".join(map(str, ids))
                continue
            context = r.tokens[i, m, max(0, a - CONTEXT):a].tolist() or prompt[i, first[i]:][-CONTEXT:].tolist()
            out[i][m] = continuation(model.tokenizer, context, ids)
    return out


class Program:
    """Generation calls over ``n`` rollouts of each prompt, sharing one state (see the module docstring).

    ``capacity``: the rollout block's slots, for every call's tokens together; ``tracks``: models riding
    along (``engine.start``). ``parts[name]`` holds what the call ``name`` wrote, [G][N] texts.
    """

    def __init__(self, model, prompts, *, capacity: int, n: int = 1, seed: int = 0, tracks=None):
        self.model, self.tracks, self.parts = model, tracks, {}
        self.state = engine.start(model, prompts, capacity=capacity, n=n, seed=seed, tracks=tracks)

    @property
    def lengths(self) -> np.ndarray:
        """int [G, N]: tokens of each rollout so far."""
        return np.asarray(self.state.cache.length).reshape(self.state.shape)

    def gen(self, name: str, *, max_new_tokens: int, sampler=None, stop_tokens=None, step_tokens=None,
            stop=None, keep_stop: bool = True) -> list:
        """Decode every unfinished rollout (``engine.decode``'s settings) and record its new text as
        ``parts[name]``; returns it. A rollout a stop string (kept in the text unless ``keep_stop=False``)
        or a stop token ended stays ended until :meth:`add` gives it more; one a step delimiter paused
        goes on in the next call."""
        start = self.lengths
        self.state = engine.decode(self.model, self.state, max_new_tokens=max_new_tokens, sampler=sampler,
                                   stop_tokens=stop_tokens, step_tokens=step_tokens, stop=stop, tracks=self.tracks)
        text = segment_texts(self.model, self.state, start, stop_tokens)
        if stop and not keep_stop:
            text = [[_cut(t, stop) for t in row] for row in text]
        self.parts[name] = text
        return text

    def add(self, text) -> None:
        """Append ``text`` (one string or token ids for every rollout, or [G][N] of them) to every rollout."""
        self.state = engine.append(self.model, self.state, text, tracks=self.tracks)

    def select(self, indices, *, rekey=False) -> None:
        """Keep, reorder or copy rollouts (``engine.select``); the recorded parts move with them."""
        idx = np.asarray(indices)
        self.state = engine.select(self.state, idx, rekey=rekey)
        self.parts = {k: [[row[j] for j in idx[g]] for g, row in enumerate(v)] for k, v in self.parts.items()}

    def texts(self) -> list:
        """Each rollout's whole text after its prompt, [G][N]."""
        return segment_texts(self.model, self.state, np.zeros(self.state.shape, int))


def _cut(text: str, stop) -> str:
    for s in stop:
        if text.endswith(s):
            return text[:-len(s)]
    return text
