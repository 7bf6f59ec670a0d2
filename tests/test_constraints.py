"""Constrained decoding: every output of the engine matches its regex / choice list, on a real BPE tokenizer."""
import random
import re

import jax
import numpy as np
import pytest

import engine
import models
from sampling import Sampler, compile_choices, compile_regex, constraints

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE (300 tokens, multi-character merges) trained here on JSON-ish and plain text."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    names = ["alice", "bob", "carol", "dave", "eve", "mallory", "yes", "no"]
    text = [f'{{"name": "{rng.choice(names)}", "age": {rng.randint(0, 99)}}} yes no maybe the cat sat on the mat '
            f'2024-01-{i % 31 + 1:02d} 3.14 x{i}' for i in range(300)]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return models.HFTokenizer(path, bos_id=BOS, eos_id=EOS, pad_id=PAD)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = models.preset("tiny", vocab_size=tokenizer.vocab_size, eos_ids=(EOS,), bos_id=BOS, pad_id=PAD, layers=1)
    return models.Model(config, models.init_params(config, jax.random.key(0), std=0.05), tokenizer)


JSON = r'\{"name": "[a-z]{1,8}", "age": [0-9]{1,2}\}'
BOUNDED = [JSON, r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]", r"(yes|no|maybe)( [a-z]{2,4}){0,2}", r"[A-Z]\w{0,3}\s\d"]
UNBOUNDED = [r"[0-9]+(\.[0-9]+)?", r"(ab|c)*d"]
PROMPTS = ["the cat", 'x{"name":']


def _check(model, constraint, pattern, sampler, seeds, max_new_tokens, must_finish):
    """Every rollout's text fullmatches ``pattern`` (or, cut by the budget, its tokens are a live prefix)."""
    finished = 0
    for seed in seeds:
        out = engine.generate(model, PROMPTS, max_new_tokens=max_new_tokens, n=8, seed=seed, sampler=sampler)
        for g in range(len(PROMPTS)):
            for r in range(8):
                ids = out.tokens[g, r, :out.lengths[g, r]].tolist()
                if ids and ids[-1] == EOS:
                    finished += 1
                    assert re.fullmatch(pattern, out.text[g][r]), (pattern, out.text[g][r])
                    assert EOS not in ids[:-1]
                else:
                    assert not must_finish, (pattern, out.text[g][r])
                    assert constraint.walk(ids) >= 0, (pattern, out.text[g][r])
    return finished


@pytest.mark.parametrize("pattern", BOUNDED + UNBOUNDED)
def test_every_sampled_output_matches(model, tokenizer, pattern):
    c = compile_regex(pattern, tokenizer)
    # a bounded pattern's longest match is < 32 characters, and every token holds at least one
    bounded = pattern in BOUNDED
    finished = _check(model, c, pattern, Sampler(temperature=1.0, constraint=c), range(4), 40, must_finish=bounded)
    assert finished >= (64 if bounded else 32)       # most rows of unbounded patterns also end


def test_outputs_are_diverse_and_use_multi_character_tokens(model, tokenizer):
    c = compile_regex(JSON, tokenizer)
    out = engine.generate(model, PROMPTS, max_new_tokens=40, n=8, seed=0, sampler=Sampler(constraint=c))
    texts = {t for row in out.text for t in row}
    assert len(texts) >= 12                                           # not one forced string
    strings = constraints.token_strings(tokenizer)
    used = [strings[t] for t in out.tokens.reshape(-1).tolist() if strings[t]]
    assert any(len(s) > 1 for s in used)                              # tokens spanning several characters


def test_greedy_outputs_match(model, tokenizer):
    for pattern in BOUNDED:
        c = compile_regex(pattern, tokenizer)
        _check(model, c, pattern, Sampler(temperature=0.0, constraint=c), [0], 40, must_finish=True)


