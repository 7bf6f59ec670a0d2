"""The program-synthesis task: the list language, generator, splits, verifiers, step checker and feedback."""
import collections
import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest

from meta.tasks import listlang, program
from meta.tasks import program_verifiers as verifiers
from meta.tasks.listlang import Op, ParseError, RunError

ROOT = Path(__file__).resolve().parents[1]

# filter >2, sort, reverse: the elements over 2, largest first
P = program.Problem(
    (Op("filter", ">2"), Op("sort"), Op("reverse")),
    (((3, 1, 4, 1), (4, 3)), ((5, 9, 2, 6), (9, 6, 5)), ((1, 7, 8, 0), (8, 7))),
    (((2, 2, 5), (5,)), ((0, 1, 2, 3), (3,)), ((9, 8, 7, 6), (9, 8, 7, 6)), ((4, 4, 1, 0), (4, 4)), ((3,), (3,))),
    "hard")
PROMPT = "[3,1,4,1] -> [4,3]\n[5,9,2,6] -> [9,6,5]\n[1,7,8,0] -> [8,7]\nP:\n"
CORRECT = "filter >2\nsort\nreverse"
TRACED = "filter >2 # [3,4] [5,9,6] [7,8]\nsort # [3,4] [5,6,9] [7,8]\nreverse # [4,3] [9,6,5] [8,7]"   # as the task writes it
OTHER_RIGHT = "sort\nreverse\nfilter >2"               # another order, same outputs
SPACED = "  filter >2\n\nsort\nreverse \n"             # blank lines and spaces are skipped
SHOWN_ONLY = "sort\nreverse\ntake 3\nfilter >2"        # fits the shown examples, fails [9,8,7,6]
WRONG = "filter >2\nsort"                              # misses the reverse
UNKNOWN_OP = "filter >2\nsortt\nreverse"
EMPTY_MAX = "filter >9\nmax"                           # max of an empty list
HUGE = "map *999\nmap *999\nmap *999"                  # 3 * 999**2 is over MAX_VALUE: stopped
TOO_LONG = "\n".join(["sort"] * 17)


def run(text, xs):
    return listlang.run(listlang.parse(text), xs)


def output(ops, xs):
    try:
        return listlang.run(ops, xs)
    except RunError:
        return None


def test_each_op_on_hand_made_lists():
    xs = [3, 8, 1, 6, 5]
    cases = {"map +3": (6, 11, 4, 9, 8), "map -4": (-1, 4, -3, 2, 1), "map *2": (6, 16, 2, 12, 10),
             "filter >4": (8, 6, 5), "filter <5": (3, 1), "filter even": (8, 6), "filter odd": (3, 1, 5),
             "sort": (1, 3, 5, 6, 8), "reverse": (5, 6, 1, 8, 3), "take 2": (3, 8), "take 9": (3, 8, 1, 6, 5),
             "drop 2": (1, 6, 5), "drop 7": (), "sum": (23,), "max": (8,), "min": (1,)}
    for text, want in cases.items():
        assert run(text, xs) == want, text
    assert run("filter odd\nmap -6\nfilter odd", [-3, 2, 7]) == (-9, 1)      # odd negatives too
    assert run("sum", []) == (0,) and run("sort\nreverse", []) == ()
    assert run(CORRECT, [3, 1, 4, 1]) == (4, 3)
    assert run("map +3\nfilter even\nsort\nreverse\ntake 2\ndrop 1\nsum", [1, 2, 3, 4, 5]) == (6,)
    assert str(listlang.parse_op(" map +007 ")) == "map +7" and program.answer(SPACED) == CORRECT


