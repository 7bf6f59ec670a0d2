"""Meta-generators: exact choices on scripted rollouts, budgets hand-counted on a fake model, errors."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import meta
import models
import importlib
from meta.draw import Drawn
from meta.tasks.arith_verifiers import OutcomeVerifier, process_verifier
from sampling import Sampler

MODULES = ("common", "mbr", "self_consistency")   # where `draw` is called
adaptive = importlib.import_module("meta.adaptive")
mbr = importlib.import_module("meta.mbr")

# ---- scripted rollouts: rollout r of prompt p is SCRIPT[p][r], a text of space-separated token ids ----
SCRIPT = {
    "p0": ["1 7", "2 7", "3 8", "4 8", "5 9", "6 8", "7 9", "8 7"],
    "p1": ["1 5", "2 6", "3 6", "4 5", "5 5", "6 5", "7 5", "8 5"],
}


class ScriptedDraw:
    """Stands in for ``meta.draw.draw``: returns scripted rollouts and counts them like the real one."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, prompts, *, n, sampler, seed, max_new_tokens, budget, first_rollout=0,
                 stop_tokens=None, rows=2048):
        self.calls.append((list(prompts), first_rollout, n))
        texts = [SCRIPT[p][first_rollout:first_rollout + n] for p in prompts]
        tokens = np.zeros((len(prompts), n, 4), np.int32)
        lengths = np.zeros((len(prompts), n), np.int64)
        for g, row in enumerate(texts):
            for r, t in enumerate(row):
                ids = [int(x) for x in t.split()]
                tokens[g, r, :len(ids)], lengths[g, r] = ids, len(ids)
        budget.generated += int(lengths.sum())
        return Drawn(texts, tokens, lengths)


@pytest.fixture
def scripted(monkeypatch):
    fake = ScriptedDraw()
    for name in MODULES:
        monkeypatch.setattr(importlib.import_module(f"meta.{name}"), "draw", fake)
    return fake


last = lambda t: int(t.split()[-1])                       # the "answer" of a scripted rollout
first = lambda p, t, ref: float(t.split()[0])             # a scorer: the first token id
PROMPTS = ["p0", "p1"]


def test_self_consistency_majority_and_tie(scripted):
    r = meta.self_consistency(None, PROMPTS, n=4, answer=last)
    # p0: 7,7,8,8 -> tie, 7 occurred first; p1: 5,6,6,5 -> tie, 5 first
    assert r.answers == [7, 5] and r.chosen == [0, 0]
    assert r.votes == [[[7, 2.0], [8, 2.0]], [[5, 2.0], [6, 2.0]]]
    r = meta.self_consistency(None, PROMPTS, n=8, answer=last)
    # p0: 7 x3, 8 x3, 9 x2 -> tie 7/8, 7 first; p1: 5 x6
    assert r.answers == [7, 5] and r.chosen == [0, 0]
    r = meta.self_consistency(None, PROMPTS, n=6, answer=last)
    assert r.answers == [8, 5] and r.chosen == [2, 0]       # p0: 7 x2, 8 x3, 9 x1


def test_without_an_extractor_the_answer_is_the_stripped_text(scripted):
    r = meta.self_consistency(None, ["p1"], n=4)
    assert r.extracted == [["1 5", "2 6", "3 6", "4 5"]] and r.answers == ["1 5"] and r.chosen == [0]
    assert meta.common.extract(None, [[" 12\n", "12"]]) == [["12", "12"]]


def test_best_of_n_and_tie(scripted):
    r = meta.best_of_n(None, PROMPTS, n=4, scorer=meta.FunctionScorer(first), answer=last)
    assert r.chosen == [3, 3] and r.answers == [8, 5] and r.scores[0] == [1.0, 2.0, 3.0, 4.0]
    tie = meta.FunctionScorer(lambda p, t, ref: float(last(t) == 8))
    r = meta.best_of_n(None, ["p0"], n=8, scorer=tie, answer=last)
    assert r.chosen == [2]                                    # rollouts 2, 3, 5 score 1: the first wins