def test_choice_list(model, tokenizer):
    choices = ["yes", "no", "maybe", "the cat sat", "mallory"]
    c = compile_choices(choices, tokenizer)
    seen = set()
    for seed in range(4):
        out = engine.generate(model, PROMPTS, max_new_tokens=12, n=8, seed=seed, sampler=Sampler(constraint=c))
        assert np.all(out.tokens[np.arange(2)[:, None], np.arange(8)[None], out.lengths - 1] == EOS)
        seen |= {t for row in out.text for t in row}
    assert seen <= set(choices) and len(seen) >= 3
    # each choice can be spelled by several token paths (e.g. one merged token or single characters)
    assert c.walk(tokenizer.encode("maybe", bos=False) + [EOS]) == c.final
    assert c.walk([tokenizer.encode(ch, bos=False)[0] for ch in "maybe"] + [EOS]) == c.final
    assert c.walk(tokenizer.encode("mayb", bos=False) + [EOS]) == -1


def test_token_table_by_hand():
    # tokens: 0 "a", 1 "b", 2 "ab", 3 "ba", 4 EOS (no text), 5 "" (no text: never allowed)
    c = compile_choices(["ab", "b"], ["a", "b", "ab", "ba", None, ""], eos_id=4)
    # the choices' trie: 0 start, 1 after "a", 2 "ab" (accepting), 3 "b" (accepting), 4 after EOS
    want = np.full((5, 6), -1)
    want[0, [0, 1, 2]] = [1, 3, 2]             # "a", "b" and the two-character token "ab"
    want[1, 1] = 2                             # "a" then "b"; "ba" overshoots every choice
    want[[2, 3, 4], 4] = 4                     # EOS only where a choice is complete, then only EOS
    np.testing.assert_array_equal(c.table, want)
    assert list(c.accepting) == [False, False, True, True, False] and c.final == 4
    assert c.walk([0, 1, 4]) == c.walk([2, 4]) == c.walk([1, 4]) == 4 and c.walk([3]) == -1


def test_token_walk_equals_a_character_by_character_walk(tokenizer):
    dfa = constraints.regex_dfa(JSON)
    strings = constraints.token_strings(tokenizer)

    def walk(state, text):
        for ch in text:
            state = dfa.table[state, dfa.classes.get(ch, dfa.other)]
            if state < 0:
                return -1
        return state

    want = [[walk(q, x) if x else -1 for x in strings] for q in range(dfa.table.shape[0])]
    np.testing.assert_array_equal(constraints.token_table(dfa, strings), want)
    assert sum(len(x) > 1 for x in strings if x) > 30         # the vocabulary has many multi-character tokens


def test_dead_end_states_are_pruned():
    # "aab" needs a token "b" after "aa"; without one, the path through "aa" is removed, "ab" stays
    c = compile_regex("a{1,2}b|ac", ["a", "c", "ab", None], eos_id=3)
    assert c.walk([0, 0]) == -1                                 # "aa" could never finish
    assert c.walk([2, 3]) == c.walk([0, 2, 3]) == c.walk([0, 1, 3]) == c.final   # "ab", "a"+"ab", "a"+"c"
    assert np.all(np.any(c.table >= 0, axis=1))


def test_table_padded_to_the_model_vocabulary(tokenizer):
    c = compile_regex("[0-9]{2}", tokenizer, vocab_size=tokenizer.vocab_size + 20)
    assert c.table.shape[1] == tokenizer.vocab_size + 20
    assert np.all(c.table[:, tokenizer.vocab_size:] == -1)


@pytest.mark.parametrize("pattern, message", [
    (r"(a)\1", "unsupported regex syntax in '(a)\\\\1': Group references are not implemented"),
    ("^ab", "unsupported regex syntax in '^ab'"),
    (r"a\b", "unsupported regex syntax"),
    ("(?<=a)b", "unsupported regex syntax in '(?<=a)b': lookbacks are not implemented"),
    ("[a-", "invalid regex '[a-'"),
    ("a{2,1}", "invalid regex 'a{2,1}'"),
    # interegular accepted these; Python's re refuses them
    ("a**", "invalid regex 'a**': multiple repeat"),
    ("[^]", "invalid regex '[^]': unterminated character set"),
    # valid for re, but interegular reads "[^]a]" as "anything, then a]"
    ("[^]a]", "a ']' first in a class is not supported in '[^]a]': escape it as \\]"),
    ("[]a]", "a ']' first in a class is not supported"),
    (r"[^\s\S]", "unsatisfiable constraint"),                    # matches nothing at all
    ("é", "unsatisfiable constraint 'é': no sequence of this vocabulary's tokens matches it"),  # only byte pieces
])
def test_bad_patterns_are_value_errors(tokenizer, pattern, message):
    with pytest.raises(ValueError) as err:
        compile_regex(pattern, tokenizer)
    assert message in str(err.value)


