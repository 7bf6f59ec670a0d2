"""Meta-generators on the shipped tiny-arith model (a small fixed subset; full figures: docs/meta.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
import meta
import models
from meta.tasks import arith
from meta.tasks.arith_verifiers import OutcomeVerifier
from sampling import Sampler

PROBLEMS = arith.held_out("test", "hard", 16)
PROMPTS = [p.prompt for p in PROBLEMS]
KW = dict(sampler=Sampler(temperature=1.0), seed=0, max_new_tokens=56, references=PROBLEMS, answer=arith.answer)


@pytest.fixture(scope="module")
def model():
    return models.load("tiny-arith")


def test_rounds_equal_one_draw(model):
    one = engine.generate(model, PROMPTS[:2], max_new_tokens=56, n=6, sampler=Sampler(temperature=1.0), seed=3)
    two = engine.generate(model, PROMPTS[:2], max_new_tokens=56, n=2, sampler=Sampler(temperature=1.0), seed=3,
                          first_rollout=4)
    assert [t[4:] for t in one.text] == two.text


def test_adaptive_unbeatable_equals_self_consistency_and_verifier_beats_vote(model):
    sc = meta.self_consistency(model, PROMPTS, n=8, **KW)
    ada = meta.adaptive_self_consistency(model, PROMPTS, n=8, round_size=2, rule="unbeatable", **KW)
    assert ada.answers == sc.answers                              # the vote cannot change once unbeatable
    for a, s in zip(ada.texts, sc.texts):                          # its rollouts are a prefix of SC's
        assert a == s[:len(a)]
    assert ada.budget.generated <= sc.budget.generated
    assert ada.budget.generated == sum(map(sum, ada.lengths))
    from meta.adaptive import replay                               # what the demo uses on shared samples
    assert [replay(a, 8, 2, "unbeatable") for a in sc.extracted] == [len(t) for t in ada.texts]
    bon = meta.best_of_n(model, PROMPTS, n=8, scorer=OutcomeVerifier(), **KW)
    assert bon.texts == sc.texts                                   # same seed: the same rollouts
    right = lambda r: np.array([a == p.answer for a, p in zip(r.answers, PROBLEMS)])
    assert np.all(right(bon) >= right(sc))                        # an oracle pick is right wherever any is
    assert np.all(right(bon) == [any(a == p.answer for a in row) for row, p in zip(sc.extracted, PROBLEMS)])


def test_lm_judge_matches_unbatched_forward(model):
    judge = meta.LMJudge(model, "{prompt}{text}\nA: ", verdict="1")
    texts = [["12+3=15\nA: 15", "1"], ["7-2=5\nA: 5", "99+1=100"]]
    budget = meta.Budget()
    got = judge(PROMPTS[:2], texts, budget=budget)
    want = []
    for p, row in zip(PROMPTS[:2], texts):
        for t in row:
            ids = model.tokenizer.encode(f"{p}{t}\nA: ")
            logits, _ = models.forward(model.config, model.params, jnp.asarray([ids]))
            want.append(float(jax.nn.log_softmax(logits[0, -1])[model.tokenizer.encode("1", bos=False)[0]]))
    np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-5, atol=1e-5)
    assert budget.scorer_calls == 1 and budget.scorer_tokens == sum(
        len(model.tokenizer.encode(f"{p}{t}\nA: ")) for p, row in zip(PROMPTS[:2], texts) for t in row)
    with pytest.raises(ValueError) as e:
        meta.LMJudge(model, "{prompt}{text}", verdict="12")
    assert "must be one token" in str(e.value)
    judge.rows = 2                                   # 4 sequences in batches of 2: two forward calls
    budget = meta.Budget()
    np.testing.assert_allclose(np.asarray(judge(PROMPTS[:2], texts, budget=budget)).reshape(-1), want, rtol=1e-5,
                               atol=1e-5)
    assert budget.scorer_calls == 2


def test_model_scorers_refuse_token_id_prompts_before_drawing(model):
    # the template was filled with the prompt's Python repr ("[1, 23, 19, ...]") and scored that
    judge = meta.LMJudge(model, "{prompt}{text}\nA: ", verdict="1")
    ids = [model.tokenizer.encode(p) for p in PROMPTS[:2]]
    budget = meta.Budget()
    with pytest.raises(ValueError, match="prompt 0 is not a string"):
        meta.best_of_n(model, ids, n=2, scorer=judge, max_new_tokens=8, budget=budget)
    assert budget.generated == 0


def test_reward_model_scores_the_last_token_unbatched(model):
    import dataclasses
    config = dataclasses.replace(model.config, score_head=True)
    params = dict(model.params, score=0.05 * jax.random.normal(jax.random.key(1), (config.hidden,)))
    rm = meta.RewardModel(models.Model(config, params, model.tokenizer))
    texts = [["12+3=15\nA: 15", "1"], ["7-2=5\nA: 5", "99+1=100\n100-3=97\n97+1=98\nA: 98"]]
    budget = meta.Budget()
    got = rm(PROMPTS[:2], texts, budget=budget)
    want = []
    for p, row in zip(PROMPTS[:2], texts):
        for t in row:
            ids = model.tokenizer.encode(p + t) + [model.tokenizer.eos_id]
            want.append(float(models.rewards(config, params, jnp.asarray([ids]))[0, -1]))
    np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-5, atol=1e-5)
    assert budget.scorer_calls == 1
    assert budget.scorer_tokens == sum(len(model.tokenizer.encode(p + t)) + 1 for p, row in zip(PROMPTS[:2], texts)
                                       for t in row)
    assert budget.scorer_flops == 2.0 * config.num_params * budget.scorer_tokens
    np.testing.assert_allclose(meta.sigmoid(np.asarray(got, np.float64)).reshape(-1), 1 / (1 + np.exp(-np.asarray(want))),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="scalar head"):
        meta.RewardModel(model)


def test_meta_table_runs_only_the_methods_asked_for_into_its_section(tmp_path, capsys):
    from scripts import meta_table
    from scripts.eval_arith import greedy_accuracy
    doc = tmp_path / "science.md"
    doc.write_text("# Title\n\nthe reading\n")
    args = ["--problems", "4", "--val-problems", "2", "--budgets", "4", "--doc", str(doc)]
    meta_table.main([*args, "--methods", "greedy", "self-consistency"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[:2] for line in lines] == [["| greedy", "1"], ["| self-consistency", "4"]]
    want = greedy_accuracy(models.load("tiny-arith"), arith.held_out("test", "hard", 4))
    assert float(lines[0].split(" | ")[2]) == pytest.approx(want, abs=1e-3)
    text = doc.read_text()
    assert text.startswith("# Title\n\nthe reading\n") and lines[0] in text and "science-tiny-arith.png" in text
    assert (tmp_path / "science-tiny-arith.png").stat().st_size > 0
    meta_table.main([*args, "--methods", "greedy"])                    # a rerun replaces the section, nothing else
    again = doc.read_text()
    assert again.count("<!-- meta_table tiny-arith -->") == 1 and "| self-consistency |" not in again
    assert again.startswith("# Title\n\nthe reading\n")


def test_meta_table_marks_a_task_without_models_not_measured(tmp_path, monkeypatch):
    from scripts import meta_table
    from meta import tasks
    shipped = meta_table.zoo.names()
    monkeypatch.setattr(meta_table.zoo, "names", lambda: [n for n in shipped if n != "tiny-program-prm"])
    assert meta_table.shipped(tasks.get("tiny-arith")) and not meta_table.shipped(tasks.get("tiny-program"))
    with pytest.raises(ValueError, match="tiny-program has no shipped policy"):
        meta_table.main(["--task", "tiny-program", "--doc", str(tmp_path / "s.md")])
    meta_table.write_section(tmp_path / "s.md", "tiny-program", ["Not measured."])
    assert (tmp_path / "s.md").read_text() == ("<!-- meta_table tiny-program -->\nNot measured.\n"
                                               "<!-- /meta_table tiny-program -->\n")
