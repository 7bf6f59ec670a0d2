"""Measure the meta-generators on the built-in task and print a markdown table (for docs/meta.md).

    python -m scripts.meta_table --problems 200

Greedy, self-consistency@16/@64, best-of-16 with the outcome verifier, weighted vote by the
process verifier (given the question as reference, never the answer; min aggregation), best-of-16
and weighted vote by the learned reward model ``tiny-arith-rm``, MBR (ROUGE-L), rejection sampling and
adaptive self-consistency (at most 64 rollouts; Beta rule at 0.8 with rounds of 4 — the
cheapest setting within 1 point of self-consistency@64 on the *val* split — at 0.95, and the
unbeatable rule) on the first
``--problems`` hard test problems of the shipped ``tiny-arith`` model.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import meta
import models
from meta.tasks import arith
from sampling import Sampler
from scripts.eval_arith import max_new_tokens


def rows(model, problems, temperature: float, seed: int, reward_model: str = "tiny-arith-rm"):
    """(name, result) for every measured setting."""
    prompts, T = [p.prompt for p in problems], max_new_tokens(problems)
    common = dict(sampler=Sampler(temperature=temperature), seed=seed, max_new_tokens=T, references=problems)
    yield "greedy", meta.self_consistency(model, prompts, n=1, **{**common, "sampler": Sampler.greedy()})
    for n in (4, 16, 64):
        yield f"self-consistency@{n}", meta.self_consistency(model, prompts, n=n, **common)
    yield "best-of-16 (outcome verifier)", meta.best_of_n(model, prompts, n=16, scorer=meta.Verifier(), **common)
    yield "best-of-16 (process verifier, min)", meta.best_of_n(model, prompts, n=16,
                                                                scorer=meta.arith_process_verifier("min"), **common)
    yield "weighted vote@16 (process verifier, min)", meta.weighted_vote(
        model, prompts, n=16, scorer=meta.arith_process_verifier("min"), **common)
    rm = meta.RewardModel(models.load(reward_model))
    yield "best-of-16 (learned reward model)", meta.best_of_n(model, prompts, n=16, scorer=rm, **common)
    yield "weighted vote@16 (learned reward model)", meta.weighted_vote(model, prompts, n=16, scorer=rm,
                                                                         weight=meta.sigmoid, **common)
    yield "MBR@16 (ROUGE-L)", meta.mbr(model, prompts, n=16, utility="rouge_l", **common)
    yield "rejection (verifier, <=16)", meta.rejection_sample(model, prompts, n=16, scorer=meta.Verifier(), **common)
    for rounds, rule, conf in ((4, "beta", 0.8), (4, "beta", 0.95), (8, "unbeatable", 0.95)):
        name = f"adaptive SC (<=64, rounds of {rounds}, {rule}{f' {conf}' if rule == 'beta' else ''})"
        yield name, meta.adaptive_self_consistency(model, prompts, n=64, round_size=rounds, rule=rule,
                                                   confidence=conf, **common)


def main(argv=None):
    """Run every setting and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-arith")
    ap.add_argument("--reward-model", default="tiny-arith-rm")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = models.load(args.model)
    problems = arith.held_out(args.split, "hard", args.problems)
    print("| strategy | accuracy | tokens generated / problem | policy forward calls | wall s |")
    print("|---|---:|---:|---:|---:|")
    start = time.time()
    for name, r in rows(model, problems, args.temperature, args.seed, args.reward_model):
        acc = np.mean([a == p.answer for a, p in zip(r.answers, problems)])
        b = r.budget
        print(f"| {name} | {acc:.3f} | {b.generated / len(problems):.1f} | {b.policy_calls} | {b.wall_s:.1f} |",
              flush=True)
    print(f"\n{len(problems)} hard problems, T={args.temperature:g}, seed {args.seed}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