@pytest.mark.parametrize("call, message", [
    (lambda tok: compile_choices([], tok), "choices must be a non-empty list of strings"),
    (lambda tok: compile_choices("yes", tok), "choices must be a non-empty list of strings"),
    (lambda tok: compile_choices(["é", "ü"], tok), "unsatisfiable constraint"),
    (lambda tok: compile_regex("a", ["a", "b"]), "the tokenizer has no EOS id: pass eos_id="),
    (lambda tok: compile_regex("a", tok, vocab_size=10), "vocab_size 10 is smaller than the tokenizer's 300 tokens"),
    (lambda tok: compile_regex("a", tok, vocab_size=300.5), "vocab_size must be an integer >= 1, got 300.5"),
    (lambda tok: compile_regex("a", tok, eos_id=1.5), "eos_id must be a token id or a list of them, got 1.5"),
    (lambda tok: compile_regex("a", None, eos_id=0), "tokenizer must be a rollax tokenizer or a list of token strings"),
    (lambda tok: compile_choices(5, tok), "choices must be a non-empty list of strings"),
    (lambda tok: compile_choices((c for c in "ab"), tok), "choices must be a non-empty list of strings"),
])
def test_bad_calls_are_value_errors(tokenizer, call, message):
    with pytest.raises(ValueError) as err:
        call(tokenizer)
    assert message in str(err.value)


def test_trained_model_with_a_sentencepiece_tokenizer():
    # the shipped tiny-arith model writes "a+b=c" lines then "A: n"; hot sampling breaks the format unless constrained
    m = models.load("tiny-arith")
    pattern = r"(-?[0-9]{1,3}[+-][0-9]{1,3}=-?[0-9]{1,3}\n){1,3}A: -?[0-9]{1,3}"
    c = compile_regex(pattern, m.tokenizer, vocab_size=m.config.vocab_size)
    prompts = ["Q: 47+38-19=?\n", "Q: 5-9+12=?\n"]
    hot = dict(max_new_tokens=64, n=6, seed=0)
    free = engine.generate(m, prompts, sampler=Sampler(temperature=2.0), **hot)
    bound = engine.generate(m, prompts, sampler=Sampler(temperature=2.0, constraint=c), **hot)
    assert sum(not re.fullmatch(pattern, t) for row in free.text for t in row) >= 3
    assert all(re.fullmatch(pattern, t) for row in bound.text for t in row), bound.text
    # an output that already matches is left alone: greedy with and without the constraint agree
    greedy = engine.generate(m, prompts[:1], max_new_tokens=64)
    assert re.fullmatch(pattern, greedy.text[0][0]), greedy.text
    assert engine.generate(m, prompts[:1], max_new_tokens=64, sampler=Sampler(temperature=0, constraint=c)).text \
        == greedy.text


def test_token_lists_prune_a_constraint_branch_or_are_refused_where_they_empty_a_state():
    m = models.load("tiny-arith")
    six = m.tokenizer.encode("6", bos=False)
    assert len(six) == 1
    both = compile_choices(["A: 66", "A: 7"], m.tokenizer, vocab_size=m.config.vocab_size)
    out = engine.generate(m, ["Q: 5-3=?\n"], max_new_tokens=8, n=6, seed=0,
                          sampler=Sampler(temperature=1.0, constraint=both, banned_tokens=six))
    assert out.text == [["A: 7"] * 6]                     # the "A: 66" branch is unreachable, not an error
    only = compile_choices(["A: 66"], m.tokenizer, vocab_size=m.config.vocab_size)
    with pytest.raises(ValueError) as err:               # once: token 0 drawn, then EOS on "A: "
        engine.generate(m, ["Q: 5-3=?\n"], max_new_tokens=8,
                        sampler=Sampler(temperature=1.0, constraint=only, banned_tokens=six))
    assert "no token could be drawn in a state of the constraint" in str(err.value)


