"""scripts.train_tiny: the loss mask, and a short run that is deterministic and loads back."""
import json
import random

import jax
import numpy as np
import pytest

import models
from meta.tasks import arith, arith_verifiers
from scripts import train_tiny

SMALL = ["--steps", "4", "--batch", "8", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1",
         "--intermediate", "64", "--eval-every", "2", "--stop-at", "0", "--val-problems", "4"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny.train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model", n=2000)


def test_tokenizer_splits_digits_and_round_trips(tok):
    p = arith.Problem((47, 38, 19), ("+", "-"))
    ids = tok.encode(p.prompt + p.solution, bos=False)
    assert tok.decode(ids) == p.prompt + p.solution
    pieces = [tok.decode([i]) for i in ids]
    assert "4" in pieces and "47" not in pieces and "85" not in pieces
    assert tok.vocab_size <= 32


def test_pack_masks_exactly_the_solution_and_eos(tok):
    p = arith.Problem((47, 38, 19), ("+", "-"))
    tokens, mask = train_tiny.pack(tok, [p], seq_len=40)
    ids, n_prompt = train_tiny.encode(tok, p)
    assert tokens[0, :len(ids)].tolist() == ids and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    targets = tokens[0, 1:][mask[0] > 0]
    assert tok.decode(targets[:-1].tolist()) == p.solution and targets[-1] == tok.eos_id
    with pytest.raises(ValueError) as err:
        train_tiny.pack(tok, [p], seq_len=10)
    assert "raise --seq-len" in str(err.value)


def test_packed_rows_train_each_example_exactly_as_alone(tok):
    rng = random.Random(0)
    problems = [arith.Problem(tuple(rng.randrange(10, 99) for _ in range(n)), ("+",) * (n - 1))
                for n in (2, 3, 4, 3, 2, 4, 3)]
    encoded = [train_tiny.encode(tok, p) for p in problems]
    seq_len = 100                                    # 7 examples of 28-56 tokens fill 4 rows
    packed = list(train_tiny.pack_rows(encoded, 2, seq_len))
    assert len(packed) == 2
    assert sum(int(s.max()) for batch in packed for s in batch[3]) == len(problems)    # every example, once
    assert packed[0][3][0].max() >= 2                                                   # a row holds several
    config = models.preset("tiny", vocab_size=tok.vocab_size, hidden=32, layers=2, heads=2, head_dim=16, kv_heads=1,
                           intermediate=64, max_len=128)
    params = models.init_params(config, jax.random.key(0))
    step_loss = train_tiny.make_step(config, None)[1]
    alone = train_tiny.pack(tok, None, seq_len, encoded=encoded)
    nll = lambda *batch: float(step_loss(params, *batch)) * float(batch[1].sum())
    together = sum(nll(*batch) for batch in packed)
    assert together == pytest.approx(sum(nll(alone[0][i:i + 1], alone[1][i:i + 1]) for i in range(len(problems))), rel=1e-5)
    assert sum(float(b[1].sum()) for b in packed) == float(alone[1].sum())           # the same tokens are learned
    with pytest.raises(ValueError, match="raise --seq-len"):
        next(train_tiny.pack_rows(encoded, 1, 10))


def test_a_flawed_solution_has_one_mistake_carried_forward_and_the_corrected_attempt_fixes_it():
    rng, kinds = random.Random(3), {"slip": 0, "reuse": 0, "skip": 0}
    for p in arith.held_out("val", "hard", 300):
        flawed, corrected = p.flawed_solution(rng)
        wrong, right = flawed.split("\n"), corrected.split("\n")
        scores = arith_verifiers.step_scores(flawed, p)
        assert arith.answer(corrected) == p.answer != arith.answer(flawed)
        assert arith_verifiers.step_scores(corrected, p).all()
        k = int(np.argmin(scores)) if not scores.all() else len(wrong) - 1      # the line the feedback names
        assert arith_verifiers.feedback(p.prompt, flawed) == f"? {wrong[k][:arith_verifiers.LINE]}\n"
        if scores.all():                                    # a term left out: one step fewer, the answer named
            kinds["skip"] += 1
            terms = lambda text: sorted((s.op, s.right) for s in arith.parse(text).steps)
            assert len(wrong) == len(right) - 1 and len(set(terms(corrected)) - set(terms(flawed))) <= 1
            continue
        assert wrong[:k] == right[:k] and scores.sum() == len(scores) - 1       # one mistake, carried forward
        if arith.parse(flawed).steps[k].correct:            # right arithmetic on a term used before
            kinds["reuse"] += 1
        else:
            kinds["slip"] += 1
            assert 1 <= abs(arith.parse(flawed).steps[k].result - arith.parse(corrected).steps[k].result) <= 10
    assert min(kinds.values()) > 60, kinds                  # each kind about a third (the first step: a slip)


def test_a_feedback_turn_is_laid_out_as_refine_appends_it_and_only_the_correction_is_learned(tok):
    from meta import tasks
    task, p = tasks.get("tiny-arith"), arith.held_out("val", "hard", 1)[0]
    flawed, corrected = p.flawed_solution(random.Random(0))
    ids, n = train_tiny.encode_feedback(tok, task, p, random.Random(0))
    message = arith_verifiers.feedback(p.prompt, flawed)
    assert message.startswith("? ") and message.endswith("\n")
    assert tok.decode(ids[:n]) == tok.decode(tok.encode(p.prompt + flawed)) + "</s>" + message
    tokens, mask = train_tiny.pack(tok, None, seq_len=len(ids), encoded=[(ids, n)])
    targets = tokens[0, 1:][mask[0] > 0]
    assert tok.decode(targets[:-1].tolist()) == corrected and targets[-1] == tok.eos_id
    tokens, _ = next(train_tiny.batches(tok, 64, 160, 0, task, feedback=0.5))
    seen = sum(tok.eos_id in row[:int(np.nonzero(row)[0][-1])].tolist() for row in tokens)   # an EOS mid-row
    assert 16 <= seen <= 48                                                       # about half: 32 +- 4 sd
    tokens, _ = next(train_tiny.batches(tok, 64, 90, 0, task, feedback=1.0))     # turns longer than a row ...
    seen = sum(tok.eos_id in row[:int(np.nonzero(row)[0][-1])].tolist() for row in tokens)
    assert 0 < seen < 64                                                          # ... are plain examples instead


def test_a_short_run_is_deterministic_and_loads_back(tmp_path):
    a = train_tiny.main(SMALL + ["--out", str(tmp_path / "a")])
    train_tiny.main(SMALL + ["--out", str(tmp_path / "b")])
    ma, mb = models.load(tmp_path / "a"), models.load(tmp_path / "b")
    assert ma.config == mb.config and ma.config.hidden == 32
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), ma.params, mb.params))
    recorded = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert recorded["steps"] == 4 and [h["step"] for h in recorded["history"]] == [2, 4]
    assert recorded["test_hard_50_greedy_accuracy"] == a["test_hard_50_greedy_accuracy"]
    assert ma.tokenizer is not None and ma.tokenizer.vocab_size == ma.config.vocab_size
    # --init fine-tunes: the same tokenizer and shape, the weights start from a's (a tiny lr keeps them there)
    train_tiny.main(["--steps", "4", "--batch", "8", "--eval-every", "2", "--stop-at", "0", "--val-problems", "4",
                     "--init", str(tmp_path / "a"), "--lr", "1e-9", "--out", str(tmp_path / "c")])
    mc = models.load(tmp_path / "c")
    assert mc.config == ma.config and (tmp_path / "c" / "tokenizer.model").read_bytes() == \
        (tmp_path / "a" / "tokenizer.model").read_bytes()
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.allclose(x, y, atol=1e-6)), ma.params, mc.params))
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["args"]["init"] == str(tmp_path / "a")
    with pytest.raises(ValueError, match="name --out, a new directory"):
        train_tiny.main(["--init", str(tmp_path / "a")])


