"""Train rollax's built-in tiny reasoning model on a task (default: chained arithmetic, ``meta.tasks.arith``).

    python -m scripts.train_tiny --out models/zoo/tiny-arith
    python -m scripts.train_tiny --task countdown            # writes models/zoo/countdown

``--task`` names a task of ``meta.tasks.TASKS``; the defaults below are tiny-arith's (a task may
change some, ``Task.train``), and the model goes to the zoo under the task's name.

Trains a sentencepiece tokenizer on task text (digits split), then a small Llama-shaped
rollax transformer with optax (AdamW, warmup + cosine decay) on a mixture of the easy,
medium and hard levels (each solution's terms added in a random valid order), with a progress bar and periodic validation (loss and greedy
accuracy on held-out hard problems). ``--pack`` fills each training row with as many whole
examples as fit, each attending to itself only (a task whose texts vary in length, e.g.
``tiny-program``, turns on by default). Saves with ``Model.save`` and records the greedy
accuracy on the fixed 50-problem test sample in ``metrics.json`` beside the checkpoint.

Training stops early once the validation greedy accuracy reaches ``--stop-at`` (0.55 by
default): the demo needs a model that is often wrong on the hard split, so that spending
more samples has room to help; trained to the end, the model gets most hard problems right.
Deterministic for a given ``--seed``. At most half an hour on a 2-core CPU.

``--init NAME`` fine-tunes a policy instead (a zoo name or a checkpoint directory): its tokenizer,
shape and weights are the start, and ``--out`` must name a new directory. A feedback variant of a
task's policy is its policy fine-tuned with feedback turns (``--feedback``).

``--reward`` trains the outcome reward model instead, and ``--prm`` the process reward model
(``scripts/train_reward.py``, its own flags): ``python -m scripts.train_tiny --reward --out
models/zoo/tiny-arith-rm``, ``python -m scripts.train_tiny --prm --out models/zoo/tiny-arith-prm``.
"""
from __future__ import annotations

import argparse
import io
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import models
from meta import tasks
from scripts import cli
from scripts.training import check_flags, write_metrics
from scripts.eval_arith import METRIC_SAMPLE, greedy_accuracy

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
DEFAULT_TASK = tasks.get("tiny-arith")
MIX = DEFAULT_TASK.mix
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def train_tokenizer(path: Path, seed: int = 0, n: int = 20000, vocab_size: int = 32,
                    task: tasks.Task = DEFAULT_TASK) -> models.SentencePieceTokenizer:
    """Train a sentencepiece BPE tokenizer on ``n`` texts of ``task`` (digits split, newline a symbol)."""
    import sentencepiece as spm
    stream, rng = task.problems.train_stream(task.mix, seed=seed + 1), random.Random(seed + 1)
    texts = [p.prompt + p.random_solution(rng) for p in itertools.islice(stream, n)]
    buf, chars = io.BytesIO(), len(set("".join(texts)))
    if vocab_size < chars + 4:                   # every character a piece, besides PAD, BOS, EOS, UNK
        raise ValueError(f"--vocab-size {vocab_size} is too small for {task.name}: its text has {chars} "
                         f"characters, so at least {chars + 4} pieces")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        hard_vocab_limit=False, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, user_defined_symbols=["\n"],
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK, character_coverage=1.0, num_threads=1,
        minloglevel=2)
    path.write_bytes(buf.getvalue())
    return models.SentencePieceTokenizer(path)


def encode(tok, problem, rng: random.Random | None = None) -> tuple[list[int], int]:
    """BOS + prompt + solution + EOS token ids, and the number of prompt tokens (BOS included).

    The solution is the reference one, or with ``rng`` one in a random order
    (its ``random_solution``, e.g. :meth:`arith.Problem.random_solution`)."""
    prompt = tok.encode(problem.prompt)
    solution = problem.solution if rng is None else problem.random_solution(rng)
    return prompt + tok.encode(solution, bos=False) + [tok.eos_id], len(prompt)