def test_stop_tokens_must_agree_with_the_constraint():
    m = models.load("tiny-arith")
    lines = r"(-?[0-9]{1,3}[+-][0-9]{1,3}=-?[0-9]{1,3}\n){1,3}A: -?[0-9]{1,3}"
    newline = m.tokenizer.encode("\n", bos=False)
    assert len(newline) == 1
    run = lambda c, **kw: engine.generate(m, ["Q: 47+38-19=?\n"], max_new_tokens=48, n=8, seed=0,
                                          sampler=Sampler(temperature=1.0, constraint=c), **kw)
    # a stop token the pattern allows mid-match: rows stopped after the first line ("38+47=85", no match)
    c = compile_regex(lines, m.tokenizer, vocab_size=m.config.vocab_size)
    with pytest.raises(ValueError) as err:
        run(c, stop_tokens=newline)
    assert f"stop tokens {newline} are allowed by the constraint before its text is a full match" in str(err.value)
    # where the text before it is a full match, stopping there is fine
    first = r"-?[0-9]{1,3}[+-][0-9]{1,3}=-?[0-9]{1,3}(\n.*)?"
    out = run(compile_regex(first, m.tokenizer, vocab_size=m.config.vocab_size), stop_tokens=newline)
    assert all(re.fullmatch(first, t) for row in out.text for t in row), out.text
    assert sum(out.tokens[0, r, out.lengths[0, r] - 1] == newline[0] for r in range(8)) >= 4
    # an end token that is not a stop id: rows went on emitting it to the budget ("A: 664=?=?=?...")
    other = compile_regex(lines, m.tokenizer, vocab_size=m.config.vocab_size, eos_id=5)
    with pytest.raises(ValueError) as err:
        run(other)
    assert "from some state of the constraint no stop token (ids [2]) can be drawn" in str(err.value)
    out = run(other, stop_tokens=[5])                       # made a stop token, it ends the rows
    assert all(re.fullmatch(lines, t) for row in out.text for t in row), out.text
    assert np.all(out.tokens[0, np.arange(8), out.lengths[0] - 1] == 5)


def test_a_constraint_with_bad_accepting_states_is_refused():
    class Bad:
        table, accepting = np.zeros((2, 4), np.int32), np.ones(3, bool)
    with pytest.raises(ValueError, match=r"constraint.accepting must be bool \[states=2\]"):
        Sampler(constraint=Bad())


def test_a_second_constraint_starts_afresh_and_the_same_one_continues(model, tokenizer):
    digits, word = compile_regex("[0-9]{6}", tokenizer), compile_choices(["yes", "no"], tokenizer)
    start = lambda: engine.start(model, PROMPTS, capacity=24, n=4, seed=1)
    hot = Sampler(temperature=1.0, constraint=digits)
    # the same constraint over two calls draws what one call draws
    one = engine.decode(model, start(), max_new_tokens=10, sampler=hot)
    two = engine.decode(model, engine.decode(model, start(), max_new_tokens=2, sampler=hot),
                        max_new_tokens=8, sampler=hot)
    np.testing.assert_array_equal(np.asarray(two.tokens), np.asarray(one.tokens))
    # another constraint matches the text of its own call (it read the first one's states before)
    state = engine.decode(model, start(), max_new_tokens=2, sampler=hot)
    state = engine.decode(model, state, max_new_tokens=8, sampler=Sampler(temperature=1.0, constraint=word))
    out = engine.rollouts(state, tokenizer)
    for g in range(len(PROMPTS)):
        for r in range(4):
            ids = out.tokens[g, r, :out.lengths[g, r]].tolist()
            first = tokenizer.decode(ids[:2])
            assert re.fullmatch("[0-9]+", first) and digits.walk(ids[:2]) >= 0, first
            assert ids[-1] == EOS and tokenizer.decode(ids[2:-1]) in ("yes", "no"), tokenizer.decode(ids)
            assert out.text[g][r] == tokenizer.decode(ids[:-1])       # rollouts() kept the "</s>" without stops
