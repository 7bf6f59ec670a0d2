"""The sequential meta-generators: refine, backtrack, cascade. Exact transcripts on a fake model whose
greedy path is hand-made, the cache reused across rounds (forward calls counted), properties of
sampled runs, batch independence, and bad input."""
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import meta
from engine.decode import bucket
import models
from fakes import EOS, Fake, fake_step
from meta.tasks import arith, arith_verifiers
from sampling import Sampler

# greedy: 0 -> 1 -> EOS; 3 -> 2 -> EOS (refine). For backtrack, 3 is the step delimiter: 1 -> 3, 3 -> 2, 2 -> 3
REFINE = np.full((5, 5), 0.1)
for a, b in [(0, 1), (1, EOS), (3, 2), (2, EOS), (4, 0)]:
    REFINE[a, b] = 0.6
STEPWISE = np.full((5, 5), 0.1)
for a, b in [(0, 1), (1, 3), (3, 2), (2, 3), (4, 0)]:
    STEPWISE[a, b] = 0.6
GREEDY = Sampler.greedy()
ROOT = Path(__file__).resolve().parents[1]


def test_refine_appends_feedback_and_stops_the_rows_it_accepts():
    asked = []

    def feedback(prompt, attempt):                       # accepts "2"; anything else: "try from 3"
        asked.append((prompt[0], attempt))
        return None if attempt == "2" else [3]

    r = meta.refine(Fake(REFINE), [[0], [3]], feedback=feedback, rounds=2, sampler=GREEDY, max_new_tokens=4)
    # prompt 0: drafts "1" EOS, told [3], writes "2" EOS, accepted; prompt 1: drafts "2" EOS, accepted at once
    assert asked == [(0, "1"), (3, "2"), (0, "2")]
    assert r.texts == [["2"], ["2"]] and r.answers == ["2", "2"] and r.chosen == [0, 0]
    assert r.scores == [[1.0], [1.0]] and r.lengths == [[5], [2]]          # 1 EOS 3 2 EOS / 2 EOS
    assert [i["feedback"] for i in r.info] == [[[[3]]], [[]]] and [i["accepted"] for i in r.info] == [[True], [True]]
    b = r.budget
    assert (b.generated, b.prefilled, b.scorer_calls) == (6, 3, 3)         # drawn; prompts + the feedback; calls


def test_refine_prefills_the_prompt_once_and_only_the_new_feedback_after():
    calls = []

    def counting(config, params, tokens, positions=None, cache=None, *, last_only=False):
        jax.debug.callback(lambda t: calls.append(t.shape), tokens)
        return fake_step(config, params, tokens, positions, cache, last_only=last_only)

    class Counting(Fake):
        forward = staticmethod(counting)

    r = meta.refine(Counting(REFINE), [[0, 0, 0]], feedback=lambda p, a: None if a == "2" else [3, 3],
                    rounds=3, n=2, sampler=GREEDY, max_new_tokens=4)
    assert r.texts == [["2", "2"]]
    # the prompt once (one group, padded to its bucket), the feedback once (both rows), else a token a step
    assert [s for s in calls if s[1] > 1] == [(1, bucket(3)), (2, 2)]
    assert calls.count((2, 1)) == 4 and len(calls) == 6 == r.budget.policy_calls   # 2 steps a round


def test_refine_reports_a_feedback_function_that_fails_naming_the_prompt():
    def boom(prompt, attempt):
        raise RuntimeError("checker crashed")

    for fb, message in [(boom, "feedback raised on prompt 0 ([0]), rollout 0: RuntimeError('checker crashed')"),
                        (lambda p, a: 3, "feedback on prompt 0 ([0]), rollout 0 must be a string (or token ids) "
                                         "or None, got int: 3"),
                        (lambda p, a: "text", "feedback on prompt 0 ([0]), rollout 0 is a string but the model has no tokenizer"),
                        (lambda p, a: [3] * 9, "is 9 tokens with the cue; max_feedback_tokens=8")]:
        with pytest.raises(ValueError) as e:
            meta.refine(Fake(REFINE), [[0]], feedback=fb, rounds=1, sampler=GREEDY, max_new_tokens=4,
                        max_feedback_tokens=8)
        assert message in str(e.value) and e.value.prompt == 0            # a meta.PromptError
    with pytest.raises(meta.PromptError) as e:                            # the prompt that failed, by index
        meta.refine(Fake(REFINE), [[0], [0, 0]], feedback=lambda p, a: boom(p, a) if len(p) == 2 else [3],
                    rounds=1, sampler=GREEDY, max_new_tokens=4)
    assert e.value.prompt == 1
    with pytest.raises(ValueError) as e:
        meta.refine(Fake(REFINE), [[0]], feedback=lambda p, a: None, rounds=-1)
    assert "rounds must be" in str(e.value)