def test_weighted_vote(scripted):
    r = meta.weighted_vote(None, ["p0"], n=8, scorer=meta.FunctionScorer(first), answer=last)
    # weights by answer: 7: 1+2+8=11, 8: 3+4+6=13, 9: 5+7=12
    assert r.answers == [8] and r.chosen == [2] and r.votes == [[[7, 11.0], [8, 13.0], [9, 12.0]]]
    r = meta.weighted_vote(None, ["p0"], n=4, scorer=meta.FunctionScorer(lambda p, t, ref: 1.0), answer=last)
    assert r.answers == [7]                                  # 2 vs 2: the earlier answer


def test_scorers_keep_float64_scores(scripted):
    # float32 made 1e8 + 1 tie 1e8, broke the 0.4 + 0.3 vs 0.7 tie, and took 0.5 ** 200 to 0
    big = meta.FunctionScorer(lambda p, t, ref: 1e8 + float(t == "2 7"))
    assert meta.best_of_n(None, ["p0"], n=3, scorer=big, answer=last).chosen == [1]
    w = {"1 7": 0.4, "2 7": 0.3, "3 8": 0.7}
    r = meta.weighted_vote(None, ["p0"], n=3, scorer=meta.FunctionScorer(lambda p, t, ref: w[t]), answer=last)
    assert r.answers == [7] and r.votes == [[[7, 0.7], [8, 0.7]]]             # a tie: the first answer
    r = meta.weighted_vote(None, ["p0"], n=3, answer=last,
                           scorer=meta.FunctionScorer(lambda p, t, ref: w[t] if t != "2 7" else 0.2))
    assert r.answers == [8]
    steps = meta.ProcessScorer(lambda ps, texts, refs: [[[0.4 + 0.1 * (t == "2 7")] * 200 for t in row]
                                                        for row in texts], "prod")
    r = meta.best_of_n(None, ["p0"], n=3, scorer=steps, answer=last)
    assert r.chosen == [1] and r.scores[0][1] == 0.5 ** 200


def test_mbr_choices(scripted):
    # p1, n=4: [1 5], [2 6], [3 6], [4 5]; exact match never holds -> all 0 -> rollout 0
    r = meta.mbr(None, ["p1"], n=4, utility="exact", answer=last)
    assert r.chosen == [0] and r.scores == [[0.0] * 4]
    # token F1: rollout 1 [2 6] shares 6 with [3 6] -> 0.5/3; rollout 0 shares 5 with [4 5] -> same; tie -> 0
    r = meta.mbr(None, ["p1"], n=4, utility="token_f1", answer=last)
    np.testing.assert_allclose(r.scores[0], [0.5 / 3] * 4, rtol=1e-6)
    assert r.chosen == [0]
    # a user utility on device: closeness of the first tokens; middle ones win, 2 before 3
    r = meta.mbr(None, ["p1"], n=4, utility=lambda a, la, b, lb: -jnp.abs(a[0] - b[0]).astype(jnp.float32))
    np.testing.assert_allclose(r.scores[0], [-2.0, -4 / 3, -4 / 3, -2.0], rtol=1e-6)
    assert r.chosen == [1]


@pytest.mark.parametrize("utility, message", [
    (lambda a, la, b, lb: jnp.where(la == lb, jnp.nan, 1.0), "the utility gave non-finite values"),
    (lambda a, la, b, lb: a == b, "utility must return a real scalar, got bool of shape (3,)"),
    (lambda a, la, b, lb: a.missing, "tracing it failed: AttributeError"),
    (lambda a, la, b, lb: "x", "tracing it failed: TypeError"),
    (lambda a, la, b, lb: (la, lb), "utility must return a real scalar, got tuple"),
])
def test_mbr_refuses_a_utility_that_is_not_a_finite_scalar(utility, message):
    budget = meta.Budget()
    with pytest.raises(ValueError) as e:
        meta.mbr(Uniform(), [[1]], n=4, utility=utility, sampler=Sampler(), max_new_tokens=3, budget=budget)
    assert message in str(e.value)
    assert budget.generated == (4 * 3 if "non-finite" in message else 0)    # shape errors: before drawing