def test_malformed_programs_and_runs_that_stop():
    for text, message in [("sortt", "line 1: unknown op 'sortt'"), ("sort\n\nmap + 3", "line 3: unknown op 'map + 3'"),
                          ("", "empty program"), ("\n \n", "empty program"), (TOO_LONG, "more than 16 steps"),
                          ("take 1234", "unknown op"), ("map +٣", "unknown op"), (None, "a program is a string")]:
        with pytest.raises(ParseError) as e:
            listlang.parse(text)
        assert message in str(e.value), text
    assert len(listlang.parse("\n".join(["sort"] * 16))) == 16
    for text, xs, message in [(EMPTY_MAX, [1, 2], "max of an empty list"), ("min", [], "min of an empty list"),
                              (HUGE, [3], "value out of range"), ("map -999\nmap *999\nmap *999", [1], "out of range"),
                              ("map +999", [listlang.MAX_VALUE], "out of range")]:
        with pytest.raises(RunError) as e:
            run(text, xs)
        assert message in str(e.value)
    assert run("map *999\nmap *999", [0, 1]) == (0, 998001)          # the limit is on values, not on ops
    for xs in ([1.5], "123", [True], list(range(65)), [10 ** 7]):
        with pytest.raises(ValueError) as e:
            listlang.run((Op("sort"),), xs)
        assert "an input is a list of at most 64 ints" in str(e.value)


def test_lists_are_written_and_read_back():
    assert listlang.show((3, -1, 40)) == "[3,-1,40]" and listlang.show(()) == "[]"
    assert listlang.read_list(" [3,-1,40] ") == (3, -1, 40) and listlang.read_list("[]") == ()
    for bad in ("[3, 1]", "3,1", "[3,,1]", "[-]", "[1]]"):
        with pytest.raises(ValueError):
            listlang.read_list(bad)


def test_prompt_solution_and_reading_the_prompt_back():
    assert P.prompt == PROMPT and P.solution == TRACED and program.answer(TRACED) == CORRECT
    assert program.read_prompt(PROMPT) == P.shown
    assert P.examples == P.shown + P.hidden
    for bad in ("[3,1] -> [3]\n", "[3,1] -> [3]\nP:", "[3,1] [3]\nP:\n", "[3,1] -> x\nP:\n", 7):
        with pytest.raises(ValueError) as e:
            program.read_prompt(bad)
        assert "not a program prompt" in str(e.value)


def test_random_solutions_are_right_varied_and_seeded():
    problems = program.held_out("val", "hard", 60)
    rng, texts = random.Random(0), collections.defaultdict(set)
    for p in problems:
        for _ in range(4):
            texts[p].add(p.random_solution(rng))
        assert verifiers.outcome_scores(sorted(texts[p]), [p] * len(texts[p])).tolist() == [1.0] * len(texts[p])
        assert all(sorted(program.answer(t).split("\n")) == sorted(p.answer.split("\n")) for t in texts[p])
        assert all(t == p.write(listlang.parse(t)) for t in texts[p])          # each with its own trace
    assert sum(len(t) > 1 for t in texts.values()) > 30           # most hard programs have another order
    a, b = random.Random(3), random.Random(3)
    assert [p.random_solution(a) for p in problems] == [p.random_solution(b) for p in problems]
    assert program.answer(P.random_solution(random.Random(0))) in (CORRECT, OTHER_RIGHT, "sort\nfilter >2\nreverse")


def test_a_solution_writes_each_ops_results_as_a_comment_the_language_ignores():
    assert listlang.parse(TRACED) == P.ops and program.answer(TRACED) == CORRECT
    assert listlang.parse("sort # [1,2 anything\n  # a line of comment only\nreverse#") == (Op("sort"), Op("reverse"))
    assert P.write((Op("filter", ">8"), Op("max"), Op("sort"))) == "filter >8 # [] [9] []\nmax # error [9] error\nsort # error [9] error"
    for p in program.held_out("val", "hard", 50):
        for i, line in enumerate(p.solution.split("\n"), 1):       # the trace: the lists after i ops, shown inputs
            assert line.split(program.TRACE) == [str(p.ops[i - 1]), " ".join(listlang.show(listlang.run(p.ops[:i], xs))
                                                                             for xs, _ in p.shown)]
    with pytest.raises(ParseError, match="line 2: unknown op 'sortt'"):
        listlang.parse("sort # fine\nsortt # [1]")


