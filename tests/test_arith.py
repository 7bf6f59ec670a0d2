"""The arithmetic task: generator, splits, parser and both verifiers."""
import collections
import itertools
import random

import numpy as np
import pytest

from meta.tasks import arith
from meta.tasks import arith_verifiers as verifiers

P = arith.Problem((47, 38, 19), ("+", "-"))          # 47+38=85, 85-19=66

CORRECT = "47+38=85\n85-19=66\nA: 66"
WRONG_ANSWER = "47+38=85\n85-19=66\nA: 67"              # steps right, answer line wrong
WRONG_STEP = "47+38=84\n84-19=65\nA: 65"                # first step wrong, second right given its inputs
SKIPPED_INPUT = "47+38=85\n85-18=67\nA: 67"             # arithmetic right, but not the chain's operand
LUCKY = "47+38=86\n86-19=66\nA: 66"                     # right answer despite wrong steps
MALFORMED = "47+38=85\nthis is not a step\n85-19=66\nA: 66"
NO_ANSWER = "47+38=85\n85-19=66"
REORDERED = "38-19=19\n19+47=66\nA: 66"              # the chain's terms in another valid order
REUSED = "47+38=85\n85+38=123\nA: 123"                # uses the term +38 twice
SUBTRACTED_FIRST = "19+47=66\nA: 66"                   # starts from a subtracted term
LATE_START = "so:\n47+38=85\n85-19=66\nA: 66"           # the first step line is not the first line


def test_problem_text_and_reference_solution():
    assert P.prompt == "Q: 47+38-19=?\n"
    assert P.solution == CORRECT
    assert P.answer == 66
    assert P.terms() == [("+", 47), ("+", 38), ("-", 19)]


def test_solutions_in_other_orders():
    assert P.ordered_solution([1, 2, 0]) == REORDERED
    assert P.ordered_solution([0, 2, 1]) == "47-19=28\n28+38=66\nA: 66"
    for order, why in [([2, 0, 1], "must be added"), ([0, 1], "permutation"), ([0, 0, 1], "permutation")]:
        with pytest.raises(ValueError, match=why):
            P.ordered_solution(order)
    with pytest.raises(ValueError, match="below 0"):
        arith.Problem((5, 9, 7), ("+", "-")).ordered_solution([0, 2, 1])     # 5-7 < 0


def test_random_solutions_are_right_varied_and_seeded():
    problems = arith.held_out("val", "hard", 100)
    rng, seen = random.Random(0), set()
    for p in problems:
        for _ in range(4):
            text = p.random_solution(rng)
            seen.add(text)
            assert verifiers.outcome_scores([text], [p])[0] == 1
            assert verifiers.step_scores(text, p).tolist() == [1.0] * len(p.ops)
    assert len(seen) > 300                      # most problems get several distinct orders of 4 draws
    a, b = random.Random(3), random.Random(3)
    assert [p.random_solution(a) for p in problems] == [p.random_solution(b) for p in problems]
    # a chain whose only valid order is its own (the other first term is subtracted)
    assert arith.Problem((9, 5), ("-",)).random_solution(random.Random(0)) == "9-5=4\nA: 4"


def test_generator_is_deterministic_per_seed_and_differs_across_seeds():
    a = [arith.sample_problem(random.Random(7), "hard") for _ in range(3)]
    b = [arith.sample_problem(random.Random(7), "hard") for _ in range(3)]
    assert a == b
    assert arith.held_out("test", "hard", 20) == arith.held_out("test", "hard", 20)
    assert arith.held_out("test", "hard", 20) != arith.held_out("test", "hard", 20, seed=1)
    assert arith.held_out("test", "hard", 20) != arith.held_out("val", "hard", 20)
    s1, s2 = arith.train_stream({"easy": 1, "hard": 1}), arith.train_stream({"easy": 1, "hard": 1})
    assert list(itertools.islice(s1, 50)) == list(itertools.islice(s2, 50))
    s3 = arith.train_stream({"easy": 1, "hard": 1}, seed=1)
    assert list(itertools.islice(s3, 50)) != list(itertools.islice(arith.train_stream({"easy": 1, "hard": 1}), 50))


def test_held_out_split_is_a_prefix_of_a_longer_one():
    assert arith.held_out("val", "medium", 30) == arith.held_out("val", "medium", 100)[:30]
    assert arith.held_out("val", "medium", np.int64(30)) == arith.held_out("val", "medium", 30)


@pytest.mark.parametrize("name", list(arith.LEVELS))
def test_levels_respect_steps_digits_and_range(name):
    lvl = arith.LEVELS[name]
    top = 10 ** lvl.digits - 1
    problems = arith.held_out("val", name)
    assert {len(p.ops) for p in problems} == set(range(lvl.min_steps, lvl.max_steps + 1))
    for p in problems:
        assert p.level == name
        assert all(0 <= x <= top for x in (*p.operands, *p.totals()))
        assert arith.parse(p.solution).answer == p.answer
        assert eval(p.expression) == p.answer  # noqa: S307 - the expression is generated digits and +/-


@pytest.mark.parametrize("name", list(arith.LEVELS))
def test_held_out_lists_are_distinct_and_disjoint(name):
    val, test = arith.held_out("val", name), arith.held_out("test", name)
    assert len(val) == len(test) == arith.LEVELS[name].held_out
    val_q, test_q = {p.expression for p in val}, {p.expression for p in test}
    assert len(val_q) == len(val) and len(test_q) == len(test) and not val_q & test_q
    assert val_q | test_q <= arith.held_out_questions()