def test_utilities_by_hand():
    t = lambda *x: jnp.asarray(list(x) + [0] * (6 - len(x)), jnp.int32)
    assert float(mbr.rouge_l(t(1, 2, 3, 4), 4, t(1, 3, 4, 5), 4)) == pytest.approx(2 * 3 / 8)   # LCS 1 3 4
    assert float(mbr.rouge_l(t(1, 2), 2, t(2, 1), 2)) == pytest.approx(2 * 1 / 4)
    assert float(mbr.token_f1(t(1, 1, 2), 3, t(1, 2, 2), 3)) == pytest.approx(2 * 2 / 6)      # overlap {1, 2}
    assert float(mbr.exact_match(t(1, 2), 2, t(1, 2, 3), 2)) == 1.0                           # up to lengths
    assert float(mbr.exact_match(t(1, 2), 2, t(1, 2, 3), 3)) == 0.0
    assert float(mbr.rouge_l(t(), 0, t(), 0)) == 1.0


def test_rejection_rounds(scripted):
    accept = meta.FunctionScorer(lambda p, t, ref: float(last(t) == 9))
    r = meta.rejection_sample(None, PROMPTS, n=8, round_size=3, scorer=accept, answer=last)
    # p0: first 9 is rollout 4 (second round); p1 never: all 8 drawn, None
    assert r.chosen == [4, None] and r.answers == [9, None]
    assert scripted.calls == [(["p0", "p1"], 0, 3), (["p0", "p1"], 3, 3), (["p1"], 6, 2)]
    assert [i["rollouts"] for i in r.info] == [6, 8]


def test_rejection_stops_within_budget(scripted):
    never = meta.FunctionScorer(lambda p, t, ref: 0.0)
    budget = meta.Budget(max_generated=5 * 10)          # 5 rollouts of up to 10 tokens
    r = meta.rejection_sample(None, PROMPTS, n=8, round_size=2, scorer=never, answer=last, budget=budget,
                              max_new_tokens=10)
    # round 1: 2 x 2 rows fit (40 <= 50); round 2: 2 x 2 = 40 more does not (8 generated, 42 left -> 4 rows) ...
    assert all(10 * k * len(p) <= 50 for p, _, k in scripted.calls)
    assert budget.generated <= 50 and r.answers == [None, None]


def test_adaptive_rules(scripted):
    # unbeatable, n=8, rounds of 4: p1 after 4: 5 x2, 6 x2 -> go on; after 8: 5 x6 -> done (= SC@8)
    r = meta.adaptive_self_consistency(None, PROMPTS, n=8, round_size=4, rule="unbeatable", answer=last)
    sc = meta.self_consistency(None, PROMPTS, n=8, answer=last)
    assert r.answers == sc.answers == [7, 5]
    # p1, at most 7, rounds of 2: after 4 rollouts 5 x2, 6 x2; after 6: 5 x4, 6 x2 and 4 > 2 + 1 remaining
    r = meta.adaptive_self_consistency(None, ["p1"], n=7, round_size=2, rule="unbeatable", answer=last)
    assert r.info == [{"rounds": 3, "rollouts": 6}] and r.answers == [5]
    # beta, confidence 0.9, p1 in rounds of 4: after round 1, 5 x2 and 6 x2: P(Bin(5, 1/2) <= 2) = 0.5;
    # after round 2, 5 x6 and 6 x2: P(Bin(9, 1/2) <= 6) = 466/512 = 0.910 -> stops
    r = meta.adaptive_self_consistency(None, ["p1"], n=8, round_size=4, rule="beta", confidence=0.9, answer=last)
    assert r.info[0]["rounds"] == 2
    assert adaptive.beta_confidence(6, 2) == pytest.approx(sum(__import__("math").comb(9, i) for i in range(7)) / 512)


