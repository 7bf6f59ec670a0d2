"""Every parallel and step-level meta-generator at matched budgets on tiny-arith (docs/search.md).

    python -m scripts.search_table                       # the protocol: settings on val, then test
    python -m scripts.search_table --problems 8 --val-problems 8 --budgets 4 --plot /tmp/s.png   # a quick run

The protocol, fixed before test was measured (docs/search.md): every method gets ``N`` rollouts
per problem, ``N`` in ``--budgets`` (4, 16, 64), sampled at ``eval_arith.TEMPERATURE``. The
step-level searches (``meta.search``) are scored by the process reward model ``tiny-arith-prm``
riding along as a track; each has a small grid of settings (``GRID``), and the one with the
best accuracy on the first ``--val-problems`` hard *val* problems at ``N = 16`` (ties: the first
in the grid) is the one measured on test. The parallel methods have no settings to choose
(self-consistency; best-of-N and a weighted vote by the outcome reward model ``tiny-arith-rm``
and by the PRM's final score). Test: the first ``--problems`` hard test problems, seed 0, once.
Prints the val table, the test table (accuracy, tokens generated per problem, scorer tokens,
FLOPs) and writes the accuracy-vs-tokens plot.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


import meta
import models
from meta.tasks import arith
from sampling import Sampler
from scripts.eval_arith import TEMPERATURE, max_new_tokens

BUDGETS = (4, 16, 64)
TUNE_AT = 16
FINALS = ("best", "vote")
GRID = {
    "step_beam_search": [dict(beam_width=w, final=f) for w in (2, 4) for f in FINALS],
    "dvts": [dict(beam_width=w, final=f) for w in (2, 4) for f in FINALS],
    "rebase": [dict(temperature=t, final=f) for t in (0.1, 0.3, 1.0) for f in FINALS],
    "particle_filter": [dict(ess_threshold=e, final=f) for e in (0.5, 1.0) for f in FINALS],
    # mcts: n is the children per expansion; `simulations = 4 N / children` draws about the tokens of N rollouts
    "mcts": [dict(children=k, exploration=c) for k in (2, 4) for c in (0.1, 0.3, 1.0)],
}
MAX_STEPS = 8            # a hard problem's solution is 4-5 step lines and the answer line


def parallel(orm, prm):
    """The parallel methods at a budget ``n``: name -> ``f(model, prompts, n, **common)``."""
    orm, prm = meta.RewardModel(orm), meta.RewardModel(prm)
    return {
        "self-consistency": lambda m, p, n, **kw: meta.self_consistency(m, p, n=n, **kw),
        "best-of-N (ORM)": lambda m, p, n, **kw: meta.best_of_n(m, p, n=n, scorer=orm, **kw),
        "weighted vote (ORM)": lambda m, p, n, **kw: meta.weighted_vote(m, p, n=n, scorer=orm, weight=meta.sigmoid, **kw),
        "best-of-N (PRM, final score)": lambda m, p, n, **kw: meta.best_of_n(m, p, n=n, scorer=prm, **kw),
        "weighted vote (PRM, final score)": lambda m, p, n, **kw: meta.weighted_vote(m, p, n=n, scorer=prm,
                                                                                     weight=meta.sigmoid, **kw),
    }


def step_level(prm, settings: dict):
    """The step-level searches with their chosen ``settings`` (name -> kwargs) at a budget ``n``."""
    return {f"{name} ({describe(settings[name])})": search(name, prm, settings[name]) for name in settings}


def search(name: str, prm, setting: dict):
    """Step-level search ``name`` with ``setting`` as ``f(model, prompts, n, **common)``: up to ``MAX_STEPS``
    steps, twice a full solution's slots (every step takes as many slots as its longest rollout's).
    MCTS at budget ``n`` expands ``children`` per simulation in ``4 n / children`` simulations: a step is
    about a quarter of a solution's tokens, so its tokens are about those of ``n`` rollouts."""
    def run(m, p, n, **kw):
        kw = {**kw, "max_new_tokens": 2 * kw["max_new_tokens"]}
        if name == "mcts":
            sims = max(1, 4 * n // setting["children"])
            return meta.mcts(m, p, n=setting["children"], simulations=sims, exploration=setting["exploration"],
                             scorer=prm, max_steps=MAX_STEPS, **kw)
        return meta.METHODS[name](m, p, n=n, scorer=prm, max_steps=MAX_STEPS, **setting, **kw)
    return run


def describe(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def measure(fn, model, problems, n: int, batch: int, seed: int) -> dict:
    """Accuracy and per-problem costs of ``fn`` on ``problems``, in chunks of ``batch`` problems."""
    right, budget, t0 = 0, meta.Budget(), time.time()
    for lo in range(0, len(problems), batch):
        chunk = problems[lo:lo + batch]
        r = fn(model, [p.prompt for p in chunk], n, sampler=Sampler(temperature=TEMPERATURE), seed=seed,
               max_new_tokens=max_new_tokens(problems), references=chunk, answer=arith.answer, budget=budget)
        right += sum(a == p.answer for a, p in zip(r.answers, chunk))
    per = lambda x: x / len(problems)
    return {"accuracy": right / len(problems), "tokens": per(budget.generated), "scorer_tokens": per(budget.scorer_tokens),
            "flops": per(budget.flops), "seconds": time.time() - t0}


def tune(model, prm, problems, batch: int, seed: int, keep) -> dict:
    """Each search's setting with the best val accuracy at ``TUNE_AT`` rollouts; prints the val table."""
    print(f"\n### Settings on val ({len(problems)} hard val problems, N = {TUNE_AT})\n")
    print("| method | setting | accuracy |\n|---|---|---:|")
    chosen = {}
    for name, grid in GRID.items():
        if not keep(name):
            continue
        best = None
        for setting in grid:
            acc = measure(search(name, prm, setting), model, problems, TUNE_AT, batch, seed)["accuracy"]
            print(f"| {name} | {describe(setting)} | {acc:.3f} |", flush=True)
            if best is None or acc > best[0]:
                best = (acc, setting)
        chosen[name] = best[1]
    return chosen


def plot(results: dict, path: Path, title: str) -> None:
    """Accuracy against tokens generated per problem, one line per method over the budgets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, points) in enumerate(results.items()):
        xs, ys = [p["tokens"] for p in points.values()], [p["accuracy"] for p in points.values()]
        ax.plot(xs, ys, marker="osD^vP*Xh"[i % 9], linestyle="-" if i < 5 else "--", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem (pruned rollouts included)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    """Tune on val, measure on test, print both tables, write the plot; return the test points."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=200, help="hard test problems")
    ap.add_argument("--val-problems", type=int, default=100, help="hard val problems for the settings")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="rollouts per problem")
    ap.add_argument("--batch", type=int, default=50, help="problems per call")
    ap.add_argument("--prm", default="tiny-arith-prm")
    ap.add_argument("--orm", default="tiny-arith-rm")
    ap.add_argument("--methods", nargs="+", help="only these methods (names as in the tables, by prefix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "search.png")
    args = ap.parse_args(argv)
    if min(args.problems, args.val_problems, args.batch, *args.budgets) < 1:
        raise ValueError("--problems, --val-problems, --batch and --budgets must be positive")
    model, prm, orm = models.load("tiny-arith"), models.load(args.prm), models.load(args.orm)
    start = time.time()
    keep = lambda name: not args.methods or name.startswith(tuple(args.methods))
    settings = tune(model, prm, arith.held_out("val", "hard", args.val_problems), args.batch, args.seed, keep)
    problems = arith.held_out("test", "hard", args.problems)
    methods = {k: f for k, f in {**parallel(orm, prm), **step_level(prm, settings)}.items() if keep(k)}
    print(f"\n### Test ({len(problems)} hard test problems)\n")
    print("| method | N | accuracy | tokens / problem | scorer tokens / problem | GFLOPs / problem | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {}
    for name, fn in methods.items():
        results[name] = {}
        for n in args.budgets:
            m = measure(fn, model, problems, n, args.batch, args.seed)
            results[name][n] = m
            print(f"| {name} | {n} | {m['accuracy']:.3f} | {m['tokens']:.0f} | {m['scorer_tokens']:.0f} | "
                  f"{m['flops'] / 1e9:.2f} | {m['seconds']:.0f} |", flush=True)
    plot(results, args.plot, f"tiny-arith, {len(problems)} hard test problems, N = {args.budgets}")
    print(f"\nT={TEMPERATURE}, seed {args.seed}, {time.time() - start:.0f} s; plot: {args.plot}")
    return results


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