@pytest.mark.parametrize("flags, message", [
    (["--eval-every", "0"], "--eval-every must be positive, got 0"),        # ZeroDivisionError before
    (["--vocab-size", "0"], "--vocab-size must be positive, got 0"),
    (["--steps", "1"], "--steps must be at least 2"),                       # optax's decay_steps=0 before
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),         # saved NaN weights, exit 0
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--stop-at", "2"], "--stop-at at most 1"),
    (["--val-problems", "1001"], "--val-problems must be at most 1000"),
    (["--feedback", "1.5"], "--feedback in [0, 1] (a fraction), got 128, 0.55 and 1.5"),
    (["--task", "countdown", "--feedback", "0.3"], "task countdown has no flawed solutions"),
    (["--seq-len", "300"], "--seq-len 300 is longer than the model's --max-len 256"),
    (["--max-len", "0"], "--max-len must be positive"),
    (["--init", "tiny-arith", "--hidden", "64", "--max-len=128"], "the shape is its own; leave out --hidden --max-len"),
    (["--init", "tiny-arith-rm"], "a policy with its tokenizer is needed, not a reward model"),
    (["--init", "tiny-arith", "--seq-len", "300"], "--seq-len 300 is longer than tiny-arith's maximum length 256"),
    (["--reward", "--lm-weight", "inf"], "--lm-weight must be a finite number >= 0"),
    (["--reward", "--eval-every", "0"], "--eval-every must be positive"),   # after sampling every rollout
    (["--prm", "--test-problems", "1001"], "--test-problems must be at most 1000, got 200 and 1001"),
    (["--prm", "--test-problems", "-1"], "--test-problems must be a finite number >= 0"),
])
def test_bad_training_flags_are_refused_before_anything_is_written(tmp_path, flags, message):
    with pytest.raises(ValueError) as err:
        train_tiny.main(flags + ["--out", str(tmp_path / "out")])
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()                                  # not even an empty directory


