"""Meta-generation in one command: how accuracy grows with tokens spent, on the shipped tiny model.

    python -m scripts.demo
    python -m scripts.demo --task countdown

Loads the task's shipped model (``models.load("tiny-arith")`` by default, trained by
``scripts.train_tiny``) and runs it on held-out problems of the task's hard split: greedy accuracy, sampled
accuracy and pass@k coverage for k = 1..64 (unbiased estimator), each with the tokens it
generates per problem, then the meta-generators of ``meta`` at N = 4, 16, 64: self-consistency,
weighted vote by the learned outcome reward model (``tiny-arith-rm``, ``scripts.train_tiny
--reward``), best-of-N by the outcome verifier and adaptive self-consistency. A meta-generator's
point is right when the rollout it chooses is right by the task's outcome verifier (the first
rollout with the winning answer, for a vote). Prints a table
and writes a PNG of accuracy against tokens spent.

Every row of the table comes from a *strategy* in :data:`STRATEGIES`, a ``(name, fn)`` pair
where ``fn(ctx: Context) -> list[Point]``; a meta-generator joins the table and the plot by
appending its own pair. ``Context`` runs and caches the shared greedy and sampled rollouts.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

import models
import meta
from models import zoo
from meta.adaptive import replay
from meta.pass_at_k import pass_at_k  # noqa: F401  (the estimator; kept here for callers of demo.pass_at_k)
from meta.vote import winner
from meta import tasks
from sampling import Sampler
from scripts.eval_arith import ADAPTIVE, TEMPERATURE, solve

PASS_KS = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Point:
    """One row of the table and one point of the plot: ``accuracy`` at ``tokens`` generated per problem."""
    label: str        # e.g. "pass@16"
    accuracy: float
    tokens: float


@dataclasses.dataclass
class Context:
    """The model, the problems and the demo's settings; caches the rollouts strategies share."""
    model: object
    problems: list
    samples: int = 64
    temperature: float = TEMPERATURE
    seed: int = 0
    progress: bool = True
    reward_model: str = "tiny-arith-rm"
    task: tasks.Task = tasks.get("tiny-arith")

    def _bar(self, desc: str):
        return tqdm(total=len(self.problems), desc=desc, unit="problem", disable=not self.progress)

    @functools.cached_property
    def greedy(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Greedy solutions: texts [G], tokens [G], correct bool [G]."""
        with self._bar("greedy") as bar:
            texts, lengths = solve(self.model, self.problems, progress=bar)
        texts = [t[0] for t in texts]
        return texts, lengths[:, 0], self.task.verifiers.outcome_scores(texts, self.problems) > 0

    @functools.cached_property
    def sampled(self) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """``samples`` solutions per problem at ``temperature``: texts [G][N], tokens [G, N], correct [G, N]."""
        with self._bar(f"sampling x{self.samples}") as bar:
            texts, lengths = solve(self.model, self.problems, n=self.samples, seed=self.seed,
                                   sampler=Sampler(temperature=self.temperature), progress=bar)
        flat_problems = [p for p in self.problems for _ in range(self.samples)]
        correct = self.task.verifiers.outcome_scores([t for row in texts for t in row], flat_problems) > 0
        return texts, lengths, correct.reshape(len(self.problems), self.samples)

    @functools.cached_property
    def rewards(self) -> np.ndarray:
        """The reward model's probability that each sample is right: [G, N]."""
        scorer = meta.RewardModel(models.load(self.reward_model))
        texts = self.sampled[0]
        with self._bar("reward model") as bar:
            out = []
            for lo in range(0, len(texts), 16):
                out.append(scorer([p.prompt for p in self.problems[lo:lo + 16]], texts[lo:lo + 16]))
                bar.update(len(out[-1]))
        return meta.sigmoid(np.concatenate(out))


def greedy(ctx: Context) -> list[Point]:
    """One greedy solution per problem."""
    _, tokens, correct = ctx.greedy
    return [Point("greedy", float(correct.mean()), float(tokens.mean()))]


def sampled(ctx: Context) -> list[Point]:
    """One solution sampled at the context's temperature (averaged over all samples)."""
    _, tokens, correct = ctx.sampled
    return [Point(f"T={ctx.temperature:g}", float(correct.mean()), float(tokens.mean()))]


def coverage(ctx: Context) -> list[Point]:
    """pass@k: some of k samples is right (an oracle verifier picks it); costs k samples."""
    _, tokens, correct = ctx.sampled
    n, per_sample = correct.shape[1], float(tokens.mean())
    return [Point(f"pass@{k}", float(pass_at_k(n, correct.sum(1), k).mean()), k * per_sample)
            for k in range(1, n + 1)]


META_NS = (4, 16, 64)


def _meta_points(ctx: Context, pick) -> list[Point]:
    """Points at N = 4, 16, 64 (those <= samples): ``pick(answers[:N], texts[:N], g) -> (chosen, rollouts
    used)``, ``chosen`` the index of the rollout it picks (``None``: none), right when that rollout is.

    The meta-generators draw rollouts 0..N-1 of the same seed, i.e. a prefix of the shared
    samples, so they are replayed on them instead of sampling again.
    """
    texts, tokens, correct = ctx.sampled
    answers = [[ctx.task.problems.answer(t) for t in row] for row in texts]
    out = []
    for n in [k for k in META_NS if k <= ctx.samples]:
        right, spent = [], []
        for g in range(len(ctx.problems)):
            chosen, used = pick(answers[g][:n], texts[g][:n], g)
            right.append(chosen is not None and bool(correct[g, chosen]))
            spent.append(tokens[g, :used].sum())
        out.append(Point(f"@{n}", float(np.mean(right)), float(np.mean(spent))))
    return out


def self_consistency(ctx: Context) -> list[Point]:
    """Majority vote over the answers of N samples (``meta.self_consistency``)."""
    return _meta_points(ctx, lambda a, t, g: (winner(a)[1], len(a)))


def weighted_vote(ctx: Context) -> list[Point]:
    """Votes weighted by the learned reward model's probability of being right (``meta.weighted_vote``
    with ``meta.RewardModel``, ``weight=meta.sigmoid``); tokens are the policy's (the reward model
    reads each sample once more)."""
    return _meta_points(ctx, lambda a, t, g: (winner(a, ctx.rewards[g, :len(a)])[1], len(a)))


def best_of_n_verifier(ctx: Context) -> list[Point]:
    """The best of N samples by the outcome verifier (``meta.best_of_n``; an oracle: it knows the answer)."""
    def pick(a, t, g):
        s = ctx.task.verifiers.OutcomeVerifier()([ctx.problems[g].prompt], [t], [ctx.problems[g]])[0]
        return int(np.argmax(s)), len(a)
    return _meta_points(ctx, pick)


def adaptive(ctx: Context) -> list[Point]:
    """Adaptive self-consistency with at most N samples and ``eval_arith.ADAPTIVE``'s setting (chosen on the
    val split, docs/meta.md); pays only for the samples it draws."""
    def pick(a, t, g):
        used = replay(a, len(a), **ADAPTIVE)
        return winner(a[:used])[1], used
    return _meta_points(ctx, pick)


Strategy = Callable[[Context], list[Point]]
STRATEGIES: list[tuple[str, Strategy]] = [
    ("greedy", greedy),
    ("sampled", sampled),
    ("pass@k (oracle)", coverage),
    ("self-consistency", self_consistency),
    ("weighted (RM)", weighted_vote),
    ("BoN verifier", best_of_n_verifier),
    ("adaptive SC", adaptive),
]


def _shown(label: str, ks) -> bool:
    """Whether a point gets a table row / plot marker: pass@k only for k in ``ks``, anything else always."""
    return not label.startswith("pass@") or int(label[5:]) in ks


def table(results: dict[str, list[Point]], ks=PASS_KS) -> str:
    """The results as a text table (pass@k rows only for ``ks``)."""
    lines = [f"{'strategy':<18}{'':<10}{'accuracy':>10}{'tokens/problem':>16}"]
    for name, points in results.items():
        for p in points:
            if not _shown(p.label, ks):
                continue
            lines.append(f"{name:<18}{p.label:<10}{p.accuracy:>10.3f}{p.tokens:>16.1f}")
    return "\n".join(lines)


def plot(results: dict[str, list[Point]], path: Path, title: str, ks=PASS_KS) -> None:
    """Accuracy against tokens generated per problem (log x), one series per strategy (pass@k
    marked for ``ks``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, (name, points) in enumerate(results.items()):
        xs, ys = [p.tokens for p in points], [p.accuracy for p in points]
        shown = [i for i, p in enumerate(points) if _shown(p.label, ks)]
        single = len(points) == 1          # single points drawn on top, each its own marker
        ax.plot(xs, ys, marker="osD^vP*X"[n % 8] if single else "o", markersize=8 if single else 5,
                markevery=shown, zorder=3 if single else 2, label=name)
        if len(points) > 1:
            for i in shown:
                ax.annotate(points[i].label, (xs[i], ys[i]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(ctx: Context, strategies=None) -> dict[str, list[Point]]:
    """Each strategy's points, in order."""
    return {name: fn(ctx) for name, fn in (STRATEGIES if strategies is None else strategies)}


def main(argv=None) -> dict[str, list[Point]]:
    """Run every strategy on the hard test problems, print the table, write the plot; return the points."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tiny-arith", choices=sorted(tasks.TASKS), help="the task")
    ap.add_argument("--model", help="checkpoint directory or zoo name (default: the task's)")
    ap.add_argument("--reward-model", help="reward model for the weighted vote (default: the task's)")
    ap.add_argument("--problems", type=int, default=200, help="hard test problems to run")
    ap.add_argument("--samples", type=int, default=64, help="samples per problem (largest k of pass@k)")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path("out/demo.png"))
    args = ap.parse_args(argv)
    task = tasks.get(args.task)
    args.model, args.reward_model = args.model or task.policy, args.reward_model or task.reward_model
    if args.samples < 1 or args.problems < 1:
        raise ValueError("--samples and --problems must be positive")
    if args.samples > 2048:                                   # eval_arith.solve's rows per chunk
        raise ValueError(f"--samples must be at most 2048, got {args.samples}")
    Sampler(temperature=args.temperature)                     # refused now, not after the greedy run
    from matplotlib.backend_bases import FigureCanvasBase
    kinds = FigureCanvasBase.get_supported_filetypes()
    if args.plot.suffix.lstrip(".").lower() not in kinds:
        raise ValueError(f"--plot must end in one of .{', .'.join(sorted(kinds))}, got {args.plot}")
    ks = tuple(sorted({k for k in PASS_KS if k < args.samples} | {args.samples}))   # pass@k rows, up to pass@N

    start = time.time()
    model = models.load(args.model)
    problems = task.problems.held_out("test", "hard", args.problems)
    ctx = Context(model, problems, samples=args.samples, temperature=args.temperature, seed=args.seed,
                  reward_model=args.reward_model, task=task)
    strategies = STRATEGIES
    if not zoo.resolve(args.reward_model).is_dir():          # e.g. a task whose reward model is not trained yet
        strategies = [(name, fn) for name, fn in STRATEGIES if fn is not weighted_vote]
        print(f"no reward model {args.reward_model!r}: the weighted vote is left out")
    results = run(ctx, strategies)
    print(f"\n{args.model} on {len(problems)} held-out hard problems "
          f"({problems[0].prompt.strip()} ...), {args.samples} samples each:\n")
    print(table(results, ks))
    if args.samples < min(META_NS):
        print(f"(the meta-generators run at N = {', '.join(map(str, META_NS))}: --samples {args.samples} is "
              f"fewer than {min(META_NS)})")
    plot(results, args.plot, f"{args.model}: {len(problems)} hard {task.name} problems", ks)
    print(f"\nplot: {args.plot}    ({time.time() - start:.0f} s)")
    return results


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
