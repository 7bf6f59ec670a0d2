"""Train a small reward model for the built-in task from the policy's own rollouts: an outcome
reward model, or with ``--process`` a process reward model (PRM).

    python -m scripts.train_tiny --reward --out models/zoo/tiny-arith-rm
    python -m scripts.train_tiny --prm --out models/zoo/tiny-arith-prm
    python -m scripts.train_reward --task countdown [--process]     # models/zoo/countdown-rm, -prm

(also ``python -m scripts.train_reward [--process]``). ``--task`` names a task of
``meta.tasks.TASKS`` (default ``tiny-arith``); its verifiers label the rollouts and the
models are written to the zoo under its names. The shipped policy (``--policy``, default the
task's, ``tiny-arith``) samples ``--samples`` solutions at the demo's temperature (``eval_arith.TEMPERATURE``) for each of ``--problems``
hard problems of the training stream. The reward model is a copy of the policy with a scalar head
(``config.score_head``, zero at the start) fine-tuned with a sigmoid cross-entropy on the outcome
label (1: right answer, by the outcome verifier) at the last token (the EOS after
``{prompt}{text}``: the score :class:`meta.RewardModel` reads), plus ``--token-weight`` x the
same loss on the labels at more positions (:func:`labelled`; a PRM's EOS is one of them, so it
counts twice), plus the language-model loss on the right solutions (so the trunk keeps its
arithmetic):

* outcome: every solution position, labelled with the outcome (a value estimate of each prefix,
  Cobbe et al. 2021, which gives the trunk a denser signal);
* process: the newline that ends each solution step, labelled 1 when that step and every step
  before it are right by the task's exact step checker (e.g. ``arith_verifiers.step_scores``: the path
  is still on track), else 0; and the EOS, labelled with the outcome. These are the positions a
  search reads the PRM at when it rides along the policy as an engine track
  (``engine.track_scores`` after ``decode(..., step_tokens="\\n")`` pauses on a step's newline, or
  after EOS). The task has an exact checker, so these labels are exact and free; Math-Shepherd-style
  labels (the fraction of rollouts continued from each step that reach the right answer) would cost
  rollouts per step and be noisy estimates of the same quantity.

Validation: AUC of the last-token score against the outcome and best-of-16 accuracy by it, and for
a PRM the step-level AUC (the score at each step's newline against its label), on 16 rollouts of
each of ``--val-problems`` val hard problems every ``--eval-every`` steps, and at the end on
``--test-problems`` test hard problems; all recorded in ``metrics.json``. Deterministic for a given
``--seed``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import models
from meta import tasks
from meta.scoring import RewardModel
from sampling import Sampler
from scripts import cli
from scripts.eval_arith import TEMPERATURE, solve
from scripts.training import check_flags, write_metrics

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
VAL_SAMPLES = 16
QUICK = 25            # metrics.json also records the first QUICK val problems' figures (a fast check)


@dataclasses.dataclass
class Data:
    """Labelled rollouts: ids [R, W] (BOS, prompt, solution, EOS, padding), each rollout's index of
    its prompt's last token [R] and of its EOS [R], and 0/1 labels [R, W] with the mask [R, W] of
    the positions the loss reads them at (:func:`labelled`)."""
    ids: np.ndarray
    first: np.ndarray
    last: np.ndarray
    label: np.ndarray
    mask: np.ndarray

    def take(self, rows) -> Data:
        """The rollouts ``rows`` (an index or slice of the rollout axis)."""
        return Data(*(a[rows] for a in vars(self).values()))

    @property
    def outcome(self) -> np.ndarray:
        """Each rollout's outcome label [R]: its label at EOS."""
        return self.label[np.arange(len(self.last)), self.last]


def step_labels(text: str, problem) -> list[float | None]:
    """One entry per newline of ``text``: where it ends a step line (as the task's ``parse`` reads
    them), 1.0 when that step and every one before it are right by the task's ``step_scores``
    (e.g. :func:`arith_verifiers.step_scores`), else 0.0; ``None`` where it ends a blank line, the
    answer line or a line after it."""
    task = tasks.of(problem)
    on_track = np.minimum.accumulate(task.verifiers.step_scores(text, problem))
    out, k, answered = [], 0, False
    for line in text.split("\n")[:-1]:
        line = line.strip()
        answered = answered or bool(task.problems.ANSWER_RE.match(line))
        if answered or not line:
            out.append(None)
        else:
            out.append(float(on_track[k]))
            k += 1
    return out


