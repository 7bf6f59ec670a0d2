"""Train a small outcome reward model for the built-in task from the policy's own rollouts.

    python -m scripts.train_tiny --reward --out models/zoo/tiny-arith-rm

(also ``python -m scripts.train_reward``). The shipped policy (``--policy``, default
``tiny-arith``) samples ``--samples`` solutions at the demo's temperature (``eval_arith.TEMPERATURE``) for each of ``--problems``
hard problems of the training stream; the outcome verifier labels each 1 (right answer) or
0. The reward model is a copy of the policy with a scalar head (``config.score_head``, zero
at the start) fine-tuned with a sigmoid cross-entropy on the label at the last token (the
score :class:`meta.RewardModel` reads), plus the same loss at every solution token (a value
estimate of each prefix, Cobbe et al. 2021, which gives the trunk a denser signal) and the
language-model loss on the right solutions (so the trunk keeps its arithmetic). Validation:
AUC and best-of-16 accuracy on 16 rollouts of each of ``--val-problems`` val hard problems, every ``--eval-every``
steps; both are recorded in ``metrics.json``. Deterministic for a given ``--seed``.
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
from meta.scoring import RewardModel
from meta.tasks import arith, arith_verifiers
from sampling import Sampler
from scripts import cli
from scripts.eval_arith import TEMPERATURE, solve
from scripts.training import check_flags, write_metrics

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "zoo" / "tiny-arith-rm"
VAL_SAMPLES = 16


@dataclasses.dataclass
class Data:
    """Labelled rollouts: ids [R, W] (BOS, prompt, solution, EOS, padding), the solution-token
    mask [R, W], each rollout's last index [R] and its 0/1 label [R]."""
    ids: np.ndarray
    mask: np.ndarray
    last: np.ndarray
    label: np.ndarray


def rollouts(policy, problems, samples: int, seed: int, scorer: RewardModel) -> Data:
    """``samples`` rollouts per problem at ``TEMPERATURE``, labelled by the outcome verifier."""
    texts, _ = solve(policy, problems, n=samples, sampler=Sampler(temperature=TEMPERATURE), seed=seed)
    seqs, starts, labels = [], [], []
    for p, row in zip(problems, texts):
        labels += list(arith_verifiers.outcome_scores(list(row), [p] * len(row)))
        prompt = len(policy.tokenizer.encode(p.prompt))
        seqs += [scorer.encode(p.prompt, t) for t in row]
        starts += [prompt - 1] * len(row)
    width = max(map(len, seqs))
    ids = np.full((len(seqs), width), policy.config.pad_id, np.int32)
    mask = np.zeros((len(seqs), width), np.float32)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = s
        mask[i, start:len(s)] = 1.0
    return Data(ids, mask, np.array([len(s) - 1 for s in seqs], np.int32), np.array(labels, np.float32))


