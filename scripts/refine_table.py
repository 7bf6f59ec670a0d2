"""The sequential meta-generators at matched tokens on tiny-arith (docs/refinement.md).

    python -m scripts.refine_table                 # the protocol: settings on val, then test
    python -m scripts.refine_table --problems 8 --val-problems 8 --plot /tmp/r.png   # a quick run

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
  to agree).

Prints the val choices and the test table (accuracy, tokens generated per problem, FLOPs) and
writes the accuracy-vs-tokens plot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import meta
import models
from meta.tasks import arith, arith_verifiers
from scripts.search_table import measure, plot

THRESHOLDS = (0.3, 0.5, 0.7)
AGREEMENTS = (0.5, 0.75, 1.0)
MAX_STEPS = 12           # decode rounds of a backtrack: 4-6 steps, the answer, retries


def _drop(kw, *names):
    return {k: v for k, v in kw.items() if k not in names}


def refine(m, p, n, **kw):
    return meta.refine(m, p, feedback=arith_verifiers.feedback, rounds=1, n=n, max_feedback_tokens=24, **_drop(kw, "references"))


def backtrack(prm, threshold):
    return lambda m, p, n, **kw: meta.backtrack(m, p, n=n, scorer=prm, threshold=threshold, max_backtracks=2,
                                                max_steps=MAX_STEPS, **kw)


def cascade(agreement):
    def run(m, p, n, *, budget, sampler, **kw):
        kw = _drop(kw, "references")
        stages = [(m, meta.self_consistency, dict(n=k, sampler=sampler, **kw)) for k in (4, 16)]
        return meta.cascade(stages, p, accept=meta.agreement(agreement), budget=budget)
    return run


def methods(orm_verifier, prm, threshold, agreement):
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
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=200, help="hard test problems")
    ap.add_argument("--val-problems", type=int, default=100, help="hard val problems for the settings")
    ap.add_argument("--batch", type=int, default=50, help="problems per call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "refinement.png")
    args = ap.parse_args(argv)
    model, prm = models.load("tiny-arith"), models.load("tiny-arith-prm")
    val, test = arith.held_out("val", "hard", args.val_problems), arith.held_out("test", "hard", args.problems)
    acc = lambda fn, n, problems: measure(fn, model, problems, n, args.batch, args.seed)["accuracy"]
    vals = {t: acc(backtrack(prm, t), 4, val) for t in THRESHOLDS}
    threshold = max(THRESHOLDS, key=lambda t: (vals[t], -THRESHOLDS.index(t)))
    cvals = {a: acc(cascade(a), 16, val) for a in AGREEMENTS}
    agreement = max(AGREEMENTS, key=lambda a: (cvals[a], -AGREEMENTS.index(a)))
    print(f"val ({len(val)} hard problems): backtrack threshold {vals} -> {threshold}; "
          f"cascade agreement {cvals} -> {agreement}")
    print(f"\n### Test: {len(test)} hard problems\n\n| method | budget | accuracy | tokens / problem | FLOPs / problem |"
          "\n|---|---|---:|---:|---:|")
    results = {}
    for name, budgets in methods(arith_verifiers.OutcomeVerifier(), prm, threshold, agreement).items():
        for label, (fn, n) in budgets.items():
            row = measure(fn, model, test, n, args.batch, args.seed)
            results.setdefault(name, {})[label] = row
            print(f"| {name} | {label} | {row['accuracy']:.3f} | {row['tokens']:,.0f} | {row['flops']:.2e} |",
                  flush=True)
    plot(results, args.plot, f"tiny-arith, {len(test)} hard test problems: sequential meta-generators")
    return results


if __name__ == "__main__":
    main()