def labelled(scorer: RewardModel, problem, text: str, process: bool = False):
    """One rollout: its ids (``scorer``'s template: BOS, prompt, text, EOS), the index of the
    prompt's last token, and its labels and label mask [len(ids)]. The label at EOS is the
    outcome; the mask is every solution position (labelled with the outcome), or with ``process``
    each step's newline (labelled by :func:`step_labels`) and the EOS."""
    tok = scorer.model.tokenizer
    ids = scorer.encode(problem.prompt, text)
    first = len(tok.encode(problem.prompt)) - 1
    label = np.full(len(ids), tasks.of(problem).verifiers.outcome_scores([text], [problem])[0], np.float32)
    mask = np.zeros(len(ids), np.float32)
    if not process:
        mask[first:] = 1.0
        return ids, first, label, mask
    newline = tok.encode("\n", bos=False)
    ends = [j for j in range(first + 1, len(ids)) if [ids[j]] == newline]
    steps = step_labels(text, problem)
    if len(newline) != 1 or len(ends) != len(steps):
        raise ValueError(f"a process reward model needs the newline to be one token; {text!r} has "
                         f"{len(steps)} newlines but {len(ends)} newline tokens")
    for j, y in zip(ends, steps):
        if y is not None:
            label[j], mask[j] = y, 1.0
    mask[-1] = 1.0
    return ids, first, label, mask


def rollouts(policy, problems, samples: int, seed: int, scorer: RewardModel, process: bool = False) -> Data:
    """``samples`` rollouts per problem at ``TEMPERATURE``, labelled by :func:`labelled`."""
    texts, _ = solve(policy, problems, n=samples, sampler=Sampler(temperature=TEMPERATURE), seed=seed)
    rows = [labelled(scorer, p, t, process) for p, row in zip(problems, texts) for t in row]
    width = max(len(ids) for ids, *_ in rows)
    ids = np.full((len(rows), width), policy.config.pad_id, np.int32)
    label, mask = np.zeros((2, len(rows), width), np.float32)
    for i, (s, _, y, m) in enumerate(rows):
        ids[i, :len(s)], label[i, :len(s)], mask[i, :len(s)] = s, y, m
    return Data(ids, np.array([r[1] for r in rows], np.int32), np.array([len(r[0]) - 1 for r in rows], np.int32),
                label, mask)