def test_train_stream_never_yields_held_out_questions():
    held = arith.held_out_questions()
    easy = list(itertools.islice(arith.train_stream({"easy": 1}), 3000))
    assert not any(p.expression in held for p in easy)
    # easy problems are few, so many held-out ones would be drawn if they were not filtered
    rng = random.Random(0)
    assert sum(arith.sample_problem(rng, "easy").expression in held for _ in range(3000)) > 300


def test_train_stream_keeps_the_mixture_of_levels():
    # a held-out draw is redrawn at its own level: the easy level, half of whose draws are held
    # out, keeps its share (redrawing at a new level gave about 0.02 : 0.32 : 0.66 for 1 : 2 : 4)
    mix = {"easy": 1.0, "medium": 2.0, "hard": 4.0}
    n = 14000
    counts = collections.Counter(p.level for p in itertools.islice(arith.train_stream(mix), n))
    expected = {k: n * w / sum(mix.values()) for k, w in mix.items()}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in mix)
    assert chi2 < 13.8                                  # p = 0.001 for 2 degrees of freedom


def test_parse_correct_wrong_and_malformed():
    ok = arith.parse(CORRECT)
    assert ok.steps == (arith.Step(47, "+", 38, 85), arith.Step(85, "-", 19, 66)) and ok.answer == 66
    assert ok.well_formed and all(s.correct for s in ok.steps)
    bad = arith.parse(WRONG_STEP)
    assert [s.correct for s in bad.steps] == [False, True] and bad.answer == 65
    mal = arith.parse(MALFORMED)
    assert mal.steps[1] is None and mal.answer == 66 and not mal.well_formed
    assert arith.parse(NO_ANSWER).answer is None
    assert arith.parse("").steps == () and arith.parse("").answer is None
    assert arith.parse("A: 5\n1+1=2").steps == ()          # text after the answer is ignored
    assert arith.parse("A: five").answer is None
    # other scripts' digits are not the task's format (\d read "A: ٩٩" as 99); a 5,000-digit number
    # is malformed, not int()'s ValueError for the whole batch
    assert arith.parse("A: ٩٩").answer is None and arith.parse("A: ９９").answer is None
    assert arith.parse("٣+٤=٧\nA: 7").steps == (None,)
    assert arith.parse("A: " + "9" * 5000).answer is None and arith.parse("9" * 5000 + "+1=2").steps == (None,)


def test_outcome_verifier():
    texts = [CORRECT, WRONG_ANSWER, WRONG_STEP, SKIPPED_INPUT, LUCKY, MALFORMED, NO_ANSWER, ""]
    scores = verifiers.outcome_scores(texts, [P] * len(texts))
    assert scores.dtype == np.float32
    assert scores.tolist() == [1, 0, 0, 0, 1, 1, 0, 0]


def test_process_verifier_with_and_without_the_problem():
    texts = [CORRECT, WRONG_ANSWER, WRONG_STEP, SKIPPED_INPUT, LUCKY, MALFORMED, NO_ANSWER, "",
             REORDERED, REUSED, SUBTRACTED_FIRST, LATE_START]
    chained = [s.tolist() for s in verifiers.process_scores(texts, [P] * len(texts))]
    # MALFORMED's third line carries the first one's total on with an unused term: it scores
    assert chained == [[1, 1], [1, 1], [0, 1], [1, 0], [0, 0], [1, 0, 1], [1, 1], [], [1, 1], [1, 0], [0], [0, 1, 1]]
    local = [s.tolist() for s in verifiers.process_scores(texts)]
    assert local == [[1, 1], [1, 1], [0, 1], [1, 1], [0, 0], [1, 0, 1], [1, 1], [], [1, 1], [1, 1], [1], [0, 1, 1]]
    assert verifiers.step_scores("47+38=85\n85-19=66\n66+1=67\nA: 67", P).tolist() == [1, 1, 0]


def test_verifiers_reject_bad_input():
    with pytest.raises(ValueError) as err:
        verifiers.outcome_scores([CORRECT], [P, P])
    assert "1 texts but 2 problems" in str(err.value)
    with pytest.raises(ValueError) as err:
        verifiers.outcome_scores([CORRECT], None)
    assert "needs the problems" in str(err.value)
    with pytest.raises(ValueError) as err:
        verifiers.process_scores(CORRECT)
    assert "not one string" in str(err.value)
    with pytest.raises(ValueError) as err:
        verifiers.outcome_scores([CORRECT], [66])
    assert "arith.Problem" in str(err.value)


def test_bad_levels_splits_and_mixes():
    with pytest.raises(ValueError) as err:
        arith.held_out("test", "impossible")
    assert "unknown level 'impossible'" in str(err.value)
    with pytest.raises(ValueError) as err:
        arith.held_out("dev", "hard")
    assert "unknown split 'dev'" in str(err.value)
    with pytest.raises(ValueError) as err:
        arith.held_out("train", "hard")
    assert "train_stream" in str(err.value)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 100\] for level 'easy', got 101"):
        arith.held_out("val", "easy", 101)
    with pytest.raises(ValueError, match="got 2.5"):
        arith.held_out("val", "hard", 2.5)
    with pytest.raises(ValueError) as err:
        next(arith.train_stream({"easy": 0}))
    assert "positive sum" in str(err.value)
    with pytest.raises(ValueError) as err:
        arith.parse(None)
    assert "expects a string" in str(err.value)