def last_step_has_no_2(prompts, texts, references=None, budget=None):
    """1.0 where a rollout's latest step (after its last-but-one delimiter 3) has no token 2."""
    def last(t):
        ids = t.split()
        cut = [i for i, x in enumerate(ids[:-1]) if x == "3"]
        return ids[cut[-1] + 1:] if cut else ids
    return [[0.0 if "2" in last(t) else 1.0 for t in row] for row in texts]


def test_backtrack_redraws_a_rejected_step_until_its_budget_of_retries_is_spent():
    r = meta.backtrack(Fake(STEPWISE), [[0]], scorer=last_step_has_no_2, threshold=0.5, max_backtracks=2,
                       max_steps=4, max_new_tokens=8, sampler=GREEDY, step_tokens=[3])
    # "1 3" kept; "2 3" rejected twice (greedy draws it again), then kept: retries spent
    assert r.texts == [["1 3 2 3"]] and r.scores == [[0.0]]
    assert r.info[0] == {"backtracks": [2], "events": [[1, 0, 0.0], [2, 0, 0.0]]}
    b = r.budget
    assert (b.generated, b.prefilled) == (8, 1 + 2)            # 4 steps of 2 tokens; the prompt + 2 re-fed tokens
    assert b.policy_calls == 1 + 2 + 3 + 3 + 2                 # prefill, step, (step + re-feed) x 2, step


SAMPLED = np.array([[0.0, 0.4, 0.3, 0.2, 0.1],       # steps end with 3; an EOS ends a rollout
                    [0.0, 0.0, 0.2, 0.5, 0.3],
                    [0.0, 0.2, 0.0, 0.5, 0.3],
                    [0.0, 0.4, 0.4, 0.0, 0.2],
                    [1.0, 0.0, 0.0, 0.0, 0.0]]) + 1e-9


def steps_of(text):
    ids, out = text.split(), [[]]
    for x in ids:
        out[-1].append(x)
        if x == "3":
            out.append([])
    return [s for s in out if s]


@pytest.mark.parametrize("limit", [64, 7])        # 7: rollouts reach their limit, at other rounds than rows beside them
def test_backtrack_keeps_only_accepted_steps_while_retries_last_and_is_batch_independent(limit):
    kw = dict(scorer=last_step_has_no_2, threshold=0.5, max_backtracks=2, max_steps=60, max_new_tokens=limit, n=8,
              sampler=Sampler(temperature=1.0), step_tokens=[3], seed=4)
    r = meta.backtrack(Fake(SAMPLED), [[0]], **kw)
    spent = r.info[0]["backtracks"]
    for m, text in enumerate(r.texts[0]):
        if spent[m] < 2:                                   # retries left: every kept step passed
            assert all("2" not in s for s in steps_of(text)), text
    assert sum(spent) == len(r.info[0]["events"]) > 0 and 2 in spent and min(spent) < 2
    other = meta.backtrack(Fake(SAMPLED), [[2, 2], [0]], **kw)
    assert other.texts[1] == r.texts[0] and other.info[1] == r.info[0]
    assert max(map(max, other.lengths)) <= limit and (limit > 8 or max(r.lengths[0]) == limit)


def test_arith_feedback_names_the_first_wrong_step_or_the_answer():
    p = arith.Problem((50, 27, 10), ("+", "-"), "easy")              # 50+27-10 = 67
    fb = arith_verifiers.feedback
    assert fb(p.prompt, "50+27=77\n77-10=67\nA: 67") is None
    assert fb(p.prompt, "50+27=78\n78-10=68\nA: 68") == "? 50+27=78\n"      # the slip, not what follows
    assert fb(p.prompt, "50+27=77\n77-10=67\nA: 66") == "? A: 66\n"
    assert fb(p.prompt, "50+27=77\n") == "? A: \n"
    assert fb(p.prompt, "garbage") == "? garbage\n"
    assert fb(p.prompt, "1" * 40) == "? " + "1" * 16 + "\n"                 # a runaway line, cut
    with pytest.raises(ValueError) as e:
        fb("Q: 1?1=?\n", "A: 2")
    assert "not a tiny-arith prompt" in str(e.value)
    assert arith.from_prompt("Q: 7-3+12=?\n") == arith.Problem((7, 3, 12), ("-", "+"))


