"""Every meta-generator at matched budgets on every task (docs/science.md).

    python -m scripts.meta_table --task all         # the protocol below, on every task with shipped models
    python -m scripts.meta_table --task countdown --problems 8 --val-problems 8 --budgets 4 --doc /tmp/s.md
    python -m scripts.meta_table --methods greedy self-consistency rebase     # some methods (names by prefix)

The protocol, written down before any test number was read (docs/science.md): on each task, its
shipped policy ``TASK`` sampled at ``eval_arith.TEMPERATURE``, its outcome reward model ``TASK-rm``
and process reward model ``TASK-prm``; every method at ``N`` rollouts per problem, ``N`` in
``--budgets`` (4, 16, 64; greedy once), on the first ``--problems`` hard *test* problems, seed 0,
one run. A row is right where the rollout it chooses is right by the task's outcome verifier;
tokens generated (pruned and rejected ones included), scorer tokens and FLOPs per problem are
reported beside accuracy, so methods compare at the compute they spent.

* no settings: greedy; self-consistency; best-of-N and a weighted vote by the ORM and by the PRM's
  final score; MBR (ROUGE-L); adaptive self-consistency (``eval_arith.ADAPTIVE``, chosen on
  tiny-arith's val split before, for every task); and two oracles that read the reference through
  the exact outcome verifier: pass@N (best-of-N by the verifier) and rejection sampling (<= N);
* settings chosen on val: every step-level search (``meta.search``, MCTS) and backtracking, each
  with the PRM riding along as a track, over the grid ``GRID``; the setting with the best accuracy
  on the first ``--val-problems`` hard *val* problems at ``N = 16`` (ties: the first in the grid) is
  measured at every budget.

Prints each task's val and test tables and writes them, with an accuracy-vs-tokens plot per task
(``science-TASK.png`` beside it), into ``--doc`` between the markers ``<!-- meta_table TASK -->``
and ``<!-- /meta_table TASK -->`` (the rest of the page, its reading, is kept).
"""
from __future__ import annotations

import argparse
import functools
import re
import time
import types
from pathlib import Path

import jax

import meta
import models
from meta import tasks
from models import zoo
from sampling import Sampler
from scripts.eval_arith import ADAPTIVE, TEMPERATURE, max_new_tokens

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
    "backtrack": [dict(threshold=t) for t in (0.3, 0.5, 0.7)],
}
MAX_STEPS = 8            # a hard solution is at most 5 step lines and the answer line (tiny-arith, countdown)
BACKTRACK_STEPS = 12     # decode rounds of a backtrack: the steps, the answer, 2 retries
DOC = Path(__file__).resolve().parent.parent / "docs" / "science.md"


# The methods without settings at a budget ``n``: name -> ``f(model, prompts, n, s, **common)``, where ``s``
# holds the task's scorers: ``s.orm``, ``s.prm`` (``meta.RewardModel``) and ``s.verifier`` (the exact outcome verifier).
PARALLEL = {
    "greedy": lambda m, p, n, s, **kw: meta.self_consistency(m, p, n=1, **{**kw, "sampler": Sampler.greedy()}),
    "pass@N (oracle: outcome verifier)": lambda m, p, n, s, **kw: meta.best_of_n(m, p, n=n, scorer=s.verifier, **kw),
    "rejection sampling (oracle, <= N)": lambda m, p, n, s, **kw: meta.rejection_sample(m, p, n=n, scorer=s.verifier,
                                                                                       **kw),
    "self-consistency": lambda m, p, n, s, **kw: meta.self_consistency(m, p, n=n, **kw),
    "adaptive self-consistency (<= N)": lambda m, p, n, s, **kw: meta.adaptive_self_consistency(m, p, n=n, **ADAPTIVE,
                                                                                               **kw),
    "MBR (ROUGE-L)": lambda m, p, n, s, **kw: meta.mbr(m, p, n=n, utility="rouge_l", **kw),
    "best-of-N (ORM)": lambda m, p, n, s, **kw: meta.best_of_n(m, p, n=n, scorer=s.orm, **kw),
    "weighted vote (ORM)": lambda m, p, n, s, **kw: meta.weighted_vote(m, p, n=n, scorer=s.orm, weight=meta.sigmoid,
                                                                      **kw),
    "best-of-N (PRM, final score)": lambda m, p, n, s, **kw: meta.best_of_n(m, p, n=n, scorer=s.prm, **kw),
    "weighted vote (PRM, final score)": lambda m, p, n, s, **kw: meta.weighted_vote(m, p, n=n, scorer=s.prm,
                                                                                   weight=meta.sigmoid, **kw),
}