def encode_feedback(tok, task: tasks.Task, problem, rng: random.Random) -> tuple[list[int], int]:
    """A feedback turn, as ``meta.refine`` lays it out: BOS + prompt + a flawed attempt + EOS + the
    task verifier's feedback on it + the corrected attempt + EOS (``Problem.flawed_solution``,
    ``verifiers.feedback``), and the number of tokens before the corrected attempt."""
    flawed, corrected = problem.flawed_solution(rng)
    message = task.verifiers.feedback(problem.prompt, flawed)
    head = tok.encode(problem.prompt) + tok.encode(flawed, bos=False) + [tok.eos_id] + tok.encode(message, bos=False)
    return head + tok.encode(corrected, bos=False) + [tok.eos_id], len(head)


def pack(tok, problems, seq_len: int, rng: random.Random | None = None, encoded=None):
    """(tokens [B, T+1], loss mask [B, T]) for ``problems`` (solutions as in :func:`encode`), or for
    ``encoded`` examples ``(ids, n_context)``; the loss is on what follows the context (the
    solution and EOS) only."""
    encoded = encoded or [encode(tok, problem, rng) for problem in problems]
    tokens = np.full((len(encoded), seq_len + 1), PAD, np.int32)
    mask = np.zeros((len(encoded), seq_len), np.float32)
    for row, (ids, n_prompt) in enumerate(encoded):
        if len(ids) > seq_len + 1:
            raise ValueError(f"a training example has {len(ids)} tokens; raise --seq-len above {seq_len}")
        tokens[row, :len(ids)] = ids
        mask[row, n_prompt - 1:len(ids) - 1] = 1.0
    return tokens, mask


def pack_rows(examples, batch: int, seq_len: int):
    """Training batches of ``batch`` rows packed from the iterator ``examples`` of ``(ids,
    n_context)`` (see :func:`encode`), each row as many whole examples as fit in ``seq_len + 1``
    tokens, until ``examples`` runs out: (tokens [B, T+1], loss mask [B, T], positions [B, T],
    segments [B, T]). Positions restart at each example and attention stays within it
    (``segments``), so a packed example is trained exactly as it would be alone, without the
    padding. The example that does not fit a row starts the next one; none is dropped."""
    it = iter(examples)
    head = next(it, None)
    while head is not None:
        tokens = np.full((batch, seq_len + 1), PAD, np.int32)
        mask = np.zeros((batch, seq_len), np.float32)
        positions = np.zeros((batch, seq_len), np.int32)
        segments = np.zeros((batch, seq_len), np.int32)
        for row in range(batch):
            at, segment = 0, 1
            while head is not None and len(head[0]) <= seq_len + 1 - at:
                (ids, n_context), end = head, at + len(head[0])
                tokens[row, at:end] = ids
                mask[row, at + n_context - 1:end - 1] = 1.0
                positions[row, at:end - 1] = np.arange(len(ids) - 1)
                segments[row, at:end - 1] = segment
                at, segment, head = end, segment + 1, next(it, None)
            if at == 0 and head is not None:
                raise ValueError(f"a training example has {len(head[0])} tokens; raise --seq-len above {seq_len}")
        yield tokens, mask, positions, segments


def batches(tok, batch: int, seq_len: int, seed: int, task: tasks.Task = DEFAULT_TASK, feedback: float = 0.0,
            packed: bool = False):
    """Endless training batches (see :func:`pack`, or :func:`pack_rows` if ``packed``) from
    ``task``'s level mixture, each solution a random one: several reasoning paths to one answer,
    so that voting over samples pays. A ``feedback`` fraction of the examples are feedback turns
    (:func:`encode_feedback`; one longer than ``seq_len + 1`` tokens is replaced by the plain example)."""
    stream, rng, coin = task.problems.train_stream(task.mix, seed=seed), random.Random(seed), random.Random(seed + 2)

    def example(p):
        if feedback and coin.random() < feedback:
            turn = encode_feedback(tok, task, p, rng)
            if len(turn[0]) <= seq_len + 1:         # a turn longer than a row (rare): the plain example instead
                return turn
        return encode(tok, p, rng)
    examples = map(example, stream)
    if packed:
        yield from pack_rows(examples, batch, seq_len)
    while True:
        yield pack(tok, None, seq_len, encoded=list(itertools.islice(examples, batch)))


