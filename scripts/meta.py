"""Run a meta-generator over a JSONL dataset, one JSON line per prompt; resumable.

    python -m scripts.meta self_consistency --data problems.jsonl --out out.jsonl --n 16
    python -m scripts.meta step_beam_search --data problems.jsonl --out out.jsonl --n 16 --scorer model
    python -m scripts.meta self_consistency --task countdown --data countdown.jsonl --out out.jsonl

``--task`` (default ``tiny-arith``, see ``meta.tasks.TASKS``) sets the answer extractor, the
verifiers and the default models (``--model``: the task's policy). The step-level searches
(``step_beam_search``, ``dvts``, ``rebase``, ``particle_filter``, ``mcts``) take a process scorer:
``--scorer model`` (the reward model ``--scorer-model``, default the task's, ``tiny-arith-prm``,
riding in the decode step) or ``--scorer process-min`` etc. (the task's process verifier). A
prompt's result is ``correct`` when its chosen answer equals the reference (tiny-arith, or
``--answer text``), or for a task graded by its verifier (countdown, tiny-program) when the chosen
rollout passes the outcome verifier (tiny-program's reference is a right program's text: a rollout
must fit the shown examples and behave as it on fixed probe lists); without a reference it is not
graded. ``backtrack`` is step-level too (``--threshold``, ``--max-backtracks``); ``refine`` takes
``--feedback``: ``verifier`` (the task's own, e.g. tiny-arith's first wrong step) or ``MODULE:NAME``,
a function ``(prompt, attempt) -> str | None`` imported from a module on the path, and ``--rounds``.

One prompt's failure loses no other prompt's work: when a prompt fails on its own (a feedback
function that raises on it: ``meta.PromptError``), its line records the ``error`` (graded wrong)
and the rest of its chunk runs again without it.

Each dataset line is an object with ``"prompt"`` (a string), and optionally ``"id"`` (default:
the line number) and ``"answer"`` (the reference). With ``--chat`` each prompt is one user message,
formatted by the model's chat template (with the cue for the assistant's turn). The output's first line is a header with
the settings; each further line is one prompt's result (its ``id``, chosen ``answer``,
``correct`` when there is a reference, ``tokens`` generated and every rollout), written with
one write + flush + fsync. Prompts go in fixed chunks of ``--batch`` dataset lines.

Killed at any moment (even ``kill -9``) and started again with the same arguments, it keeps
the complete lines, drops a torn last line, reruns only chunks with missing prompts (the same
chunks, so the same draws) and writes only the missing ones: the final file has every prompt
exactly once. It refuses a malformed dataset line (naming its number), an existing output
written with different settings or by another model (the header records the model's
fingerprint), or holding a line it did not write or two results for one prompt, and an output
another run is writing (the file is locked for the run). At the end it prints a summary table.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

DEFAULT_TASK = "tiny-arith"
SCORERS = ("none", "verifier", "process-min", "process-mean", "process-prod", "process-last", "model")
SEARCHES = ("step_beam_search", "dvts", "rebase", "particle_filter", "mcts", "backtrack")   # step-level: --max-steps, --final, ...
ROUNDS = ("rejection_sample", "adaptive_self_consistency")     # draw --round-size rollouts at a time
OWN = {"refine": ("feedback", "rounds", "max_feedback_tokens"), "backtrack": ("threshold", "max_backtracks")}


def read_dataset(path: Path) -> list[dict]:
    """The dataset's items ``{"id", "prompt", "answer"}``; ``ValueError`` naming the first bad line."""
    items, seen = [], set()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            obj = _json(line, where)
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
                raise ValueError(f"{where}: \"prompt\" must be a non-empty string")
            try:
                obj["prompt"].encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{where}: \"prompt\" is not valid Unicode text ({e.reason} at character "
                                 f"{e.start + 1}: an escaped lone surrogate such as \\ud800)") from None
            item_id = obj.get("id", number)
            if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
                raise ValueError(f"{where}: \"id\" must be a string or an integer")
            if item_id in seen:
                raise ValueError(f"{where}: duplicate id {item_id!r}")
            seen.add(item_id)
            items.append({"id": item_id, "prompt": obj["prompt"], "answer": obj.get("answer"), "line": number})
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def _json(line: str, where: str):
    """The JSON value of one line, or a ``ValueError`` naming ``where`` (file:line)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{where}: not valid JSON (nested too deeply)") from None


def settings(args, data_path: Path, model) -> dict:
    """Everything that determines the output: the dataset by its hash, the model by its fingerprint
    (config, weights and tokenizer), the arguments, and with ``--chat`` the chat template's hash."""
    digest = hashlib.sha256(data_path.read_bytes()).hexdigest()
    keys = ("method", "model", "n", "temperature", "top_p", "seed", "max_new_tokens", "scorer", "scorer_model",
            "round_size", "rule", "batch", "answer", "max_steps", "beam_width", "search_temperature", "ess_threshold",
            "resampling", "simulations", "exploration", "final")
    out = {"data_sha256": digest, "model_fingerprint": model.fingerprint(), **{k: getattr(args, k) for k in keys}}
    if args.chat:                                        # the template's hash (absent without --chat: older outputs resume)
        out["chat_template_sha256"] = hashlib.sha256(model.tokenizer.chat_template.encode()).hexdigest()
    if args.task != DEFAULT_TASK:                        # tiny-arith's header is as it was before tasks
        out["task"] = args.task
    out.update({k: getattr(args, k) for k in OWN.get(args.method, ())})
    return out