def make_step(config, optimizer, lm_weight: float, token_weight: float):
    """The jitted train step: (params, opt_state, ids, first, last, label, mask) -> (params, opt_state, loss)."""
    def loss_fn(params, ids, first, last, label, mask):
        x, _ = models.hidden_states(config, params, ids)
        r = jnp.einsum("btd,d->bt", x, params["score"], preferred_element_type=jnp.float32)
        bce = optax.sigmoid_binary_cross_entropy(r, label)
        final = jnp.take_along_axis(bce, last[:, None], axis=1).mean()
        tokens = jnp.sum(bce * mask) / jnp.sum(mask)
        logits = jnp.matmul(x[:, :-1], params["lm_head"], preferred_element_type=jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        j = jnp.arange(ids.shape[1] - 1)[None]        # j = last (the padding after EOS) too, as the shipped RM
        right = ((j >= first[:, None]) & (j <= last[:, None])) * jnp.take_along_axis(label, last[:, None], axis=1)
        lm = jnp.sum(nll * right) / jnp.maximum(jnp.sum(right), 1.0)
        return final + token_weight * tokens + lm_weight * lm

    @jax.jit
    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def auc(scores, labels) -> float:
    """Area under the ROC curve: P(a right rollout scores above a wrong one), ties counting half."""
    scores, labels = np.asarray(scores).ravel(), np.asarray(labels).ravel()
    pos, neg = scores[labels > 0], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


_rewards = jax.jit(models.rewards, static_argnums=0)


def evaluate(scorer: RewardModel, data: Data, split: str = "val", process: bool = False, rows: int = 1024) -> dict:
    """On ``VAL_SAMPLES`` rollouts per problem: the AUC of the last-token score against the outcome,
    best-of-``VAL_SAMPLES`` accuracy by it and the mean outcome; with ``process`` also the
    step-level AUC (the score at each step's newline against its label) and the mean step label."""
    model = scorer.model
    r = np.concatenate([np.asarray(_rewards(model.config, model.params, data.ids[i:i + rows]))
                        for i in range(0, len(data.ids), rows)])
    s, y = r[np.arange(len(r)), data.last].reshape(-1, VAL_SAMPLES), data.outcome.reshape(-1, VAL_SAMPLES)
    out = {f"{split}_auc": round(auc(s, y), 4), f"{split}_best_of_16": float(y[np.arange(len(y)), s.argmax(1)].mean()),
           f"{split}_mean_label": float(y.mean())}
    if process:
        steps = data.mask > 0
        steps[np.arange(len(r)), data.last] = False
        out |= {f"{split}_step_auc": round(auc(r[steps], data.label[steps]), 4),
                f"{split}_step_mean_label": float(data.label[steps].mean())}
    return out


def main(argv=None) -> dict:
    """Train the reward model, save it to ``--out`` with ``metrics.json``, return the metrics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tiny-arith", choices=sorted(tasks.TASKS), help="the task")
    ap.add_argument("--process", action="store_true", help="train a process reward model (step labels)")
    ap.add_argument("--out", type=Path, help="checkpoint directory to write (default: the zoo's TASK-rm, "
                                             "or TASK-prm with --process)")
    ap.add_argument("--policy", help="the policy: checkpoint directory or zoo name (default: the task's)")
    ap.add_argument("--problems", type=int, default=2048, help="hard training problems")
    ap.add_argument("--samples", type=int, default=8, help="rollouts per training problem")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lm-weight", type=float, default=0.5, help="weight of the LM loss on right rollouts")
    ap.add_argument("--token-weight", type=float, default=1.0, help="weight of the per-token value loss")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-problems", type=int, default=200, help="val hard problems (16 rollouts each)")
    ap.add_argument("--test-problems", type=int, help="test hard problems (16 rollouts each) measured at the end "
                                                      "(default: 200 with --process, else none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    task = tasks.get(args.task)
    args.policy = args.policy or task.policy
    args.out = args.out or ZOO / (task.process_reward_model if args.process else task.reward_model)
    args.test_problems = (200 if args.process else 0) if args.test_problems is None else args.test_problems
    check_flags(args, ("steps", "batch", "problems", "samples", "val_problems", "eval_every"),
                ("lm_weight", "token_weight", "test_problems"))
    problems = task.problems
    most = problems.LEVELS["hard"].held_out
    if max(args.val_problems, args.test_problems) > most:
        raise ValueError(f"--val-problems and --test-problems must be at most {most}, got {args.val_problems} "
                         f"and {args.test_problems}")

    start = time.time()
    policy = models.load(args.policy)
    if policy.tokenizer is None or policy.config.tie_embeddings:
        raise ValueError("the policy needs a tokenizer and an untied LM head")
    config = dataclasses.replace(policy.config, score_head=True)
    params = dict(jax.device_get(policy.params), score=np.zeros(config.hidden, config.dtype))
    scorer = RewardModel(models.Model(config, params, policy.tokenizer))
    stream = problems.train_stream({"hard": 1.0}, seed=args.seed + 1000)   # not the policy's training draws
    train = rollouts(policy, [next(stream) for _ in range(args.problems)], args.samples, args.seed + 1, scorer,
                     args.process)
    val = rollouts(policy, problems.held_out("val", "hard", args.val_problems), VAL_SAMPLES, args.seed, scorer,
                   args.process)
    print(f"{len(train.last)} training rollouts ({train.outcome.mean():.1%} right), "
          f"{len(val.last)} validation rollouts; sampled in {time.time() - start:.0f} s")

    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10 + 1, args.steps, args.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    params = jax.tree.map(jnp.asarray, params)
    opt_state = optimizer.init(params)
    step = make_step(config, optimizer, args.lm_weight, args.token_weight)
    rng = np.random.default_rng(args.seed)
    history, t0 = [], time.time()
    for i in (bar := tqdm(range(1, args.steps + 1), desc="train reward model", unit="step")):
        b = rng.integers(0, len(train.last), args.batch)
        params, opt_state, loss = step(params, opt_state, *vars(train.take(b)).values())
        if i % args.eval_every == 0 or i == args.steps:
            scorer.model.params = params
            history.append({"step": i, "train_loss": float(loss), **evaluate(scorer, val, process=args.process),
                            "seconds": round(time.time() - t0, 1)})
            tqdm.write(json.dumps(history[-1]))
    bar.close()

    train_seconds = round(time.time() - t0, 1)
    n = min(QUICK, args.val_problems)
    quick = evaluate(scorer, val.take(slice(n * VAL_SAMPLES)), process=args.process)
    final = {**history[-1], "quick_check": {"val_problems": n, **quick}}
    if args.test_problems:
        test = rollouts(policy, problems.held_out("test", "hard", args.test_problems), VAL_SAMPLES, args.seed, scorer,
                        args.process)
        final |= evaluate(scorer, test, "test", args.process)
    model = models.Model(config, jax.device_get(params), policy.tokenizer)
    model.save(args.out)
    metrics = write_metrics(args, **final, train_seconds=train_seconds, total_seconds=round(time.time() - start, 1),
                            parameters=config.num_params, train_rollouts=len(train.last),
                            train_mean_label=float(train.outcome.mean()), history=history)
    print(f"saved {args.out}: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()
                                            if k.endswith(("_auc", "_best_of_16"))))
    return metrics


if __name__ == "__main__":
    cli.run(main)