def test_pass_at_k_meta(scripted):
    correct = meta.FunctionScorer(lambda p, t, ref: float(last(t) == 8))
    r = meta.coverage(None, PROMPTS, n=4, ks=[1, 2, 4], scorer=correct, answer=last)
    # p0: 2 of 4 correct -> pass@1 .5, pass@2 1 - C(2,2)/C(4,2) = 5/6; p1: none
    assert r.info[0] == pytest.approx({"pass@1": 0.5, "pass@2": 5 / 6, "pass@4": 1.0})
    assert r.info[1] == {"pass@1": 0.0, "pass@2": 0.0, "pass@4": 0.0}
    assert r.chosen == [2, None] and r.answers == [8, None]
    r = meta.coverage(None, PROMPTS, n=6, scorer=correct, answer=last)      # default ks end at n itself
    assert list(r.info[0]) == ["pass@1", "pass@2", "pass@4", "pass@6"] and r.info[0]["pass@6"] == 1.0


def test_process_aggregations():
    steps = [1.0, 0.5, 0.8]
    got = {h: meta.scoring.aggregate(steps, h) for h in meta.scoring.AGGREGATIONS}
    assert got == pytest.approx({"last": 0.8, "min": 0.5, "prod": 0.4, "mean": 2.3 / 3})
    assert meta.scoring.aggregate([], "min") == 0.0
    scorer = process_verifier("mean")
    s = scorer(["x"], [["1+2=3\n3+4=8\nA: 8"]])
    assert s.tolist() == [[0.5]]


def test_result_to_json(scripted):
    import json
    r = meta.self_consistency(None, PROMPTS, n=2, answer=last)
    out = json.loads(json.dumps(r.to_json()))
    assert out["method"] == "self_consistency" and out["prompts"][0]["rollouts"][1]["text"] == "2 7"
    assert out["prompts"][1]["tokens"] == 4 and out["budget"]["generated"] == 8
    minus_inf = meta.FunctionScorer(lambda p, t, ref: float("-inf") if t == "1 7" else 0.5)  # e.g. log p = -inf
    r = meta.best_of_n(None, PROMPTS, n=2, scorer=minus_inf, answer=last)
    out = json.loads(json.dumps(r.to_json(), allow_nan=False))     # strict JSON: no Infinity
    assert [x["score"] for x in out["prompts"][0]["rollouts"]] == ["-inf", 0.5]


def test_result_to_json_with_array_prompts():
    import json
    prompts = [np.array([2, 3]), jnp.array([0])]           # token-id arrays, as the engine accepts them
    r = meta.self_consistency(Fake(), prompts, n=1, sampler=Sampler.greedy(), max_new_tokens=2, answer=lambda t: t)
    out = json.loads(json.dumps(r.to_json()))               # .item() failed on them; [1] became 1
    assert [p["prompt"] for p in out["prompts"]] == [[2, 3], [0]]


# ---- budgets on a fake model through the real engine ----
EOS = 4
TABLE = np.full((5, 5), -30.0, np.float32)
TABLE[0, 1] = TABLE[1, 2] = TABLE[2, 1] = TABLE[3, EOS] = TABLE[4, 0] = 0.0    # 0->1->2->1->2..., 3->EOS


def fake_forward(config, params, tokens, positions=None, cache=None, *, last_only=False):
    logits = params["table"][tokens]
    return (logits[:, -1] if last_only else logits), cache.advance(tokens.shape[1])


@dataclasses.dataclass
class Fake:
    config = models.preset("tiny", vocab_size=5, layers=1, eos_ids=(EOS,), pad_id=0)
    params = {"table": jnp.asarray(TABLE)}
    tokenizer = None
    forward = staticmethod(fake_forward)