@contextlib.contextmanager
def locked(out: Path):
    """Hold an exclusive lock on ``out`` (created if absent) while the block runs, so that two runs
    never write one output; a ``ValueError`` at once if another run holds it. The lock goes with
    the process, however it ends."""
    with open(out, "ab") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out} is being written by another run (it holds the file's lock); wait for it to "
                             "finish, or use another --out") from None
        yield


def load_done(out: Path, header: dict, ids: set) -> set:
    """Ids already in ``out`` (writing ``header`` if it is empty); drops a torn last line.

    ``ValueError`` if ``out`` was written with other settings, or holds a line that is not a result
    of one of ``ids`` (the dataset's), or two results of one id.
    """
    raw = out.read_bytes()
    keep = raw.rfind(b"\n") + 1                      # complete lines end with a newline
    lines = raw[:keep].decode("utf-8", errors="replace").splitlines()
    if not lines:                                    # new, or even the header was torn
        _truncate(out, 0)
        _write(out, {"header": header})
        return set()
    try:
        old = json.loads(lines[0])
    except (json.JSONDecodeError, RecursionError):
        old = None
    old = old.get("header") if isinstance(old, dict) else None
    if old != header:
        changed = (sorted(k for k in set(header) | set(old) if old.get(k) != header.get(k))
                   if isinstance(old, dict) else ["no settings header"])
        raise ValueError(f"{out} was written with different settings ({', '.join(changed)}); "
                         f"use another --out or delete it")
    if keep < len(raw):
        _truncate(out, keep)
    done = {}
    for number, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
            item_id = row["id"] if {"correct", "tokens"} <= row.keys() else None
        except (json.JSONDecodeError, RecursionError, TypeError, AttributeError, KeyError):
            item_id = None
        if not isinstance(item_id, (str, int)) or item_id not in ids:
            raise ValueError(f"{out}:{number}: not a result line this script writes (an object with an id of the "
                             "dataset, correct and tokens); use another --out or delete it")
        if item_id in done:
            raise ValueError(f"{out}:{number}: a second result for id {item_id!r} (the first is on line "
                             f"{done[item_id]}); use another --out or delete it")
        done[item_id] = number
    return set(done)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _write(path: Path, obj: dict) -> None:
    """One JSON line, appended in one call and forced to disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def make_scorer(args):
    """The scorer ``--scorer`` names (see ``SCORERS``), or ``None``. ``model`` is the reward model
    ``--scorer-model``: a step-level search takes it as a track riding in the decode step, the
    other methods score finished rollouts with it (``meta.RewardModel``)."""
    import meta
    import models
    from meta import tasks
    verifiers = tasks.get(args.task).verifiers
    if args.scorer == "none":
        return None
    if args.scorer == "verifier":
        return verifiers.OutcomeVerifier()
    if args.scorer == "model":
        model = models.load(args.scorer_model)
        return model if args.method in SEARCHES else meta.RewardModel(model)
    return verifiers.process_verifier(args.scorer.split("-", 1)[1])


def make_feedback(args):
    """The feedback function ``--feedback`` names: the task's verifier's, or ``MODULE:NAME`` imported."""
    import importlib
    from meta import tasks
    if args.feedback == "verifier":
        verifiers = tasks.get(args.task).verifiers
        if not hasattr(verifiers, "feedback"):
            raise ValueError(f"--feedback verifier: task {args.task} has no feedback; give --feedback MODULE:NAME")
        return verifiers.feedback
    module, _, name = args.feedback.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name) if name else None
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--feedback {args.feedback}: {e}") from None
    if not callable(fn):
        raise ValueError(f"--feedback must be 'verifier' or MODULE:NAME naming a function (prompt, attempt) -> "
                         f"str | None, got {args.feedback!r}")
    return fn


def check_items(args, model, items, sampler, scorer) -> None:
    """Refuse, naming the dataset line, what the meta-generator would refuse only partway through the
    run: a method without the scorer it needs, a prompt too long for the model, a reference the
    verifier cannot read, more rollouts than the memory holds."""
    import engine
    import meta
    from engine.checks import memory_bytes, state_bytes
    from engine.decode import bucket
    from meta import tasks
    from meta.search import slots as search_slots
    from meta.common import check_rollouts
    task = tasks.get(args.task)
    takes = inspect.signature(meta.METHODS[args.method]).parameters.get("scorer")
    if takes is not None and takes.default is inspect.Parameter.empty and args.scorer == "none":
        raise ValueError(f"{args.method} needs a scorer: --scorer {' / '.join(SCORERS[1:])}")
    if takes is None and args.scorer != "none":
        raise ValueError(f"{args.method} takes no scorer; leave out --scorer {args.scorer}")
    if args.chat and args.scorer == "model":
        raise ValueError("--chat with --scorer model: the reward model reads prompts as plain text; use another "
                         "--scorer or leave out --chat")
    longest = 0
    for it in items:
        try:
            longest = max(longest, len(engine.checks.check_prompts(model, [prompt(args, it)], args.max_new_tokens)[0]))
            if args.scorer == "verifier":
                scorer.check([it["prompt"]], [it["answer"]])
            if it["answer"] is not None and args.answer == "arith" and not task.graded_by_answer:
                task.verifiers.OutcomeVerifier().check([it["prompt"]], [it["answer"]])     # how grade reads it
        except ValueError as e:
            raise ValueError(f"{args.data}:{it['line']}: {e}") from None
    check_rollouts(min(args.batch, len(items)), args.n, sampler)
    rows = min(args.n, args.round_size) if args.method in ROUNDS else args.n   # drawn at once for one prompt
    if args.method == "mcts":                                                  # every node of the tree is a row
        rows = 1 + args.simulations * args.n
    slots = search_slots(args.max_new_tokens) if args.method in SEARCHES and args.method != "mcts" else args.max_new_tokens
    need = sum(state_bytes(m.config, 1, bucket(longest), rows, slots)
               for m in [model] + ([scorer] if args.method in SEARCHES and args.scorer == "model" else []))
    have = memory_bytes()
    if need > have:
        raise ValueError(f"--n {args.n}: {rows} rollouts of one prompt need {need / 2**30:,.1f} GiB of decoding state "
                         f"(KV cache, logits); the memory is {have / 2**30:,.1f} GiB")


def run_chunk(args, model, items, sampler, scorer):
    """The meta-generator's result on one chunk of items."""
    import meta
    from meta import tasks
    fn = meta.METHODS[args.method]
    named = inspect.signature(fn).parameters
    kw = dict(n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens, sampler=sampler,
              answer=tasks.get(args.task).problems.answer if args.answer == "arith" else None)   # None: whole text
    refs = [it["answer"] for it in items]
    if "references" in named:
        kw["references"] = refs if all(r is not None for r in refs) else None
    if scorer is not None:
        kw["scorer"] = scorer
    if args.method in SEARCHES:
        kw.update(max_steps=args.max_steps, final=args.final,
                  **{k: getattr(args, k) for k in ("beam_width", "ess_threshold", "resampling", "simulations",
                                                   "exploration", "threshold", "max_backtracks") if k in named})
        if "temperature" in named:
            kw["temperature"] = args.search_temperature
    if args.method in ROUNDS:
        kw["round_size"] = args.round_size
    if args.method == "adaptive_self_consistency":
        kw["rule"] = args.rule
    if args.method == "refine":
        kw.update(feedback=args.feedback_fn, rounds=args.rounds, max_feedback_tokens=args.max_feedback_tokens)
    return fn(model, [prompt(args, it) for it in items], **kw)


