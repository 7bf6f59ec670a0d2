"""The sequential meta-generators at matched tokens on tiny-arith (docs/refinement.md).

    python -m scripts.refine_table                 # the protocol: settings on val, then test
    python -m scripts.refine_table --problems 8 --val-problems 8 --plot /tmp/r.png   # a quick run
    python -m scripts.refine_table --model tiny-arith-feedback --only refine,verifier,self-consistency

The protocol, fixed before test was measured: the first ``--problems`` hard test problems, seed 0,
sampled at ``eval_arith.TEMPERATURE``, each method at a few budgets:

* refinement with external feedback (``arith_verifiers.feedback``: the first wrong step, from the
  task's checker, which knows the answer) with ``n`` rollouts of one draft and one revision each,
  against the same verifier used by rejection sampling (up to ``2 n`` rollouts) and best-of-``2 n``;
* backtracking with the process reward model ``tiny-arith-prm`` (``n`` rollouts, at most 2 retries
  each; the threshold with the best accuracy on the first ``--val-problems`` hard val problems at
  ``n = 4``, from ``THRESHOLDS``) against best-of-N and a weighted vote by the same PRM's final score;
* a strategy cascade self-consistency@4 -> @16 (the agreement of the four that accepts chosen on
  val from ``AGREEMENTS``) against self-consistency@16 alone (a greedy first stage has no votes
  to agree);
* a two-model cascade, ``--model``'s self-consistency@4 -> ``--large``'s (``tiny-arith-large``)
  self-consistency@4 (the agreement chosen on val as above), against the large model's
  self-consistency@4 alone: FLOPs count each model's own parameters.

``--model`` is the policy (``tiny-arith-feedback``: trained on feedback turns); ``--only`` keeps
the methods whose names contain one of its comma-separated words (and skips the val settings of
those it drops).

Prints the val choices and the test table (accuracy, tokens generated per problem, FLOPs) and
writes the accuracy-vs-tokens plot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import meta
import models
from meta.tasks import arith, arith_verifiers
from scripts.meta_table import measure, plot, search

THRESHOLDS = (0.3, 0.5, 0.7)
AGREEMENTS = (0.5, 0.75, 1.0)


def _drop(kw, *names):
    return {k: v for k, v in kw.items() if k not in names}


def refine(m, p, n, **kw):
    return meta.refine(m, p, feedback=arith_verifiers.feedback, rounds=1, n=n, max_feedback_tokens=24, **_drop(kw, "references"))


def backtrack(prm, threshold):
    return search("backtrack", prm, dict(threshold=threshold))


def cascade(agreement, large=None):
    """Self-consistency stages, a prompt escalated while its votes agree less than ``agreement``: the
    policy's SC@4 -> SC@16, or with ``large`` the policy's SC@n -> ``large``'s SC@n."""
    def run(m, p, n, *, budget, sampler, **kw):
        kw = _drop(kw, "references")
        plan = [(m, 4), (m, 16)] if large is None else [(m, n), (large, n)]
        stages = [(x, meta.self_consistency, dict(n=k, sampler=sampler, **kw)) for x, k in plan]
        return meta.cascade(stages, p, accept=meta.agreement(agreement), budget=budget)
    return run


def methods(orm_verifier, prm, threshold, agreement, large, model_agreement):
    """name -> {budget label: (fn, n)}."""
    vprm = meta.RewardModel(prm)
    return {
        "refine, external feedback (1 revision)": {f"n={n}": (refine, n) for n in (1, 2, 4)},
        "rejection sampling (verifier)": {f"<= {2 * n}": (lambda m, p, k, **kw: meta.rejection_sample(
            m, p, n=k, scorer=orm_verifier, round_size=1, **kw), 2 * n) for n in (1, 2, 4)},
        "best-of-N (verifier)": {f"N={2 * n}": (lambda m, p, k, **kw: meta.best_of_n(
            m, p, n=k, scorer=orm_verifier, **kw), 2 * n) for n in (1, 2, 4)},
        f"backtrack (PRM, threshold {threshold})": {f"n={n}": (backtrack(prm, threshold), n) for n in (4, 16)},
        "best-of-N (PRM, final score)": {f"N={n}": (lambda m, p, k, **kw: meta.best_of_n(
            m, p, n=k, scorer=vprm, **kw), n) for n in (4, 16)},
        "weighted vote (PRM, final score)": {f"N={n}": (lambda m, p, k, **kw: meta.weighted_vote(
            m, p, n=k, scorer=vprm, weight=meta.sigmoid, **kw), n) for n in (4, 16)},
        f"cascade SC@4 -> SC@16 (agreement {agreement})": {"": (cascade(agreement), 16)},
        "self-consistency": {f"N={n}": (lambda m, p, k, **kw: meta.self_consistency(m, p, n=k, **kw), n)
                             for n in (4, 16)},
        f"two-model cascade SC@4 -> large SC@4 (agreement {model_agreement})": {
            "": (cascade(model_agreement, large), 4)},
        "large model alone, SC": {"N=4": (lambda m, p, k, **kw: meta.self_consistency(large, p, n=k, **kw), 4)},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=200, help="hard test problems")
    ap.add_argument("--val-problems", type=int, default=100, help="hard val problems for the settings")
    ap.add_argument("--batch", type=int, default=50, help="problems per call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="tiny-arith", help="the policy (zoo name or checkpoint)")
    ap.add_argument("--large", default="tiny-arith-large", help="the two-model cascade's second model")
    ap.add_argument("--only", default="", help="comma-separated words: keep the methods whose names hold one")
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "refinement.png")
    args = ap.parse_args(argv)
    keep = lambda name: not args.only or any(w in name for w in args.only.split(","))
    model, prm = models.load(args.model), models.load("tiny-arith-prm")
    large = models.load(args.large) if keep("two-model cascade") or keep("large model alone") else None
    val, test = arith.held_out("val", "hard", args.val_problems), arith.held_out("test", "hard", args.problems)
    acc = lambda fn, n, problems: measure(fn, model, problems, n, args.batch, args.seed)["accuracy"]

    def best(grid, make, n, name):                 # the setting with the best val accuracy (ties: the first)
        if not keep(name):
            return grid[0]
        vals = {x: acc(make(x), n, val) for x in grid}
        print(f"val ({len(val)} hard problems), {name}: {vals}", flush=True)
        return max(grid, key=lambda x: (vals[x], -grid.index(x)))
    threshold = best(THRESHOLDS, lambda t: backtrack(prm, t), 4, "backtrack")
    agreement = best(AGREEMENTS, cascade, 16, "cascade SC@4 -> SC@16")
    model_agreement = best(AGREEMENTS, lambda a: cascade(a, large), 4, "two-model cascade")
    print(f"\n### Test: {len(test)} hard problems\n\n| method | budget | accuracy | tokens / problem | FLOPs / problem |"
          "\n|---|---|---:|---:|---:|")
    results = {}
    for name, budgets in methods(arith_verifiers.OutcomeVerifier(), prm, threshold, agreement, large,
                                 model_agreement).items():
        if not keep(name):
            continue
        for label, (fn, n) in budgets.items():
            row = measure(fn, model, test, n, args.batch, args.seed)
            results.setdefault(name, {})[label] = row
            print(f"| {name} | {label} | {row['accuracy']:.3f} | {row['tokens']:,.0f} | {row['flops']:.2e} |",
                  flush=True)
    plot(results, args.plot, f"{args.model}, {len(test)} hard test problems: sequential meta-generators")
    return results


if __name__ == "__main__":
    main()