def test_reward_rollouts_are_labelled_by_the_verifier_and_masked_on_the_solution():
    from meta.tasks import arith_verifiers as verifiers
    import dataclasses
    from meta.scoring import RewardModel
    from sampling import Sampler
    from scripts import train_reward
    from scripts.eval_arith import solve
    policy = models.load("tiny-arith")
    config = dataclasses.replace(policy.config, score_head=True)
    rm = RewardModel(models.Model(config, dict(policy.params, score=np.zeros(config.hidden, np.float32)),
                                  policy.tokenizer))
    problems = arith.held_out("val", "hard", 3)
    data = train_reward.rollouts(policy, problems, 4, 0, rm)
    texts, _ = solve(policy, problems, n=4, sampler=Sampler(temperature=train_reward.TEMPERATURE),
                     seed=0)                                                         # the same draws
    tok = policy.tokenizer
    for i, (p, t) in enumerate((p, t) for p, row in zip(problems, texts) for t in row):
        n = data.last[i] + 1
        assert data.ids[i, :n].tolist() == tok.encode(p.prompt + t) + [tok.eos_id]
        assert (data.ids[i, n:] == policy.config.pad_id).all()
        prompt = len(tok.encode(p.prompt))
        assert data.mask[i].tolist() == [float(prompt - 1 <= j < n) for j in range(data.ids.shape[1])]
        assert (data.label[i, :n] == verifiers.outcome_scores([t], [p])[0]).all() and data.first[i] == prompt - 1