def results(args, model, items, sampler, scorer) -> list:
    """``(item, result, g)`` for each item of a chunk: the chunk's result, or for a prompt that failed
    on its own (:class:`meta.PromptError`) ``(item, message, None)`` and the rest run again without it."""
    from meta import PromptError
    try:
        result = run_chunk(args, model, items, sampler, scorer)
    except PromptError as e:
        rest = items[:e.prompt] + items[e.prompt + 1:]
        return [(items[e.prompt], str(e), None)] + (results(args, model, rest, sampler, scorer) if rest else [])
    return [(it, result, g) for g, it in enumerate(items)]


def prompt(args, item):
    """The prompt of a dataset item: its text, or with ``--chat`` a chat of that one user message."""
    return [{"role": "user", "content": item["prompt"]}] if args.chat else item["prompt"]


def correct(answer, reference, numeric: bool):
    """Whether a chosen answer equals the reference; ``None`` without one. ``numeric`` (``--answer
    arith``) reads the reference as the verifier does (99.0 and "099" are 99); else, and for a
    reference that is not an integer, they are compared as strings."""
    from meta.tasks.arith_verifiers import reference_answer
    if reference is None:
        return None
    if answer is None:
        return False
    if numeric:
        try:
            return reference_answer(reference) == answer
        except ValueError:
            pass
    return str(answer).strip() == str(reference).strip()


