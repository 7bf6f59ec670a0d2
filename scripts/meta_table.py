"""Measure the meta-generators on the built-in task and print a markdown table (for docs/meta.md).

    python -m scripts.meta_table --problems 200
    python -m scripts.meta_table --task countdown --problems 200

Greedy, self-consistency@16/@64, best-of-16 with the outcome verifier, weighted vote by the
process verifier (given the question as reference, never the answer; min aggregation), best-of-16
and weighted vote by the learned reward model ``tiny-arith-rm``, MBR (ROUGE-L), rejection sampling and
adaptive self-consistency (at most 64 rollouts; ``eval_arith.ADAPTIVE``, chosen on the *val*
split, the Beta rule at 0.8, and the unbeatable rule) on the first ``--problems`` hard test
problems of the shipped ``tiny-arith`` model, sampled at ``eval_arith.TEMPERATURE``.
``--rows`` keeps only the rows whose names start with one of its words (e.g. ``greedy
self-consistency@16``), for a larger ``--problems``. ``--task`` measures another task of
``meta.tasks.TASKS`` with its own models and verifiers (the settings above are tiny-arith's); a
row is right where the rollout it chooses is right by the task's outcome verifier.
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np

import meta
import models
from meta import tasks
from sampling import Sampler
from scripts.eval_arith import ADAPTIVE, TEMPERATURE, max_new_tokens


def rows(model, problems, temperature: float, seed: int, reward_model: str = "tiny-arith-rm"):
    """(name, run) for every measured setting; ``run()`` returns its ``meta.Result``."""
    prompts, T = [p.prompt for p in problems], max_new_tokens(problems)
    task = tasks.of(problems[0])
    OutcomeVerifier, process_verifier = task.verifiers.OutcomeVerifier, task.verifiers.process_verifier
    common = dict(sampler=Sampler(temperature=temperature), seed=seed, max_new_tokens=T, references=problems,
                  answer=task.problems.answer)
    rm = functools.cache(lambda: meta.RewardModel(models.load(reward_model)))   # loaded once, if a row needs it
    out = [("greedy", lambda: meta.self_consistency(model, prompts, n=1, **{**common, "sampler": Sampler.greedy()}))]
    out += [(f"self-consistency@{n}", lambda n=n: meta.self_consistency(model, prompts, n=n, **common))
            for n in (4, 16, 64)]
    out += [
        ("best-of-16 (outcome verifier)", lambda: meta.best_of_n(
            model, prompts, n=16, scorer=OutcomeVerifier(), **common)),
        ("best-of-16 (process verifier, min)", lambda: meta.best_of_n(
            model, prompts, n=16, scorer=process_verifier("min"), **common)),
        ("weighted vote@16 (process verifier, min)", lambda: meta.weighted_vote(
            model, prompts, n=16, scorer=process_verifier("min"), **common)),
        ("best-of-16 (learned reward model)", lambda: meta.best_of_n(model, prompts, n=16, scorer=rm(), **common)),
        ("weighted vote@16 (learned reward model)", lambda: meta.weighted_vote(
            model, prompts, n=16, scorer=rm(), weight=meta.sigmoid, **common)),
        ("MBR@16 (ROUGE-L)", lambda: meta.mbr(model, prompts, n=16, utility="rouge_l", **common)),
        ("rejection (verifier, <=16)", lambda: meta.rejection_sample(model, prompts, n=16, scorer=OutcomeVerifier(),
                                                                      **common)),
    ]
    for setting in (ADAPTIVE, {**ADAPTIVE, "confidence": 0.8}, dict(round_size=8, rule="unbeatable")):
        rule = setting["rule"] + (f" {setting['confidence']}" if setting["rule"] == "beta" else "")
        out.append((f"adaptive SC (<=64, rounds of {setting['round_size']}, {rule})",
                    lambda setting=setting: meta.adaptive_self_consistency(model, prompts, n=64, **setting, **common)))
    return out


def main(argv=None):
    """Run every setting and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tiny-arith", choices=sorted(tasks.TASKS))
    ap.add_argument("--model", help="default: the task's policy")
    ap.add_argument("--reward-model", help="default: the task's outcome reward model")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", nargs="+", help="only the rows whose names start with one of these")
    args = ap.parse_args(argv)
    task = tasks.get(args.task)
    args.model, args.reward_model = args.model or task.policy, args.reward_model or task.reward_model
    model = models.load(args.model)
    problems = task.problems.held_out(args.split, "hard", args.problems)
    table = rows(model, problems, args.temperature, args.seed, args.reward_model)   # settings checked here
    unknown = [w for w in args.rows or () if not any(name.startswith(w) for name, _ in table)]
    if unknown:
        raise ValueError(f"--rows {unknown} match no row; the rows: {', '.join(name for name, _ in table)}")
    print("| strategy | accuracy | tokens generated / problem | policy forward calls | wall s |")
    print("|---|---:|---:|---:|---:|")
    start = time.time()
    for name, run in table:
        if args.rows and not name.startswith(tuple(args.rows)):
            continue
        r = run()
        acc = np.mean([task.correct(None if c is None else r.texts[g][c], p)
                       for g, (c, p) in enumerate(zip(r.chosen, problems))])
        b = r.budget
        print(f"| {name} | {acc:.3f} | {b.generated / len(problems):.1f} | {b.policy_calls} | {b.wall_s:.1f} |",
              flush=True)
    print(f"\n{len(problems)} hard problems, T={args.temperature:g}, seed {args.seed}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