def test_answer_and_behaviour_extractors():
    assert program.answer(CORRECT) == program.answer(SPACED) == CORRECT
    assert program.answer(UNKNOWN_OP) is None and program.answer("") is None
    assert program.behaviour(CORRECT) == program.behaviour(OTHER_RIGHT) == P.behaviour
    assert program.behaviour("map +1\nmap +1") == program.behaviour("map +2")
    assert program.behaviour(CORRECT) != program.behaviour(WRONG)
    assert program.behaviour(UNKNOWN_OP) is None
    assert program.behaviour(EMPTY_MAX)[0] is None                  # the probe [] stops: None, not a crash
    hash(program.behaviour(CORRECT))                                  # votes need hashable answers


def test_generator_is_deterministic_per_seed_and_differs_across_seeds():
    a = [program.sample_problem(random.Random(7), "hard") for _ in range(3)]
    assert a == [program.sample_problem(random.Random(7), "hard") for _ in range(3)]
    assert program.held_out("test", "hard", 20) == program.held_out("test", "hard", 20)
    assert program.held_out("test", "hard", 20) != program.held_out("test", "hard", 20, seed=1)
    assert program.held_out("test", "hard", 20) != program.held_out("val", "hard", 20)
    assert program.held_out("val", "medium", 30) == program.held_out("val", "medium", 100)[:30]
    mix = {"easy": 1, "hard": 1}
    first = list(itertools.islice(program.train_stream(mix), 30))
    assert first == list(itertools.islice(program.train_stream(mix), 30))
    assert first != list(itertools.islice(program.train_stream(mix, seed=1), 30))


def test_bad_split_level_and_mixture_arguments():
    for call, message in [(lambda: program.held_out("dev", "hard"), "unknown split 'dev'"),
                          (lambda: program.held_out("val", "huge"), "unknown level 'huge'"),
                          (lambda: program.held_out("train", "hard"), "stream"),
                          (lambda: program.held_out("val", "easy", 101), "n must be an int in [1, 100]"),
                          (lambda: next(program.train_stream({"hard": 0})), "positive sum")]:
        with pytest.raises(ValueError) as e:
            call()
        assert message in str(e.value)


@pytest.mark.parametrize("name", list(program.LEVELS))
def test_levels_keep_their_promises(name):
    lvl = program.LEVELS[name]
    problems = program.held_out("val", name)
    assert {len(p.ops) for p in problems} == set(range(lvl.min_ops, lvl.max_ops + 1))
    for p in problems:
        assert p.level == name and len(p.shown) == program.SHOWN and len(p.hidden) == program.HIDDEN
        assert all(op in program.OPS for op in p.ops)
        assert all(op.name not in ("sum", "max", "min") for op in p.ops[:-1])
        assert len({out for _, out in p.shown}) == program.SHOWN
        for xs, out in p.examples:
            assert program.MIN_LEN <= len(xs) <= program.MAX_LEN and all(0 <= x <= program.TOP for x in xs)
            values = [v for i in range(len(p.ops) + 1) for v in listlang.run(p.ops[:i], xs)]
            assert all(abs(v) <= program.BOUND for v in values) and listlang.run(p.ops, xs) == out
        for i in range(len(p.ops)):                                   # every op shows in the shown examples
            assert any(output(p.ops[:i] + p.ops[i + 1:], xs) != out for xs, out in p.shown)
        assert program.read_prompt(p.prompt) == p.shown
    assert verifiers.outcome_scores([p.solution for p in problems], problems).tolist() == [1.0] * len(problems)


@pytest.mark.parametrize("name", list(program.LEVELS))
def test_held_out_lists_are_distinct_and_disjoint_by_prompt(name):
    val, test = program.held_out("val", name), program.held_out("test", name)
    assert len(val) == len(test) == program.LEVELS[name].held_out
    val_p, test_p = {p.prompt for p in val}, {p.prompt for p in test}
    assert len(val_p) == len(val) and len(test_p) == len(test) and not val_p & test_p
    assert val_p | test_p <= program.held_out_prompts()