def grade(args, result, g: int, reference):
    """Whether prompt ``g``'s result is right (``None``: no reference): its chosen answer against the
    reference (:func:`correct`), or for a task graded by its verifier (``--answer arith``) its chosen
    rollout by the outcome verifier (the problem read from the prompt, or the reference)."""
    from meta import tasks
    task = tasks.get(args.task)
    if reference is None or args.answer == "text" or task.graded_by_answer:
        return correct(result.answers[g], reference, args.answer == "arith")
    chosen = result.chosen[g]
    if chosen is None:
        return False
    return bool(task.verifiers.OutcomeVerifier()([result.prompts[g]], [[result.texts[g][chosen]]], [reference])[0, 0])


def summary(out: Path) -> str:
    """A table of the output file: prompts, accuracy, tokens per prompt."""
    rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()[1:]]
    graded = [r["correct"] for r in rows if r["correct"] is not None]
    tokens = sum(r["tokens"] for r in rows)
    acc = f"{sum(graded) / len(graded):.3f}" if graded else "-"
    return (f"{'prompts':>8}{'graded':>8}{'accuracy':>10}{'tokens':>10}{'tokens/prompt':>15}\n"
            f"{len(rows):>8}{len(graded):>8}{acc:>10}{tokens:>10}{tokens / max(len(rows), 1):>15.1f}")


