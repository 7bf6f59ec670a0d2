"""The countdown task: generator, solver, splits, parser, extractor, both verifiers, and the task registry."""
import collections
import itertools
import random

import numpy as np
import pytest

from meta import tasks
from meta.tasks import countdown
from meta.tasks import countdown_verifiers as verifiers

P = countdown.Problem((25, 3, 9, 75), 47)

RIGHT = "75-25=50\n50-3=47\nA: 47"
OTHER_ORDER = "3+25=28\n75-28=47\nA: 47"               # another right path (the + operands either way)
WRONG_ANSWER = "75-25=50\n50-3=47\nA: 46"
NO_ANSWER = "75-25=50\n50-3=47"
GARBAGE = "the answer is 47"
BY_ZERO = "75/0=0\n25+3=28\nA: 47"                    # the bad step spends the 75: 47 is then out of reach
USED_TWICE = "25+25=50\n50-3=47\nA: 47"               # one 25 given, used twice
DERIVED_TWICE = "75-25=50\n50-3=47\n47+0=47\nA: 47"    # 0 is no number in hand
NEGATIVE = "3-9=-6\nA: 47"                             # negative results are not written (malformed)
SMALL_FIRST = "25-75=50\nA: 50"                        # 25-75 is not 50
INEXACT = "75/9=8\n8*3=24\nA: 24"                      # integer division only when exact
BAD_ARITHMETIC = "75-25=51\n51-3=48\nA: 47"
DEAD_END = "75-25=50\n50-9=41\nA: 41"                  # right step, then no way to 47 from 3, 41
OFF_TRACK = "75*25=1875\n1875/3=625\nA: 625"           # right arithmetic, target out of reach
PAST_TARGET = "75-25=50\n50-3=47\n47+9=56\nA: 56"      # goes on after reaching the target
LONG_NUMBER = "9" * 5000 + "+1=2\nA: 47"              # no int() of 5,000 digits: malformed


def test_problem_text_solution_and_prompt_round_trip():
    assert P.prompt == "Q: 25 3 9 75 -> 47\n" and P.answer == 47
    assert countdown.from_prompt(P.prompt) == countdown.Problem((25, 3, 9, 75), 47)
    assert verifiers.outcome_scores([P.solution], [P])[0] == 1
    with pytest.raises(ValueError) as e:
        countdown.from_prompt("Q: 47+38=?\n")
    assert "not a countdown prompt" in str(e.value)


def test_apply_follows_the_rules():
    assert [countdown.apply(12, op, 4) for op in "+-*/"] == [16, 8, 48, 3]
    assert countdown.apply(4, "-", 12) is None and countdown.apply(12, "/", 5) is None
    assert countdown.apply(12, "/", 0) is None and countdown.apply(0, "/", 3) == 0


def test_solver_against_brute_force_over_expressions():
    # every value reachable from 3 numbers, by enumerating the two-step orders directly
    rng = random.Random(0)
    for _ in range(30):
        nums = [rng.randint(1, 9) for _ in range(3)]
        brute = set(nums)
        for i, j in itertools.permutations(range(3), 2):
            k = 3 - i - j
            for op1 in "+-*/":
                c1 = countdown.apply(nums[i], op1, nums[j])
                if c1 is None:
                    continue
                brute.add(c1)
                for a, b in ((c1, nums[k]), (nums[k], c1)):
                    for op2 in "+-*/":
                        c2 = countdown.apply(a, op2, b)
                        if c2 is not None:
                            brute.add(c2)
        assert {t for t in range(0, 800) if countdown.solvable(nums, t)} == {t for t in brute if t < 800}
    assert countdown.shortest((25, 3, 9, 75), 47) == 2 and countdown.shortest((1, 1, 1), 100) is None


@pytest.mark.parametrize("name", list(countdown.LEVELS))
def test_levels_are_solvable_in_range_and_need_their_steps(name):
    lvl, rng = countdown.LEVELS[name], random.Random(1)
    problems = [countdown.sample_problem(rng, name) for _ in range(40)]
    for p in problems:
        assert len(p.numbers) == lvl.count and all(1 <= x <= lvl.top for x in p.numbers)
        assert lvl.low <= p.target <= lvl.high and p.target not in p.numbers and p.level == name
        assert lvl.min_steps <= countdown.shortest(p.numbers, p.target)
        text = p.random_solution(rng)
        assert verifiers.outcome_scores([text], [p])[0] == 1
        assert verifiers.step_scores(text, p).tolist() == [1.0] * countdown.shortest(p.numbers, p.target)
        assert len(text) + 1 <= countdown.max_new_tokens([p])         # characters (+ EOS) bound the tokens
    if name == "hard":                  # several shortest paths: random solutions differ
        assert len({p.random_solution(random.Random(s)) for p in problems[:5] for s in range(8)}) > 10