def test_train_stream_never_yields_held_out_prompts_and_keeps_the_mixture():
    held = program.held_out_prompts()
    mix = {"easy": 1.0, "medium": 2.0, "hard": 4.0}
    n = 1400
    drawn = list(itertools.islice(program.train_stream(mix), n))
    assert not any(p.prompt in held for p in drawn)
    counts = collections.Counter(p.level for p in drawn)
    expected = {k: n * w / sum(mix.values()) for k, w in mix.items()}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in mix)
    assert chi2 < 13.8                                  # p = 0.001 for 2 degrees of freedom


def test_outcome_verifier_on_right_wrong_and_malformed_programs():
    texts = [CORRECT, OTHER_RIGHT, SPACED, SHOWN_ONLY, WRONG, UNKNOWN_OP, EMPTY_MAX, HUGE, TOO_LONG, "", None,
             "P:\n" + CORRECT, "filter >2\nsort\nreverse\nthen stop"]
    scores = verifiers.outcome_scores(texts, [P] * len(texts))
    assert scores.dtype == np.float32
    assert scores.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError) as e:
        verifiers.outcome_scores(CORRECT, [P])
    assert "not one string" in str(e.value)
    with pytest.raises(ValueError) as e:
        verifiers.outcome_scores([CORRECT], ["filter >2"])
    assert "program.Problem" in str(e.value)


def test_step_scores_on_hand_made_prefixes():
    def steps(text):
        return verifiers.step_scores(text, P).tolist()
    assert steps(CORRECT) == steps(CORRECT + "\n") == steps(OTHER_RIGHT) == steps(TRACED) == [1, 1, 1]
    assert steps("sort # a wrong trace [1]\n") == [1]  # a trace is not read
    assert steps("# a note\n" + CORRECT) == [0, 0, 0, 0]  # a comment-only line is a step, and no op
    assert steps(WRONG + "\n") == [1, 1]              # a prefix: a reverse can still follow
    assert steps(WRONG) == [1, 0]                     # finished (EOS after it): wrong as it stands
    assert steps("sort\nreverse\ntake 3\n") == [1, 1, 0]     # [9,8,7,6] needs 4 elements: no completion
    assert steps(SHOWN_ONLY) == [1, 1, 0, 0]
    assert steps("sort\n") == [1] and steps("reverse\n") == [1]     # reverse, filter >2, sort, reverse
    assert steps("map +1\n") == [0]         # undoing the map takes a 5th op: map, map, filter, sort, reverse
    assert steps("filter >3\n") == [0]                  # drops the 3s the outputs keep
    assert steps(UNKNOWN_OP) == [1, 0, 0] and steps(EMPTY_MAX) == [0, 0] and steps(HUGE) == [0, 0, 0]
    assert steps("") == [] and steps("\n\n") == []
    assert steps(TOO_LONG) == [1, 1] + [0] * 15      # sort, sort, then filter >2 and reverse would fit
    assert [s.tolist() for s in verifiers.process_scores([CORRECT, WRONG], [P, P])] == [[1, 1, 1], [1, 0]]


def test_step_checker_agrees_with_brute_force_search():
    # the pruned search against a plain walk over every sequence of at most 2 ops of the vocabulary
    def brute(state, target, depth):
        if state == target:
            return True
        for op in program.OPS if depth else ():
            try:
                after = tuple(op.apply(s) for s in state)
            except RunError:
                continue
            if brute(after, target, depth - 1):
                return True
        return False

    rng, found = random.Random(1), collections.Counter()
    for p in program.held_out("val", "hard", 10):
        target = tuple(out for _, out in p.examples)
        for _ in range(4):
            prefix = p.ops[:2] if rng.random() < 0.4 else (rng.choice(program.OPS), rng.choice(program.OPS))
            try:
                state = tuple(listlang.run(prefix, xs) for xs, _ in p.examples)
            except RunError:
                continue
            want = brute(state, target, 2)
            assert verifiers._completable(state, target, 2, {}) == want, (p.solution, prefix)
            found[want] += 1
    assert found[True] >= 10 and found[False] >= 10