def parse_args(argv=None):
    import meta
    from meta import tasks
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=sorted(meta.METHODS))
    ap.add_argument("--data", type=Path, required=True, help="JSONL: prompt, optional id and answer")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--task", default=DEFAULT_TASK, choices=sorted(tasks.TASKS),
                    help="the task: its answer extractor, verifiers and models")
    ap.add_argument("--model", help="checkpoint directory or zoo name (default: the task's policy)")
    ap.add_argument("--n", type=int, default=16, help="rollouts per prompt (at most, for rounds)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--scorer", choices=SCORERS, default="none", help="model: the reward model --scorer-model")
    ap.add_argument("--scorer-model", help="reward model (checkpoint or zoo name; default: the task's PRM)")
    ap.add_argument("--round-size", type=int, default=8, help="rollouts per round (rejection, adaptive)")
    ap.add_argument("--rule", choices=("beta", "unbeatable"), default="beta", help="adaptive stopping rule")
    ap.add_argument("--batch", type=int, default=16, help="prompts per chunk")
    ap.add_argument("--max-steps", type=int, default=16, help="step-level searches: most steps")
    ap.add_argument("--beam-width", type=int, default=4, help="step_beam_search, dvts: children per kept path")
    ap.add_argument("--search-temperature", type=float, default=0.2, help="rebase: softmax temperature of scores")
    ap.add_argument("--ess-threshold", type=float, default=0.5, help="particle_filter: resample below this ESS / n")
    ap.add_argument("--resampling", choices=("systematic", "multinomial"), default="systematic")
    ap.add_argument("--simulations", type=int, default=16, help="mcts: simulations (--n: children per expansion)")
    ap.add_argument("--exploration", type=float, default=0.1, help="mcts: UCT's exploration constant")
    ap.add_argument("--final", choices=("best", "vote"), default="best",
                    help="step-level searches: the best-scored answer or a score-weighted vote")
    ap.add_argument("--threshold", type=float, default=0.5, help="backtrack: resample a step scored below this")
    ap.add_argument("--max-backtracks", type=int, default=2, help="backtrack: resamples per rollout")
    ap.add_argument("--feedback", default="verifier", help="refine: 'verifier' (the task's) or MODULE:NAME")
    ap.add_argument("--rounds", type=int, default=1, help="refine: feedback rounds")
    ap.add_argument("--max-feedback-tokens", type=int, default=24, help="refine: tokens of one feedback")
    ap.add_argument("--chat", action="store_true",
                    help="each prompt is a user message, formatted by the model's chat template")
    ap.add_argument("--answer", choices=("arith", "text"), default="arith",
                    help="answer extraction: the task's extractor (named for the first task: 'A: <n>') or the "
                         "whole stripped text")
    args = ap.parse_args(argv)
    task = tasks.get(args.task)
    args.model = args.model or task.policy
    args.scorer_model = args.scorer_model or task.process_reward_model
    return args


def run(args, model, items, sampler, scorer, done: set) -> None:
    """Run the chunks with prompts not yet in ``done``, appending one line per prompt to the output."""
    with tqdm(total=len(items), initial=sum(it["id"] in done for it in items), unit="prompt",
              desc=args.method) as bar:
        for lo in range(0, len(items), args.batch):
            chunk = items[lo:lo + args.batch]
            if all(it["id"] in done for it in chunk):
                continue
            for it, result, g in results(args, model, chunk, sampler, scorer):
                if it["id"] in done:
                    continue
                if g is None:                                   # this prompt failed: graded wrong
                    line = {"id": it["id"], "reference": it["answer"], "correct": None if it["answer"] is None
                            else False, "prompt": it["prompt"], "error": result, "tokens": 0}
                else:
                    line = {"id": it["id"], "reference": it["answer"], "correct": grade(args, result, g, it["answer"]),
                            **result.prompt_json(g)}
                _write(args.out, json.loads(json.dumps(line, default=str)))
                done.add(it["id"])
                bar.update(1)


def main(argv=None) -> int:
    """Run (or continue) the job; returns the exit status."""
    args = parse_args(argv)
    import models
    from sampling import Sampler
    try:                 # what can be refused is refused before the output is touched (check_items)
        if min(args.batch, args.n, args.max_new_tokens, args.round_size, args.max_steps, args.beam_width,
               args.simulations) < 1:
            raise ValueError("--batch, --n, --max-new-tokens, --round-size, --max-steps, --beam-width and "
                             "--simulations must be positive")
        if min(args.rounds, args.max_backtracks) < 0 or args.max_feedback_tokens < 1 or not 0 <= args.threshold <= 1:
            raise ValueError("--rounds and --max-backtracks must be at least 0, --max-feedback-tokens positive and "
                             "--threshold in [0, 1]")
        if not -2 ** 63 <= args.seed < 2 ** 63:
            raise ValueError(f"--seed must fit in 64 bits (signed), got {args.seed}")
        sampler = Sampler(temperature=args.temperature, top_p=args.top_p)
        args.feedback_fn = make_feedback(args) if args.method == "refine" else None
        items = read_dataset(args.data)
        start, model = time.time(), models.load(args.model)
        scorer = make_scorer(args)                                       # loaded once, for every chunk
        check_items(args, model, items, sampler, scorer)
        header = settings(args, args.data, model)
        with locked(args.out):
            done = load_done(args.out, header, {it["id"] for it in items})     # writes the header
            run(args, model, items, sampler, scorer, done)
            table = summary(args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{args.method} on {args.data} ({time.time() - start:.0f} s this run):\n{table}")
    return 0


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
