"""The sequential meta-generators at matched tokens on a task with feedback (docs/refinement.md).

    python -m scripts.refine_table                 # the protocol on tiny-arith: settings on val, then test
    python -m scripts.refine_table --problems 8 --val-problems 8 --plot /tmp/r.png   # a quick run
    python -m scripts.refine_table --model tiny-arith-feedback --only refine,verifier,self-consistency
    python -m scripts.refine_table --task tiny-program --model tiny-program-feedback --plot /tmp/p.png

The protocol, fixed before test was measured: the first ``--problems`` hard test problems, seed 0,
sampled at ``eval_arith.TEMPERATURE``, each method at a few budgets:

* refinement with external feedback (the task's ``verifiers.feedback``: on tiny-arith the first
  wrong step, from the task's checker, which knows the answer; on tiny-program the first shown
  example the program fails) with ``n`` rollouts of one draft and one revision each,
  against the same verifier used by rejection sampling (up to ``2 n`` rollouts) and best-of-``2 n``;
* backtracking with the task's process reward model (``tiny-arith-prm``; ``n`` rollouts, at most
  2 retries each; the threshold with the best accuracy on the first ``--val-problems`` hard val problems at
  ``n = 4``, from ``THRESHOLDS``) against best-of-N and a weighted vote by the same PRM's final score;
* a strategy cascade self-consistency@4 -> @16 (the agreement of the four that accepts chosen on
  val from ``AGREEMENTS``) against self-consistency@16 alone (a greedy first stage has no votes
  to agree);
* a two-model cascade, ``--model``'s self-consistency@4 -> ``--large``'s (``tiny-arith-large``)
  self-consistency@4 (the agreement chosen on val as above), against the large model's
  self-consistency@4 alone: FLOPs count each model's own parameters (a task without a larger
  policy, ``TASK-large`` in the zoo, has no such rows).

``--model`` is the policy (default: the task's; ``tiny-arith-feedback``: trained on feedback
turns); ``--only`` keeps the methods whose names contain one of its comma-separated words (and
skips the val settings of those it drops).

Prints the val choices and the test table (accuracy, tokens generated per problem, FLOPs) and
writes the accuracy-vs-tokens plot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import meta
import models
from meta import tasks
from models import zoo
from scripts.meta_table import measure, plot, search

THRESHOLDS = (0.3, 0.5, 0.7)
AGREEMENTS = (0.5, 0.75, 1.0)
# per task: a feedback line's most tokens, with room; tiny-program's rounds are cut to 176 tokens (its
# hard solutions have at most 138) so that prompt, draft, feedback and revision fit the model's 512
REFINE = {"tiny-arith": dict(max_feedback_tokens=24), "tiny-program": dict(max_feedback_tokens=64, max_new_tokens=176)}


def _drop(kw, *names):
    return {k: v for k, v in kw.items() if k not in names}


def refiner(task):
    def refine(m, p, n, **kw):
        return meta.refine(m, p, feedback=task.verifiers.feedback, rounds=1, n=n,
                           **{**_drop(kw, "references"), **REFINE[task.name]})
    return refine


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


def methods(task, prm, threshold, agreement, large, model_agreement):
    """name -> {budget label: (fn, n)}."""
    vprm, orm_verifier = meta.RewardModel(prm), task.verifiers.OutcomeVerifier()
    return {
        "refine, external feedback (1 revision)": {f"n={n}": (refiner(task), n) for n in (1, 2, 4)},
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
    ap.add_argument("--task", default="tiny-arith", choices=sorted(REFINE), help="a task with feedback")
    ap.add_argument("--problems", type=int, default=200, help="hard test problems")
    ap.add_argument("--val-problems", type=int, default=100, help="hard val problems for the settings")
    ap.add_argument("--batch", type=int, default=50, help="problems per call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="the policy (zoo name or checkpoint; default: the task's)")
    ap.add_argument("--large", help="the two-model cascade's second model (default: TASK-large, if shipped)")
    ap.add_argument("--only", default="", help="comma-separated words: keep the methods whose names hold one")
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "refinement.png")
    args = ap.parse_args(argv)
    task = tasks.get(args.task)
    args.model = args.model or task.policy
    args.large = args.large or (f"{task.policy}-large" if f"{task.policy}-large" in zoo.names() else None)
    has = lambda name: not args.only or any(w in name for w in args.only.split(","))
    keep = lambda name: has(name) and (args.large is not None or not name.startswith(("two-model", "large")))
    model, prm = models.load(args.model), models.load(task.process_reward_model)
    large = models.load(args.large) if keep("two-model cascade") or keep("large model alone") else None
    val = task.problems.held_out("val", "hard", args.val_problems)
    test = task.problems.held_out("test", "hard", args.problems)
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
    for name, budgets in methods(task, prm, threshold, agreement, large, model_agreement).items():
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