def test_budget_hand_counted():
    # prompt [2, 3]: the next token is EOS (1 token); prompt [0]: 1 2 1 2 1 2, never EOS (6 tokens, the cap)
    budget = meta.Budget()
    r = meta.self_consistency(Fake(), [[2, 3], [0]], n=3, sampler=Sampler.greedy(), max_new_tokens=6,
                              answer=lambda t: t, budget=budget)
    assert r.texts == [["4"] * 3, ["1 2 1 2 1 2"] * 3]
    assert budget.generated == 3 * 1 + 3 * 6                # 21 tokens
    assert budget.prefilled == 2 + 1                        # each prompt once (shared prefix)
    assert budget.policy_calls == 1 + 6                     # one prefill, six decode steps
    assert budget.flops == 2 * 25 * (21 + 3)                # 25 parameters (the table)
    assert budget.scorer_calls == 0 and budget.wall_s > 0


class Uniform(Fake):
    params = {"table": jnp.zeros((5, 5), jnp.float32)}            # every next token equally likely


def test_per_prompt_and_per_rollout_samplers_follow_their_rows_through_chunks_and_rounds():
    prompts, kw = [[1], [1, 2], [3]], dict(n=8, max_new_tokens=3, answer=lambda t: t)
    per_prompt = Sampler(temperature=np.array([0.0, 1.0, 0.5]))       # 3 prompts: the chunk is padded to 4
    full = meta.self_consistency(Uniform(), prompts, sampler=per_prompt, **kw)
    for i, t in enumerate((0.0, 1.0, 0.5)):                           # each prompt as if drawn alone
        assert full.texts[i] == meta.self_consistency(Uniform(), [prompts[i]], sampler=Sampler(temperature=t),
                                                      **kw).texts[0]
    assert len(set(full.texts[0])) == 1 and len(set(full.texts[1])) > 1
    # rounds: prompt 0 settles first and leaves the draw; the others keep their own temperature
    rounds = meta.adaptive_self_consistency(Uniform(), prompts, round_size=2, confidence=0.9, sampler=per_prompt,
                                            **kw)
    assert len(rounds.texts[0]) < 8
    assert all(rounds.texts[i] == full.texts[i][:len(rounds.texts[i])] for i in range(3))
    per_rollout = Sampler(temperature=np.tile([0.0] * 4 + [1.0] * 4, (3, 1)))
    full = meta.self_consistency(Uniform(), prompts, sampler=per_rollout, **kw)
    rounds = meta.adaptive_self_consistency(Uniform(), prompts, round_size=2, rule="unbeatable",
                                            sampler=per_rollout, **kw)
    assert all(len(set(row[:4])) == 1 and len(set(row[4:])) > 1 for row in full.texts)
    assert all(rounds.texts[i] == full.texts[i][:len(rounds.texts[i])] for i in range(3))
    with pytest.raises(ValueError, match=r"does not fit rollouts \(3, 8\)"):
        meta.self_consistency(Uniform(), prompts, sampler=Sampler(temperature=[1.0, 0.5]), **kw)


class Bigger(Fake):
    params = {"table": jnp.asarray(TABLE), "unused": jnp.zeros(75)}     # 100 parameters


def test_a_budget_shared_by_two_policies_prices_each_call_at_its_model():
    budget = meta.Budget()
    for model in (Fake(), Bigger()):           # prompt [2, 3] -> EOS: 1 generated + 2 prefilled tokens each
        meta.self_consistency(model, [[2, 3]], n=1, sampler=Sampler.greedy(), max_new_tokens=4, answer=lambda t: t,
                              budget=budget)
    assert (budget.generated, budget.prefilled) == (2, 4)
    assert budget.flops == 2 * 25 * 3 + 2 * 100 * 3                      # was 2 * 25 * 6: the first model's size


