"""Verifiable tasks that meta-generators are measured on, registered by name in :data:`TASKS`.

Each task is a problems module (``meta/tasks/NAME.py``) and a verifiers module; a :class:`Task`
record names them and what the scripts need besides (``scripts.train_tiny --task NAME``, and
``train_reward``, ``demo``, ``meta``, ``meta_table``). Adding a task is one entry in ``TASKS``.

The problems module provides ``LEVELS`` (with a ``"hard"`` level), ``held_out(split, level, n)``,
``train_stream(mix, seed)``, ``answer(text)`` (the extractor), ``ANSWER_RE`` (the final line) and
``max_new_tokens(problems)``; its ``Problem`` has ``prompt``, ``answer``, ``solution`` and
``random_solution(rng)``, and optionally ``flawed_solution(rng)`` (feedback turns for
``train_tiny --feedback``). The verifiers module provides ``outcome_scores(texts, problems)``,
``step_scores(text, problem)``, ``process_scores``, ``OutcomeVerifier()`` and ``process_verifier(agg)``.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType

from meta.tasks import arith, arith_verifiers, countdown, countdown_verifiers, program, program_verifiers

__all__ = ["arith", "arith_verifiers", "countdown", "countdown_verifiers", "program", "program_verifiers", "Task", "TASKS",
           "get", "of"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: its problems and verifiers modules, the training mixture of levels,
    ``graded_by_answer`` (a rollout is right exactly when its extracted answer equals the
    problem's ``answer``; otherwise only the outcome verifier knows) and ``train``:
    ``scripts.train_tiny`` flag defaults that differ from the script's own. Its models in
    ``models/zoo`` are ``NAME`` (the policy), ``NAME-rm`` and ``NAME-prm``."""
    name: str
    problems: ModuleType
    verifiers: ModuleType
    mix: dict
    graded_by_answer: bool = False
    train: dict = dataclasses.field(default_factory=dict)

    @property
    def policy(self) -> str:
        """The shipped policy's zoo name."""
        return self.name

    @property
    def reward_model(self) -> str:
        """The shipped outcome reward model's zoo name."""
        return f"{self.name}-rm"

    @property
    def process_reward_model(self) -> str:
        """The shipped process reward model's zoo name."""
        return f"{self.name}-prm"

    def correct(self, text: str | None, problem) -> bool:
        """Whether a rollout ``text`` solves ``problem`` by the outcome verifier (``None``: no rollout)."""
        return text is not None and bool(self.verifiers.outcome_scores([text], [problem])[0])


MIX = {"easy": 1.0, "medium": 2.0, "hard": 4.0}
TASKS: dict[str, Task] = {
    "tiny-arith": Task("tiny-arith", arith, arith_verifiers, MIX, graded_by_answer=True),
    # tiny-arith-large's shape: the 0.7M shape stayed at 0-3% hard greedy
    "countdown": Task("countdown", countdown, countdown_verifiers, MIX,
                      train=dict(steps=1000, seq_len=80, eval_every=100, val_problems=64, stop_at=0.45, hidden=256,
                                 layers=6, heads=8, head_dim=32, kv_heads=4, intermediate=768, lr=2e-3)),
    # letters as well as digits: 96 pieces learn the op names (``map``, ``filter`` ...) as one each;
    # traced solutions vary in length (~60-300 tokens), so rows are packed: ~2 examples a row
    "tiny-program": Task("tiny-program", program, program_verifiers, MIX,
                         train=dict(vocab_size=96, steps=4000, batch=32, pack=True, seq_len=320, max_len=512,
                                    eval_every=250, val_problems=64, stop_at=0.5)),
}


def get(name: str) -> Task:
    """The task registered as ``name``; a ``ValueError`` naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def of(problem) -> Task:
    """The task whose ``Problem`` type ``problem`` is; a ``ValueError`` otherwise."""
    for task in TASKS.values():
        if isinstance(problem, task.problems.Problem):
            return task
    raise ValueError(f"not a problem of a registered task: {problem!r}")