def test_feedback_text_on_hand_made_cases():
    assert verifiers.feedback(PROMPT, CORRECT) is None
    assert verifiers.feedback(PROMPT, SHOWN_ONLY) is None            # only the shown examples are told
    assert verifiers.feedback(PROMPT, WRONG) == "no: [3,1,4,1] -> [3,4], want [4,3]\n"
    assert verifiers.feedback(PROMPT, "filter >3\nsort\nreverse") == "no: [3,1,4,1] -> [4], want [4,3]\n"
    assert verifiers.feedback(PROMPT, "filter >2\nsort\nreverse\ntake 2") == "no: [5,9,2,6] -> [9,6], want [9,6,5]\n"
    assert verifiers.feedback(PROMPT, UNKNOWN_OP) == "no: line 2: unknown op 'sortt'\n"
    assert verifiers.feedback(PROMPT, "filter >8\nmax") == "no: [3,1,4,1] -> error: max of an empty list, want [4,3]\n"
    assert verifiers.feedback(PROMPT, HUGE) == "no: [3,1,4,1] -> error: value out of range, want [4,3]\n"
    assert verifiers.feedback(PROMPT, "") == "no: empty program\n"
    assert verifiers.feedback(PROMPT, TOO_LONG) == "no: more than 16 steps\n"
    with pytest.raises(ValueError) as e:
        verifiers.feedback("Q: 1+2=?\n", CORRECT)
    assert "not a program prompt" in str(e.value)


def test_verifiers_as_scorers():
    texts = [[CORRECT, WRONG, UNKNOWN_OP], [WRONG + "\n", CORRECT, "sum"]]
    outcome = verifiers.OutcomeVerifier()([PROMPT, PROMPT], texts, [P, P])
    assert np.asarray(outcome).tolist() == [[1, 0, 0], [0, 1, 0]]
    process = verifiers.process_verifier("min")([PROMPT, PROMPT], texts, [P, P])
    assert np.asarray(process).tolist() == [[1, 0, 0], [1, 1, 0]]
    for scorer in (verifiers.OutcomeVerifier(), verifiers.process_verifier()):
        for refs, says in ((None, "must be a program text"), ([P, "filter >2"], "must be a program text"),
                           ([P, "sortt"], "does not parse"), ([P, 7], "must be a program text"),
                           ([P, ["sort"]], "must be a program text")):          # JSON gives lists too
            with pytest.raises(ValueError) as e:
                scorer([PROMPT, PROMPT], texts, refs)
            assert says in str(e.value) and repr(PROMPT) in str(e.value)


def test_a_reference_program_text_stands_for_the_hidden_one():
    """A dataset gives a right program's text as the answer: the hidden examples are its runs on the probes."""
    problem = verifiers.reference_problem(PROMPT, "sort\nreverse\nfilter >2")
    assert problem.shown == P.shown and len(problem.hidden) == len(program.PROBES)
    assert all(out == output(P.ops, xs) for xs, out in problem.hidden)
    texts = [[CORRECT, OTHER_RIGHT, SHOWN_ONLY, WRONG]]
    by_text = verifiers.OutcomeVerifier()([PROMPT], texts, [OTHER_RIGHT])
    assert np.asarray(by_text).tolist() == [[1, 1, 0, 0]]       # SHOWN_ONLY fits the prompt, not the probes
    assert np.asarray(verifiers.process_verifier("min")([PROMPT], texts, [CORRECT])).tolist() == [[1, 1, 0, 0]]
    assert verifiers.reference_problem(PROMPT, P) is P
    stopping = program.from_prompt("[3,1] -> [3]\n[5,9] -> [9]\n[1,7] -> [7]\nP:\n", "max")
    assert len(stopping.hidden) == len(program.PROBES) - 1     # max of the empty probe stops: not an example