def test_verifier_references_are_checked_before_drawing():
    budget = meta.Budget()
    for call in (meta.best_of_n, meta.rejection_sample):
        with pytest.raises(ValueError, match="needs an integer answer .* got 'three'"):
            call(Fake(), [[2, 3], [0]], n=2, scorer=OutcomeVerifier(), references=[3, "three"], max_new_tokens=4,
                 budget=budget)
    assert budget.generated == 0


def test_budget_limit_refuses_a_draw_that_may_exceed_it():
    budget = meta.Budget(max_generated=30)
    with pytest.raises(ValueError) as e:
        meta.best_of_n(Fake(), [[2, 3], [0]], n=3, scorer=meta.FunctionScorer(first), max_new_tokens=6,
                       budget=budget)
    assert "do not fit in the budget" in str(e.value) and "30 tokens left" in str(e.value)
    assert budget.generated == 0


def test_adaptive_budget_limit_on_fake_model():
    budget = meta.Budget(max_generated=40)
    meta.adaptive_self_consistency(Fake(), [[0]], n=64, round_size=4, rule="unbeatable",
                                   sampler=Sampler(temperature=1.0), max_new_tokens=6, answer=lambda t: None,
                                   budget=budget)
    assert budget.generated == 36                        # 4 + 2 rollouts of 6 tokens fit in 40; no more
    for limit in (0, 40.0, "100", float("nan")):        # nan once meant no limit; 40.0 failed after a round
        with pytest.raises(ValueError) as e:
            meta.Budget(max_generated=limit)
        assert f"max_generated (a token count, or None for no limit) must be an integer >= 1, got {limit!r}" \
            in str(e.value)


def test_errors(scripted):
    with pytest.raises(ValueError) as e:
        meta.best_of_n(None, PROMPTS, n=2, scorer=None)
    assert "needs a scorer" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.self_consistency(None, PROMPTS, n=0)
    assert "n must be an integer >= 1, got 0" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.best_of_n(None, PROMPTS, n=2, scorer=meta.FunctionScorer(lambda p, t, r: float("nan")), answer=last)
    assert "the scorer returned NaN for 4 of 4 rollouts" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.best_of_n(None, PROMPTS, n=2, scorer=lambda p, t, r, b: [1.0, 2.0], answer=last)
    assert "scores of shape (2,); expected one per rollout, (2, 2)" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.mbr(None, PROMPTS, n=2, utility="bleu")
    assert "unknown utility 'bleu'" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.adaptive_self_consistency(None, PROMPTS, n=4, rule="vibes")
    assert "unknown stopping rule 'vibes'" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.weighted_vote(None, PROMPTS, n=2, scorer=meta.FunctionScorer(lambda p, t, r: -1.0), answer=last)
    assert "non-negative weights" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.self_consistency(None, PROMPTS, n=2, references=[1])
    assert "2 prompts but 1 references" in str(e.value)
    with pytest.raises(ValueError) as e:
        OutcomeVerifier()(["q"], [["A: 1"]])
    assert "needs references" in str(e.value)
    with pytest.raises(ValueError) as e:
        process_verifier("median")
    assert "unknown aggregation 'median'" in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.rejection_sample(None, PROMPTS, n=2, scorer=meta.FunctionScorer(lambda p, t, r: 1.0), threshold=float("nan"))
    assert "threshold must be a number, got nan" in str(e.value)
    scripted.calls.clear()
    for ks, message in (([32], "pass@32 needs at least 32 rollouts per prompt; n is 2"), ([1.5], "ks must be an integer")):
        with pytest.raises(ValueError) as e:
            meta.coverage(None, PROMPTS, n=2, scorer=meta.FunctionScorer(first), ks=ks)
        assert message in str(e.value)
    assert not scripted.calls, "the bad calls above drew nothing"


