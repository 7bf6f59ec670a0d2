"""What a meta-generator spent, and an optional limit on it.

Counts are exact where the engine makes them so: ``generated`` is the sum of every used
rollout's length (its stop token included); ``prefilled`` the prompt tokens, once per prompt
per call (the shared-prefix layout); ``policy_calls`` one prefill forward per call plus one
forward per decode step (the loop runs as long as its longest row). Rows added only to pad a
batch to a compiled shape are not counted. FLOPs are an estimate: ``2 * parameters * tokens``
for the policy (generated + prefilled) and for each model scorer (the tokens it read),
ignoring attention's quadratic term, added up per call (a Budget shared by calls on different
models prices each call at its own model's size).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from engine.checks import check_int


def param_count(params) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


@dataclasses.dataclass
class Budget:
    """Spent compute, and ``max_generated``: a limit on tokens generated (``None``: no limit).

    A meta-generator checks the worst case of each generation call (rows x ``max_new_tokens``)
    against the limit before making it, so it never spends more than the limit.
    """
    max_generated: int | None = None
    generated: int = 0          # policy tokens generated (sum of rollout lengths)
    prefilled: int = 0          # policy prompt tokens prefilled
    policy_calls: int = 0       # policy forward calls (prefills + decode steps)
    scorer_calls: int = 0       # scorer forward calls (model scorers: one per batch) or calls (programmatic)
    scorer_tokens: int = 0      # tokens read by model scorers
    policy_flops: float = 0.0   # 2 x the policy's params x its tokens, summed over calls (models may differ)
    scorer_flops: float = 0.0   # the same for model scorers
    wall_s: float = 0.0

    def __post_init__(self):
        if self.max_generated is not None:
            check_int("max_generated (a token count, or None for no limit)", self.max_generated, 1)

    @property
    def flops(self) -> float:
        """Estimated FLOPs: 2 x params x tokens, for the policy and for model scorers."""
        return self.policy_flops + self.scorer_flops

    def add(self, other: "Budget") -> "Budget":
        """This budget with ``other``'s spending added to it (its limit stays); returns it."""
        for f in dataclasses.fields(self):
            if f.name != "max_generated":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def affordable(self, rows: int, max_new_tokens: int) -> int:
        """How many of ``rows`` rollouts of up to ``max_new_tokens`` fit in what is left of the limit."""
        if self.max_generated is None:
            return rows
        return max(0, min(rows, (self.max_generated - self.generated) // max_new_tokens))

    def to_json(self) -> dict:
        """The counts (and the FLOPs estimate) as a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["flops"] = self.flops
        return out