def test_held_out_lists_are_distinct_disjoint_seeded_prefixes():
    for name, n in (("easy", None), ("medium", 150), ("hard", 60)):
        val, test = countdown.held_out("val", name, n), countdown.held_out("test", name, n)
        vq, tq = {p.question for p in val}, {p.question for p in test}
        assert len(vq) == len(val) == len(tq) == len(test) and not vq & tq
        assert {countdown.split_of(q) for q in vq} == {"val"} and {countdown.split_of(q) for q in tq} == {"test"}
    assert countdown.held_out("val", "hard", 10) == countdown.held_out("val", "hard", 60)[:10]
    assert countdown.held_out("val", "medium", 10) != countdown.held_out("val", "medium", 10, seed=1)
    # the easy level has few questions: its lists are drawn without replacement, so repeats were skipped
    rng = random.Random(0)
    draws = [countdown.sample_problem(rng, "easy", "val").question for _ in range(200)]
    assert len(set(draws)) < 200


def test_train_stream_is_seeded_never_held_out_and_keeps_the_mixture():
    mix = {"easy": 1.0, "medium": 2.0, "hard": 4.0}
    a = list(itertools.islice(countdown.train_stream(mix), 50))
    assert a == list(itertools.islice(countdown.train_stream(mix), 50))
    assert a != list(itertools.islice(countdown.train_stream(mix, seed=1), 50))
    easy = list(itertools.islice(countdown.train_stream({"easy": 1}), 1500))
    assert all(countdown.split_of(p.question) == "train" for p in easy)
    held = {p.question for s in ("val", "test") for p in countdown.held_out(s, "easy")}
    assert not held & {p.question for p in easy}
    n = 1400      # levels drawn before the problem: count them from the stream's own choices
    counts = collections.Counter(p.level for p in itertools.islice(countdown.train_stream(
        {"easy": 1.0, "medium": 2.0}), n))
    expected = {"easy": n / 3, "medium": 2 * n / 3}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in expected)
    assert chi2 < 10.8                                  # p = 0.001 for 1 degree of freedom


def test_parse_and_answer_extractor():
    ok = countdown.parse(RIGHT)
    assert ok.steps == (countdown.Step(75, "-", 25, 50), countdown.Step(50, "-", 3, 47)) and ok.answer == 47
    assert countdown.answer(RIGHT) == 47 and countdown.answer(OTHER_ORDER) == 47
    # None: no answer line, a malformed or wrong step, an answer that is not the last result
    for text in (NO_ANSWER, GARBAGE, BY_ZERO, NEGATIVE, INEXACT, BAD_ARITHMETIC, WRONG_ANSWER, "", LONG_NUMBER):
        assert countdown.answer(text) is None, text
    assert countdown.answer(USED_TWICE) == 47          # the text alone cannot see the reuse: the verifier does
    assert countdown.parse("A: 5\n1+1=2").steps == () and countdown.parse("٣+٤=٧\nA: 7").steps == (None,)
    with pytest.raises(ValueError) as e:
        countdown.parse(None)
    assert "expects a string" in str(e.value)


CASES = [RIGHT, OTHER_ORDER, WRONG_ANSWER, NO_ANSWER, GARBAGE, BY_ZERO, USED_TWICE, DERIVED_TWICE, NEGATIVE,
         SMALL_FIRST, INEXACT, BAD_ARITHMETIC, DEAD_END, OFF_TRACK, PAST_TARGET, LONG_NUMBER, ""]


def test_outcome_verifier_on_hand_made_and_malformed_solutions():
    scores = verifiers.outcome_scores(CASES, [P] * len(CASES))
    assert scores.dtype == np.float32
    assert scores.tolist() == [1, 1] + [0] * (len(CASES) - 2)
    as_scorer = verifiers.OutcomeVerifier()([P.prompt], [CASES])          # the problem read from the prompt
    assert as_scorer.tolist() == [scores.tolist()]


def test_step_checker_labels_each_step():
    got = [s.tolist() for s in verifiers.process_scores(CASES, [P] * len(CASES))]
    assert got == [
        [1, 1], [1, 1], [1, 1], [1, 1], [0], [0, 0], [0, 1], [1, 1, 0], [0],
        [0], [0, 0], [0, 0], [1, 0], [0, 0], [1, 1, 0], [0], []]
    # without the problem only the arithmetic is checked
    assert verifiers.step_scores(USED_TWICE).tolist() == [1, 1] and verifiers.step_scores(OFF_TRACK).tolist() == [1, 1]
    steps = verifiers.process_verifier("min").steps([P.prompt, "not countdown"], [[DEAD_END], [DEAD_END]])
    assert [s.tolist() for s in steps[0]] == [[1, 0]] and [s.tolist() for s in steps[1]] == [[1, 1]]