def test_auc_counts_pairs_and_ties():
    from scripts.train_reward import auc
    assert auc([0.9, 0.1, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert np.isnan(auc([1.0, 2.0], [1, 1]))


def test_a_short_reward_run_saves_a_reward_model(tmp_path):
    import meta
    out = tmp_path / "rm"
    metrics = train_tiny.main(["--reward", "--problems", "4", "--samples", "4", "--steps", "2", "--batch", "8",
                               "--eval-every", "1", "--val-problems", "2", "--out", str(out)])
    rm = models.load(out)
    assert rm.config.score_head and rm.tokenizer is not None
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert np.isnan(metrics["val_auc"]) or 0 <= metrics["val_auc"] <= 1
    scores = meta.RewardModel(rm)(["Q: 1+2=?\n"], [["1+2=3\nA: 3", "1+2=4\nA: 4"]])
    assert np.isfinite(np.asarray(scores, np.float64)).all()
    assert json.loads((out / "metrics.json").read_text())["train_rollouts"] == 16


def test_process_labels_are_the_step_checker_s_prefix_at_each_step_newline_and_the_outcome_at_eos():
    import dataclasses
    from meta.scoring import RewardModel
    from scripts import train_reward
    policy = models.load("tiny-arith")
    config = dataclasses.replace(policy.config, score_head=True)
    prm = RewardModel(models.Model(config, dict(policy.params, score=np.zeros(config.hidden, np.float32)),
                                   policy.tokenizer))
    tok, p = policy.tokenizer, arith.Problem((47, 38, 19, 5), ("+", "-", "+"))         # 85, 66, 71
    newline, = tok.encode("\n", bos=False)
    for text, steps, outcome in [("47+38=85\n85-19=60\n60+5=65\nA: 65", [1, 0, 0], 0),   # a slip at step 2
                                 ("47+38=85\n85-19=66\n66+5=71\nA: 71", [1, 1, 1], 1),
                                 ("47+5=52\n52+38=90\n90-19=71\nA: 71", [1, 1, 1], 1),   # another order
                                 ("47+38=85\n85+38=123\n123-19=104\nA: 104", [1, 0, 0], 0)]:  # a term twice
        ids, first, label, mask = train_reward.labelled(prm, p, text, process=True)
        assert ids == tok.encode(p.prompt + text) + [tok.eos_id] and ids[first] == newline
        solution_newlines = [j for j in range(first + 1, len(ids)) if ids[j] == newline]
        assert np.nonzero(mask)[0].tolist() == solution_newlines + [len(ids) - 1]      # not the prompt's own
        assert label[solution_newlines].tolist() == steps and label[-1] == outcome
    # blank lines and lines from the answer on are not labelled; a malformed line is a wrong step
    assert train_reward.step_labels("47+38=85\n\n85-19=66\n66+5=71\nA: 71\n9+9=18\n", p) == \
        [1.0, None, 1.0, 1.0, None, None]
    assert train_reward.step_labels("47+38=85\n85-19\n66+5=71\n", p) == [1.0, 0.0, 0.0]


def test_a_short_prm_run_is_deterministic_and_loads_back(tmp_path):
    flags = ["--prm", "--problems", "4", "--samples", "4", "--steps", "2", "--batch", "8", "--eval-every", "1",
             "--val-problems", "2", "--test-problems", "2"]
    a = train_tiny.main(flags + ["--out", str(tmp_path / "a")])
    b = train_tiny.main(flags + ["--out", str(tmp_path / "b")])
    ma, mb = models.load(tmp_path / "a"), models.load(tmp_path / "b")
    assert ma.config.score_head and ma.config == mb.config and ma.tokenizer is not None
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), ma.params, mb.params))
    drop = lambda m: {k: v for k, v in m.items() if "seconds" not in k and k != "history"}
    assert drop(a) == drop(b) and a["args"]["process"] and a["train_rollouts"] == 16
    for key in ("val_step_auc", "test_step_auc", "val_auc", "test_auc"):
        assert np.isnan(a[key]) or 0 <= a[key] <= 1
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["quick_check"]["val_problems"] == 2


def test_generation_budget_fits_every_order_of_every_solution(tok):
    import itertools
    from scripts.eval_arith import max_new_tokens
    problems = arith.held_out("test", "hard", 40)
    budget = max_new_tokens(problems)
    longest = 0
    for p in problems:
        for order in itertools.permutations(range(len(p.operands))):
            try:
                text = p.ordered_solution(order)
            except ValueError:
                continue
            longest = max(longest, len(tok.encode(text, bos=False)) + 1)        # + EOS
    assert longest <= budget < longest + 16