def test_weights_equal_up_to_float_rounding_tie():
    # 0.1 + 0.2 != 0.3 in floating point; the tie rule (first answer wins) must not depend on it
    assert meta.vote.winner(["B", "A", "A"], [0.3, 0.1, 0.2])[0] == "B"
    assert meta.vote.winner(["B", "A", "A"], [0.3, 0.1, 0.2 + 1e-6])[0] == "A"


ARGUMENT_ERRORS = {
    "pass@k of a fractional count": (lambda: meta.pass_at_k(5, 2.7, 2), "correct counts must be integers"),
    "pass@k of a fractional k": (lambda: meta.pass_at_k(4, [2], 1.5), "k must be an integer >= 1, got 1.5"),
    "pass@k of a float n": (lambda: meta.pass_at_k(4.0, [2], 2), "n must be an integer >= 1, got 4.0"),
    "ks not a list": (lambda: meta.coverage(None, PROMPTS, n=4, scorer=meta.FunctionScorer(first), ks=4),
                      "ks must be a list of integers, got 4"),
    "confidence a string": (lambda: meta.adaptive_self_consistency(None, PROMPTS, n=4, confidence="0.9"),
                            "confidence must be in (0.5, 1), got 0.9"),
    "weight not a function": (lambda: meta.weighted_vote(None, PROMPTS, n=2, scorer=meta.FunctionScorer(first),
                                                         weight=3), "weight must be a function of a score"),
    "references a generator": (lambda: meta.self_consistency(None, PROMPTS, n=2, references=(r for r in PROMPTS)),
                               "references must be a list (one per prompt), got generator"),
    "ragged scores": (lambda: meta.best_of_n(None, PROMPTS, n=2, scorer=lambda p, t, r, b: [[1.0], [1.0, 2.0]]),
                      "the scorer must return one real number per rollout"),
    "a sampler that is not one": (lambda: meta.self_consistency(None, PROMPTS, n=2, sampler="x"),
                                  "sampler must be a sampling.Sampler"),
    "unhashable answers": (lambda: meta.self_consistency(None, PROMPTS, n=2, answer=lambda t: t.split()),
                           "answer() must return hashable values"),
    "a fractional reference": (lambda: OutcomeVerifier()(["q"], [["A: 3"]], [3.9]),
                               "needs an integer answer (or arith.Problem) as each reference, got 3.9"),
}


@pytest.mark.parametrize("case", list(ARGUMENT_ERRORS))
def test_bad_arguments_are_named(scripted, case):
    call, message = ARGUMENT_ERRORS[case]
    scripted.calls.clear()
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)
    assert case in ("ragged scores", "unhashable answers") or not scripted.calls, "refused before drawing"


def test_verifier_reads_answers_as_datasets_write_them():
    texts = [["A: 3", "A: 4"]]
    for ref in (3, np.int64(3), 3.0, "3", " 3 "):
        np.testing.assert_array_equal(OutcomeVerifier()(["q"], texts, [ref]), [[1.0, 0.0]])


@pytest.mark.parametrize("make, message", [
    (lambda m: meta.LMJudge(m, "{prompt}{answr}", verdict=5), "template may use {prompt} and {text}, got ['answr']"),
    (lambda m: meta.LMJudge(m, "{prompt}{text", verdict=5), "is not a format string"),
    (lambda m: meta.LMJudge(m, "{prompt}{text}", verdict="yes"), "the verdict 'yes' is not a token of the judge's"),
    (lambda m: meta.LMJudge(m, "{prompt}{text}", verdict=3.7), "verdict (a token id or a one-token string) must be"),
    (lambda m: meta.LMJudge(m, "{prompt}{text}", verdict=24), "verdict token 24 is outside the vocabulary"),
])
def test_lm_judge_refuses_a_template_or_verdict_it_cannot_use(make, message):
    model = models.load("tiny-arith")        # 24 tokens: digits, signs, "Q", "A", ... ("yes" reads as <unk>)
    with pytest.raises(ValueError) as e:
        make(model)
    assert message in str(e.value)