def test_verifiers_reject_bad_input():
    with pytest.raises(ValueError) as e:
        verifiers.outcome_scores([RIGHT], [P, P])
    assert "1 texts but 2 problems" in str(e.value)
    with pytest.raises(ValueError) as e:
        verifiers.outcome_scores([RIGHT], None)
    assert "needs the problems" in str(e.value)
    with pytest.raises(ValueError) as e:
        verifiers.outcome_scores([RIGHT], [47])
    assert "countdown.Problem instances; item 0 is int" in str(e.value)
    with pytest.raises(ValueError) as e:
        verifiers.process_scores(RIGHT)
    assert "not one string" in str(e.value)
    with pytest.raises(ValueError) as e:
        verifiers.OutcomeVerifier()(["Q: 1+2=?\n"], [[RIGHT]])
    assert "not a countdown prompt" in str(e.value)
    with pytest.raises(ValueError) as e:                     # the solver would search for ages
        verifiers.OutcomeVerifier()(["Q: " + " ".join(["1"] * 40) + " -> 7\n"], [[RIGHT]])
    assert "at most 6 numbers" in str(e.value)


def test_bad_levels_splits_and_mixes():
    with pytest.raises(ValueError) as e:
        countdown.held_out("test", "impossible")
    assert "unknown level 'impossible'" in str(e.value)
    with pytest.raises(ValueError) as e:
        countdown.held_out("train", "hard")
    assert "train_stream" in str(e.value)
    with pytest.raises(ValueError) as e:
        countdown.held_out("val", "easy", 201)
    assert "n must be an int in [1, 200] for level 'easy', got 201" in str(e.value)
    with pytest.raises(ValueError) as e:
        next(countdown.train_stream({"easy": 0}))
    assert "positive sum" in str(e.value)


def test_registry_names_each_task_and_finds_a_problem_s_task():
    cd, ar = tasks.get("countdown"), tasks.get("tiny-arith")
    assert (cd.policy, cd.reward_model, cd.process_reward_model) == ("countdown", "countdown-rm", "countdown-prm")
    assert tasks.of(P) is cd and tasks.of(tasks.arith.Problem((1, 2), ("+",))) is ar
    assert cd.correct(RIGHT, P) and not cd.correct(USED_TWICE, P) and not cd.correct(None, P)
    with pytest.raises(ValueError) as e:
        tasks.get("chess")
    assert "unknown task 'chess'; known: tiny-arith, countdown" in str(e.value)
    budget = countdown.max_new_tokens([P])
    assert budget >= max(len(t) + 1 for t in (RIGHT, P.solution))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from scripts import train_tiny
    return train_tiny.train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model", n=300,
                                      task=tasks.get("countdown"))


def test_training_text_tokenizes_digit_by_digit_and_packs_the_solution(tok):
    from scripts import train_tiny
    ids = tok.encode(P.prompt + RIGHT, bos=False)
    assert tok.decode(ids) == P.prompt + RIGHT and "75" not in [tok.decode([i]) for i in ids]
    tokens, mask = train_tiny.pack(tok, [P], seq_len=48)
    targets = tokens[0, 1:][mask[0] > 0]
    assert tok.decode(targets[:-1].tolist()) == P.solution and targets[-1] == tok.eos_id


def test_process_labels_follow_the_step_checker():
    from scripts import train_reward
    # on track, on track, then off (the target was reached); the answer line is not a step
    assert train_reward.step_labels(PAST_TARGET + "\n", P) == [1.0, 1.0, 0.0, None]
    assert train_reward.step_labels("75-25=50\n50-9=41\n\n41+3=44\n", P) == [1.0, 0.0, None, 0.0]


def test_meta_script_grades_the_chosen_rollout_by_the_verifier():
    import argparse
    from meta.result import Result
    from scripts import meta as meta_script
    args = argparse.Namespace(task="countdown", answer="arith")
    r = Result(method="m", prompts=[P.prompt] * 3, answers=[47, 47, None], chosen=[0, 0, None],
               texts=[[RIGHT], [USED_TWICE], [GARBAGE]], lengths=[[1]] * 3, extracted=[[47], [47], [None]],
               scores=[[None]] * 3, votes=[[]] * 3, budget=None)
    assert [meta_script.grade(args, r, g, 47) for g in range(3)] == [True, False, False]
    assert meta_script.grade(args, r, 0, None) is None                 # no reference: not graded


def test_docs_example_runs(capsys):
    import re
    from pathlib import Path
    code = re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[1] / "docs/countdown.md").read_text(),
                      re.S)[0]
    exec(code, {})
    out = capsys.readouterr().out
    assert out.startswith("Q: 7 2 11 8 -> 28\n") and "[1. 0.] [0.]" in out and out.endswith("47\n")