def make_step(config, optimizer, lm_weight: float, token_weight: float):
    """The jitted train step: (params, opt_state, ids, mask, last, label) -> (params, opt_state, loss)."""
    def loss_fn(params, ids, mask, last, label):
        x, _ = models.hidden_states(config, params, ids)
        r = jnp.einsum("btd,d->bt", x, params["score"], preferred_element_type=jnp.float32)
        bce = optax.sigmoid_binary_cross_entropy(r, jnp.broadcast_to(label[:, None], r.shape))
        final = jnp.take_along_axis(bce, last[:, None], axis=1).mean()
        tokens = jnp.sum(bce * mask) / jnp.sum(mask)
        logits = jnp.matmul(x[:, :-1], params["lm_head"], preferred_element_type=jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        right = mask[:, :-1] * label[:, None]
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


def evaluate(scorer: RewardModel, data: Data, rows: int = 1024) -> dict:
    """AUC of the reward model's scores on ``data`` and best-of-``VAL_SAMPLES`` accuracy."""
    s = np.concatenate([np.asarray(scorer.score_ids(data.ids[i:i + rows], data.last[i:i + rows]))
                        for i in range(0, len(data.ids), rows)])
    s, y = s.reshape(-1, VAL_SAMPLES), data.label.reshape(-1, VAL_SAMPLES)
    return {"val_auc": round(auc(s, y), 4), "val_best_of_16": float(y[np.arange(len(y)), s.argmax(1)].mean()),
            "val_mean_label": float(y.mean())}


def main(argv=None) -> dict:
    """Train the reward model, save it to ``--out`` with ``metrics.json``, return the metrics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory to write")
    ap.add_argument("--policy", default="tiny-arith", help="the policy: checkpoint directory or zoo name")
    ap.add_argument("--problems", type=int, default=2048, help="hard training problems")
    ap.add_argument("--samples", type=int, default=8, help="rollouts per training problem")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lm-weight", type=float, default=0.5, help="weight of the LM loss on right rollouts")
    ap.add_argument("--token-weight", type=float, default=1.0, help="weight of the per-token value loss")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-problems", type=int, default=200, help="val hard problems (16 rollouts each)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    check_flags(args, ("steps", "batch", "problems", "samples", "val_problems", "eval_every"),
                ("lm_weight", "token_weight"))
    most = arith.LEVELS["hard"].held_out
    if args.val_problems > most:
        raise ValueError(f"--val-problems must be at most {most}, got {args.val_problems}")

    start = time.time()
    policy = models.load(args.policy)
    if policy.tokenizer is None or policy.config.tie_embeddings:
        raise ValueError("the policy needs a tokenizer and an untied LM head")
    config = dataclasses.replace(policy.config, score_head=True)
    params = dict(jax.device_get(policy.params), score=np.zeros(config.hidden, config.dtype))
    scorer = RewardModel(models.Model(config, params, policy.tokenizer))
    stream = arith.train_stream({"hard": 1.0}, seed=args.seed + 1000)   # not the policy's training draws
    train = rollouts(policy, [next(stream) for _ in range(args.problems)], args.samples, args.seed + 1, scorer)
    val = rollouts(policy, arith.held_out("val", "hard", args.val_problems), VAL_SAMPLES, args.seed, scorer)
    print(f"{len(train.label)} training rollouts ({train.label.mean():.1%} right), "
          f"{len(val.label)} validation rollouts; sampled in {time.time() - start:.0f} s")

    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10 + 1, args.steps, args.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    params = jax.tree.map(jnp.asarray, params)
    opt_state = optimizer.init(params)
    step = make_step(config, optimizer, args.lm_weight, args.token_weight)
    rng = np.random.default_rng(args.seed)
    history, t0 = [], time.time()
    for i in (bar := tqdm(range(1, args.steps + 1), desc="train reward model", unit="step")):
        b = rng.integers(0, len(train.label), args.batch)
        params, opt_state, loss = step(params, opt_state, train.ids[b], train.mask[b], train.last[b], train.label[b])
        if i % args.eval_every == 0 or i == args.steps:
            scorer.model.params = params
            history.append({"step": i, "train_loss": float(loss), **evaluate(scorer, val),
                            "seconds": round(time.time() - t0, 1)})
            tqdm.write(json.dumps(history[-1]))
    bar.close()

    model = models.Model(config, jax.device_get(params), policy.tokenizer)
    model.save(args.out)
    metrics = write_metrics(args, **history[-1], train_seconds=round(time.time() - t0, 1),
                            total_seconds=round(time.time() - start, 1), parameters=config.num_params,
                            train_rollouts=len(train.label), train_mean_label=float(train.label.mean()),
                            history=history)
    print(f"saved {args.out}: val AUC {metrics['val_auc']:.3f}, best-of-16 {metrics['val_best_of_16']:.3f} "
          f"(mean label {metrics['val_mean_label']:.3f})")
    return metrics


if __name__ == "__main__":
    cli.run(main)
