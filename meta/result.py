"""``Result``: what every meta-generator returns."""
from __future__ import annotations

import dataclasses
import math

from meta.budget import Budget


def _jsonable(x):
    """``x`` with numpy scalars as Python ones and non-finite floats as ``"inf"`` / ``"-inf"`` (JSON has
    no infinity; Python's ``json`` would write the non-standard ``Infinity``)."""
    if hasattr(x, "tolist") and callable(x.tolist):          # numpy / jax arrays and scalars (prompts of ids)
        x = x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x


@dataclasses.dataclass(kw_only=True)       # built by keyword only: a field reorder cannot swap values
class Result:
    """The chosen answer per prompt, every rollout with its answer, score and the votes, and the budget.

    Per prompt ``g``: ``texts[g][r]`` rollout ``r`` (``r`` is its rollout number: rollouts drawn
    in rounds keep their numbers), ``lengths[g][r]`` its tokens, ``extracted[g][r]`` its answer
    (``None``: none), ``scores[g][r]`` its score (``None`` without a scorer), ``votes[g]`` the
    ``[answer, weight]`` pairs of a vote (empty when the method does not vote), ``chosen[g]`` the
    rollout the answer comes from (``None``: no answer), ``info[g]`` method-specific figures.
    """
    method: str
    prompts: list
    answers: list
    chosen: list
    texts: list
    lengths: list
    extracted: list
    scores: list
    votes: list
    budget: Budget
    info: list = None
    parts: list = None        # a composite method's parts (a cascade: each stage's Budget)

    def __post_init__(self):
        if self.info is None:
            self.info = [{} for _ in self.prompts]

    def prompt_json(self, g: int) -> dict:
        """Everything about prompt ``g`` as a JSON-ready dict (its generated tokens included)."""
        return _jsonable({
            "prompt": self.prompts[g], "answer": self.answers[g], "chosen": self.chosen[g],
            "tokens": int(sum(self.lengths[g])),
            "rollouts": [{"text": t, "length": n, "answer": a, "score": s} for t, n, a, s in
                         zip(self.texts[g], self.lengths[g], self.extracted[g], self.scores[g])],
            "votes": self.votes[g], "info": self.info[g]})

    def to_json(self) -> dict:
        """The whole result as a JSON-ready dict."""
        out = {"method": self.method, "budget": self.budget.to_json(),
               "prompts": [self.prompt_json(g) for g in range(len(self.prompts))]}
        if self.parts is not None:
            out["parts"] = [b.to_json() for b in self.parts]
        return out