def test_the_refinement_page_runs():
    ns = {}
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "refinement.md").read_text(), re.S):
        exec(block, ns)
        if "meta.refine(" in block:
            r = ns["r"]
            fb = arith_verifiers.feedback
            for g, p in enumerate(ns["problems"]):                 # accepted exactly where the answer is right
                assert r.scores[g] == [float(fb(p.prompt, t) is None) for t in r.texts[g]]
                assert all(f.startswith("? ") for f in sum(r.info[g]["feedback"], []))
        if "meta.backtrack(" in block:
            events = [e for i in ns["r"].info for e in i["events"]]
            assert all(score < 0.5 for _, _, score in events)
        if "meta.cascade(" in block:
            assert {i["stage"] for i in ns["r"].info} <= {0, 1, 2} and len(ns["r"].parts) >= 1
    assert all(a.lstrip("-").isdigit() for a in ns["answers"][0])          # the constrained last call


def test_cascade_escalates_only_the_prompts_a_stage_does_not_accept():
    small, big = Fake(REFINE), Fake()
    stages = [(small, meta.self_consistency, dict(n=1, sampler=GREEDY, max_new_tokens=4)),
              (big, meta.self_consistency, dict(n=3, sampler=Sampler(temperature=1.0), max_new_tokens=4, seed=2))]
    prompts = [[0], [3], [1]]
    r = meta.cascade(stages, prompts, accept=[lambda res, g: res.answers[g] == "2 4"])
    first = meta.self_consistency(small, prompts, **stages[0][2])
    second = meta.self_consistency(big, [[0], [1]], **stages[1][2])            # what stage 0 did not accept
    assert first.answers == ["1 4", "2 4", "4"]                              # a fake's text: its ids, EOS too
    assert [i["stage"] for i in r.info] == [1, 0, 1]
    assert r.answers == [second.answers[0], "2 4", second.answers[1]] and r.texts[0] == second.texts[0]
    assert [p.generated for p in r.parts] == [first.budget.generated, second.budget.generated]
    assert r.budget.generated == sum(p.generated for p in r.parts) and r.to_json()["parts"][1]["generated"] > 0


def test_cascade_acceptance_rules_and_bad_input():
    res = meta.Result(method="x", prompts=[0, 1], answers=["a", None], chosen=[0, None], texts=[], lengths=[],
                      extracted=[], scores=[[0.9, 0.1], [0.2, 0.3]], votes=[[["a", 3], ["b", 1]], []],
                      budget=meta.Budget())
    assert meta.agreement(0.75)(res, 0) and not meta.agreement(0.8)(res, 0) and not meta.agreement(0.1)(res, 1)
    assert meta.score_at_least(0.9)(res, 0) and not meta.score_at_least(0.95)(res, 0)
    assert not meta.score_at_least(0.0)(res, 1)
    b = meta.Budget(max_generated=100, generated=3).add(meta.Budget(generated=4, policy_flops=2.0))
    assert (b.generated, b.policy_flops, b.max_generated) == (7, 2.0, 100)     # spending adds, the limit stays
    tok = models.load("tiny-arith")
    for stages, message in [([], "stages must be a non-empty list"),
                            ([(Fake(), meta.self_consistency)], "stage 0 must be (model, method, kwargs)"),
                            ([(Fake(), meta.self_consistency, {}), (tok, meta.self_consistency, {})],
                             "stage 1's model has another tokenizer than stage 0's")]:
        with pytest.raises(ValueError) as e:
            meta.cascade(stages, [[0]], accept=lambda r, g: True)
        assert message in str(e.value)
    with pytest.raises(ValueError) as e:
        meta.cascade([(Fake(), meta.self_consistency, {})] * 2, [[0]], accept=[meta.agreement(1.0)] * 2)
    assert "or a list of 1 (one per stage but the last)" in str(e.value)


def test_the_refinement_table_runs_on_the_program_task_without_a_larger_model(tmp_path):
    from scripts import refine_table
    results = refine_table.main(["--task", "tiny-program", "--problems", "2", "--val-problems", "2", "--only",
                                 "refine,verifier,large", "--plot", str(tmp_path / "p.png")])
    assert set(results) == {"refine, external feedback (1 revision)", "rejection sampling (verifier)",
                            "best-of-N (verifier)"}                 # no tiny-program-large: no two-model rows
    assert all(0 <= row["accuracy"] <= 1 and row["tokens"] > 0 for rows in results.values() for row in rows.values())
    assert (tmp_path / "p.png").exists()