def search(name: str, prm, setting: dict):
    """Step-level method ``name`` with ``setting`` as ``f(model, prompts, n, **common)``. The searches
    take up to ``MAX_STEPS`` steps in twice a full solution's slots (every step takes as many slots as
    its longest rollout's); MCTS at budget ``n`` expands ``children`` per simulation in ``4 n /
    children`` simulations (a step is about a quarter of a solution, so about the tokens of ``n``
    rollouts); backtracking retries a step at most twice per rollout."""
    def run(m, p, n, **kw):
        if name == "backtrack":
            return meta.backtrack(m, p, n=n, scorer=prm, max_backtracks=2, max_steps=BACKTRACK_STEPS, **setting, **kw)
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
    """Accuracy (the chosen rollout by the task's outcome verifier) and per-problem costs of ``fn`` on
    ``problems``, in chunks of ``batch`` problems."""
    task, right, budget, t0 = tasks.of(problems[0]), 0, meta.Budget(), time.time()
    for lo in range(0, len(problems), batch):
        chunk = problems[lo:lo + batch]
        r = fn(model, [p.prompt for p in chunk], n, sampler=Sampler(temperature=TEMPERATURE), seed=seed,
               max_new_tokens=max_new_tokens(problems), references=chunk, answer=task.problems.answer, budget=budget)
        right += sum(task.correct(None if c is None else r.texts[g][c], p) for g, (c, p) in enumerate(zip(r.chosen, chunk)))
    per = lambda x: x / len(problems)
    return {"accuracy": right / len(problems), "tokens": per(budget.generated), "scorer_tokens": per(budget.scorer_tokens),
            "flops": per(budget.flops), "seconds": time.time() - t0}


def tune(model, prm, problems, batch: int, seed: int, keep) -> tuple[dict, list[str]]:
    """Each step-level method's setting with the best val accuracy at ``TUNE_AT`` rollouts (ties: the
    first in ``GRID``), and the val table's lines."""
    lines = [f"Settings on val ({len(problems)} hard val problems, N = {TUNE_AT}):", "",
             "| method | setting | accuracy |", "|---|---|---:|"]
    chosen = {}
    for name, grid in GRID.items():
        if not keep(name):
            continue
        accs = [measure(search(name, prm, s), model, problems, TUNE_AT, batch, seed)["accuracy"] for s in grid]
        jax.clear_caches()                                  # its compiled programs are not needed again
        for s, acc in zip(grid, accs):
            lines.append(f"| {name} | {describe(s)} | {acc:.3f} |")
            print(lines[-1], flush=True)
        chosen[name] = grid[accs.index(max(accs))]
    return chosen, lines


def plot(results: dict, path: Path, title: str) -> None:
    """Accuracy against tokens generated per problem, one line per method over the budgets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (name, points) in enumerate(results.items()):
        xs, ys = [p["tokens"] for p in points.values()], [p["accuracy"] for p in points.values()]
        ax.plot(xs, ys, marker="osD^vP*Xh"[i % 9], linestyle="-" if i < 8 else "--", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem (pruned rollouts included)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def shipped(task) -> bool:
    """Whether the zoo has the task's policy and both reward models."""
    return {task.policy, task.reward_model, task.process_reward_model} <= set(zoo.names())