def test_a_flawed_solution_fails_a_shown_example_by_one_op_and_the_corrected_one_is_right():
    rng, kinds = random.Random(3), collections.Counter()
    for problem in program.held_out("val", "hard", 300):
        flawed, corrected = problem.flawed_solution(rng)
        assert verifiers.right(corrected, problem) and not verifiers.right(flawed, problem)
        assert verifiers.feedback(problem.prompt, flawed).startswith("no: [")      # a shown example fails
        bad, good = program.answer(flawed).split("\n"), program.answer(corrected).split("\n")
        assert (flawed, corrected) == (problem.write(listlang.parse(flawed)), problem.write(listlang.parse(corrected)))
        if len(bad) == len(good) - 1:                                             # an op left out
            kinds["skip"] += 1
            assert any(good[:i] + good[i + 1:] == bad for i in range(len(good)))
            continue
        (i,) = [i for i, (a, b) in enumerate(zip(bad, good)) if a != b]           # one op changed
        kinds["constant" if bad[i].split()[0] == good[i].split()[0] else "family"] += 1
    assert min(kinds.values()) > 60, kinds              # each kind about a third (sort has no other constant)


def test_docs_example_runs():
    ns = {}
    exec(re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "program.md").read_text(), re.S)[0], ns)
    problem, note = ns["problem"], ns["note"]
    failing = [(xs, out) for xs, out in problem.shown if tuple(sorted(xs, reverse=True)) != out]
    xs, want = failing[0]                                    # "sort, reverse" writes the input largest first
    assert note == f"no: {listlang.show(xs)} -> {listlang.show(sorted(xs, reverse=True))}, want {listlang.show(want)}\n"
    assert ns["transcript"] == problem.prompt + "sort\nreverse</s>" + note
    assert ns["right"].tolist() == [0.0, 1.0] and len(ns["steps"]) == 2


def test_registry_names_the_task_and_grades_by_the_verifier():
    from meta import tasks
    task = tasks.get("tiny-program")
    assert (task.policy, task.reward_model, task.process_reward_model) == (
        "tiny-program", "tiny-program-rm", "tiny-program-prm")
    assert tasks.of(P) is task and task.problems is program and not task.graded_by_answer
    assert task.correct(OTHER_RIGHT, P) and not task.correct(SHOWN_ONLY, P) and not task.correct(None, P)
    assert P.answer == CORRECT == program.answer(P.solution)          # a reference, not the only right text
    assert not any(program.ANSWER_RE.match(line) for line in ["A: 3", "P:", "", *CORRECT.split("\n")])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from meta import tasks
    from scripts import train_tiny
    task = tasks.get("tiny-program")
    return train_tiny.train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model", n=300,
                                      vocab_size=task.train["vocab_size"], task=task)


def test_training_text_round_trips_and_every_hard_problem_packs(tok):
    from meta import tasks
    from scripts import train_tiny
    text = P.prompt + OTHER_RIGHT
    assert tok.decode(tok.encode(text, bos=False)) == text and train_tiny.UNK not in tok.encode(text)
    tokens, mask = train_tiny.pack(tok, [P], seq_len=160)
    targets = tokens[0, 1:][mask[0] > 0]
    assert tok.decode(targets[:-1].tolist()) == P.solution and targets[-1] == tok.eos_id
    with pytest.raises(ValueError) as e:
        train_tiny.train_tokenizer(Path(tok.path).with_name("small.model"), n=300, vocab_size=32,
                                   task=tasks.get("tiny-program"))
    assert "--vocab-size 32 is too small for tiny-program: its text has" in str(e.value)
    hard = program.held_out("test", "hard") + program.held_out("val", "hard")
    train_tiny.pack(tok, hard, seq_len=tasks.get("tiny-program").train["seq_len"])      # raises if one is too long
    longest = max(len(tok.encode(p.solution, bos=False)) for p in hard)   # 300 texts: fewer merges than train_tiny's 20,000
    assert program.max_new_tokens([P]) >= longest + 1                     # + EOS


def test_process_labels_make_every_line_a_step():
    from scripts import train_reward
    assert train_reward.step_labels(CORRECT + "\n", P) == [1.0, 1.0, 1.0]
    assert train_reward.step_labels("filter >2\n\nmap +1\nsort\n", P) == [1.0, None, 0.0, 0.0]