def make_step(config, optimizer):
    """The jitted train step: (params, opt_state, tokens, mask[, positions, segments]) -> (params,
    opt_state, loss); positions and segments for packed rows (:func:`pack_rows`)."""
    def loss_fn(params, tokens, mask, positions=None, segments=None):
        logits, _ = models.forward(config, params, tokens[:, :-1], positions, segments=segments)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    @jax.jit
    def step(params, opt_state, tokens, mask, positions=None, segments=None):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask, positions, segments)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, jax.jit(loss_fn)


def main(argv=None) -> dict:
    """Train, save to ``--out``, write ``metrics.json`` there and return the metrics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for flag, mode in (("--reward", []), ("--prm", ["--process"])):
        if flag in argv:
            from scripts import train_reward
            return train_reward.main(mode + [a for a in argv if a != flag])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default=DEFAULT_TASK.name, choices=sorted(tasks.TASKS), help="the task to train on")
    ap.add_argument("--out", type=Path, help="checkpoint directory to write (default: the zoo's model of the task)")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=256, help="the model's longest sequence (prompt and rollout)")
    ap.add_argument("--vocab-size", type=int, default=32, help="tokenizer pieces (at least the task's characters)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=16, help="per-head width (the shipped model: 16)")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--val-problems", type=int, default=128, help="validation hard problems for greedy accuracy")
    ap.add_argument("--stop-at", type=float, default=0.55,
                    help="stop once greedy accuracy on the validation hard problems reaches this (0: never)")
    ap.add_argument("--feedback", type=float, default=0.0,
                    help="fraction of training examples that are feedback turns (a flawed attempt, the "
                         "verifier's feedback, the corrected attempt): a model that can use meta.refine")
    ap.add_argument("--pack", action=argparse.BooleanOptionalAction, default=False,
                    help="pack several examples into each training row (no padding; each attends to itself only)")
    ap.add_argument("--init", help="fine-tune this policy (a zoo name or a checkpoint directory): its tokenizer, "
                                   "shape and weights; the shape flags are refused")
    ap.add_argument("--seed", type=int, default=0)
    task = tasks.get(ap.parse_known_args(argv)[0].task)
    ap.set_defaults(**task.train)
    args = ap.parse_args(argv)
    args.out = args.out or ZOO / task.policy
    check_flags(args, ("steps", "batch", "seq_len", "max_len", "vocab_size", "eval_every", "val_problems"), ("stop_at",))
    problems = task.problems
    most = problems.LEVELS["hard"].held_out
    if args.val_problems > most or args.stop_at > 1 or not 0 <= args.feedback <= 1:
        raise ValueError(f"--val-problems must be at most {most}, --stop-at at most 1 (an accuracy) and "
                         f"--feedback in [0, 1] (a fraction), got {args.val_problems}, {args.stop_at} and {args.feedback}")
    if not args.init and args.seq_len > args.max_len:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's --max-len {args.max_len}")
    if args.feedback and not hasattr(problems.Problem, "flawed_solution"):
        raise ValueError(f"--feedback: task {task.name} has no flawed solutions to train feedback turns on")
    init = args.init and initial(args, argv)
    with tempfile.TemporaryDirectory() as tmp:
        if init:
            tok, config = init.tokenizer, init.config
        else:
            tok = train_tokenizer(Path(tmp) / "tokenizer.model", seed=args.seed, vocab_size=args.vocab_size, task=task)
            config = models.preset("tiny", vocab_size=tok.vocab_size, hidden=args.hidden, layers=args.layers,
                                   heads=args.heads, head_dim=args.head_dim, kv_heads=args.kv_heads,
                                   intermediate=args.intermediate,
                                   max_len=args.max_len, bos_id=BOS, eos_ids=(EOS,), pad_id=PAD)
        print(f"tokenizer: {tok.vocab_size} pieces; model: {config.num_params / 1e6:.2f}M parameters")
        schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10 + 1), args.steps,
                                                      end_value=args.lr * 0.02)
        optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                                optax.adamw(schedule, b2=0.98, weight_decay=0.01))
        params = init.params if init else models.init_params(config, jax.random.key(args.seed))
        opt_state = optimizer.init(params)
        step, loss_fn = make_step(config, optimizer)
        data = batches(tok, args.batch, args.seq_len, args.seed, task, args.feedback, args.pack)
        val_tokens, val_mask = pack(tok, problems.held_out("val", "hard", 256), args.seq_len)
        val_problems = problems.held_out("val", "hard", args.val_problems)

        start, history = time.time(), []
        bar = tqdm(range(1, args.steps + 1), desc="train", unit="step")
        for i in bar:
            params, opt_state, loss = step(params, opt_state, *next(data))
            if i % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if i % args.eval_every == 0 or i == args.steps:
                val_loss = float(loss_fn(params, val_tokens, val_mask))
                acc = greedy_accuracy(models.Model(config, params, tok), val_problems)
                history.append({"step": i, "train_loss": float(loss), "val_loss": val_loss,
                                "val_hard_greedy_accuracy": acc, "seconds": round(time.time() - start, 1)})
                tqdm.write(f"step {i}: train loss {float(loss):.4f}  val loss {val_loss:.4f}  "
                           f"val hard greedy accuracy {acc:.3f}")
                if args.stop_at and acc >= args.stop_at:
                    tqdm.write(f"validation accuracy reached --stop-at {args.stop_at}: stopping at step {i}")
                    break
        bar.close()
        train_seconds = time.time() - start
        model = models.Model(config, jax.device_get(params), tok)
        model.save(args.out)

    model = models.load(args.out)
    sample = problems.held_out("test", "hard", METRIC_SAMPLE)
    metrics = write_metrics(args, test_hard_50_greedy_accuracy=greedy_accuracy(model, sample),
                            train_seconds=round(train_seconds, 1), steps=i, parameters=config.num_params,
                            mix=task.mix, history=history)
    print(f"saved {args.out}; trained {train_seconds / 60:.1f} min; greedy accuracy on the "
          f"{METRIC_SAMPLE}-problem hard test sample: {metrics['test_hard_50_greedy_accuracy']:.3f}")
    return metrics


SHAPE_FLAGS = ("--hidden", "--layers", "--heads", "--head-dim", "--kv-heads", "--intermediate", "--vocab-size",
               "--max-len")


def initial(args, argv) -> models.Model:
    """The policy ``--init`` names, checked against the other flags (its shape is the run's)."""
    flags = {a.split("=")[0] for a in argv}
    given = sorted(flags & set(SHAPE_FLAGS))
    if given:
        raise ValueError(f"--init {args.init}: the shape is its own; leave out {' '.join(given)}")
    if "--out" not in flags:
        raise ValueError(f"--init {args.init}: name --out, a new directory (the default is the task's shipped policy)")
    init = models.load(args.init)
    if init.tokenizer is None or init.config.score_head:
        raise ValueError(f"--init {args.init}: a policy with its tokenizer is needed, not a reward model")
    if args.seq_len > init.config.max_len:
        raise ValueError(f"--seq-len {args.seq_len} is longer than {args.init}'s maximum length {init.config.max_len}")
    return init


if __name__ == "__main__":
    cli.run(main)