def run_task(task, args, keep) -> list[str]:
    """Tune on val, measure on test, write the plot; the section's markdown lines."""
    model, orm, prm = (models.load(n) for n in (task.policy, task.reward_model, task.process_reward_model))
    start, problems = time.time(), task.problems.held_out("test", "hard", args.problems)
    settings, lines = tune(model, prm, task.problems.held_out("val", "hard", args.val_problems), args.batch,
                           args.seed, keep)
    s = types.SimpleNamespace(orm=meta.RewardModel(orm), prm=meta.RewardModel(prm), verifier=task.verifiers.OutcomeVerifier())
    methods = {**{k: functools.partial(f, s=s) for k, f in PARALLEL.items()},
               **{f"{k} ({describe(v)})": search(k, prm, v) for k, v in settings.items()}}
    lines += ["", f"Test ({len(problems)} hard test problems; N rollouts per problem):", "",
              "| method | N | accuracy | tokens / problem | scorer tokens / problem | GFLOPs / problem | wall s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    results = {}
    for name, fn in methods.items():
        if not keep(name):
            continue
        for n in (1,) if name == "greedy" else args.budgets:
            m = results.setdefault(name, {})[n] = measure(fn, model, problems, n, args.batch, args.seed)
            lines.append(f"| {name} | {n} | {m['accuracy']:.3f} | {m['tokens']:.0f} | {m['scorer_tokens']:.0f} | "
                         f"{m['flops'] / 1e9:.2f} | {m['seconds']:.0f} |")
            print(lines[-1], flush=True)
        jax.clear_caches()      # this method's compiled programs (~0.1 GB each on CPU) are not needed again: docs/perf.md
    png = args.doc.parent / f"science-{task.name}.png"
    plot(results, png, f"{task.name}, {len(problems)} hard test problems, N = {args.budgets}")
    return lines + ["", f"T={TEMPERATURE}, seed {args.seed}, {time.time() - start:.0f} s.", "",
                    f"![{task.name}: accuracy against tokens]({png.name})"]


def write_section(doc: Path, name: str, lines: list[str]) -> None:
    """Put ``lines`` between ``name``'s markers in ``doc`` (appended, markers and all, when absent)."""
    begin, end = f"<!-- meta_table {name} -->", f"<!-- /meta_table {name} -->"
    block = "\n".join([begin, *lines, end])
    text = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text.lstrip("\n"))


def main(argv=None) -> None:
    """Measure the chosen tasks and write their sections of ``--doc``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tiny-arith", choices=["all", *sorted(tasks.TASKS)],
                    help="a task, or every task whose models are shipped")
    ap.add_argument("--problems", type=int, default=100, help="hard test problems")
    ap.add_argument("--val-problems", type=int, default=50, help="hard val problems for the settings")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="rollouts per problem")
    ap.add_argument("--batch", type=int, default=25, help="problems per call (results do not depend on it; "
                                                           "countdown's MCTS at N = 64 needs <= 25 in 16 GiB)")
    ap.add_argument("--methods", nargs="+", help="only the methods whose names start with one of these")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", type=Path, default=DOC, help="the page to write the tables into")
    args = ap.parse_args(argv)
    if min(args.problems, args.val_problems, args.batch, *args.budgets) < 1:
        raise ValueError("--problems, --val-problems, --batch and --budgets must be positive")
    known = [*PARALLEL, *GRID]                               # a --methods word that matches nothing: refused first
    unknown = [w for w in args.methods or () if not any(n.startswith(w) for n in known)]
    if unknown:
        raise ValueError(f"--methods {unknown} match no method; the methods: {', '.join(known)}")
    keep = lambda name: not args.methods or name.startswith(tuple(args.methods))
    chosen = list(tasks.TASKS.values()) if args.task == "all" else [tasks.get(args.task)]
    for task in chosen:
        if not shipped(task):
            if args.task != "all":
                raise ValueError(f"{task.name} has no shipped policy and reward models in models/zoo")
            print(f"{task.name}: not measured, models/zoo lacks its policy or reward models", flush=True)
            write_section(args.doc, task.name, [f"Not measured: `models/zoo` has no `{task.policy}` policy at the "
                                                f"target level and its reward models yet."])
            continue
        print(f"\n## {task.name}\n", flush=True)
        write_section(args.doc, task.name, run_task(task, args, keep))


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
