"""Beam search and diverse (group) beam search: hand-computed fake-model cases and transformers parity."""
import math
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import engine
import models
from engine import beam as beam_module
from tests.conftest import write_hf

PAD, START, EOS, A, B, C = range(6)
# A Markov "model": the next-token distribution depends only on the last token.
NEXT = {
    START: {A: .5, B: .4, C: .07, EOS: .01, PAD: .01, START: .01},
    A: {A: .35, B: .3, C: .25, EOS: .07, PAD: .02, START: .01},
    B: {EOS: .9, A: .04, B: .03, C: .01, PAD: .01, START: .01},
    C: {EOS: .5, A: .2, B: .2, C: .07, PAD: .02, START: .01},
    EOS: {t: 1 / 6 for t in range(6)},
    PAD: {t: 1 / 6 for t in range(6)},
}
P = lambda *path: math.prod(NEXT[a][b] for a, b in zip((START,) + path, path))   # probability of a path
L = lambda *path: math.log(P(*path))


def markov_forward(config, params, tokens, positions=None, cache=None, *, last_only=False):
    logits = params["logp"][tokens]                       # [B, T, V]: a pure function of the token
    return (logits[:, -1] if last_only else logits), cache.advance(tokens.shape[1])


@pytest.fixture(scope="module")
def markov():
    table = np.array([[math.log(NEXT[a][b]) for b in range(6)] for a in range(6)], np.float32)
    config = models.preset("tiny", vocab_size=6, layers=1, eos_ids=(EOS,), pad_id=PAD, bos_id=None)
    return SimpleNamespace(config=config, params={"logp": jnp.asarray(table)}, forward=markov_forward,
                           tokenizer=None)


# Prompts of different lengths ending in START: the Markov model sees only the last token,
# so every prompt has the same answer (left padding and batching must not change it).
PROMPTS = [[START], [C, A, START], [B, B, B, B, B, START]]


def check(result, want, scores, lengths):
    for g in range(len(PROMPTS)):
        for r, seq in enumerate(want):
            assert result.sequences[g, r, :len(seq)].tolist() == seq
            assert (result.sequences[g, r, len(seq):] == PAD).all()
        np.testing.assert_allclose(result.scores[g], scores, rtol=1e-6)
        assert result.lengths[g].tolist() == lengths


def test_beam_search_finds_what_greedy_misses(markov):
    # step 0: beams A (.5), B (.4).  step 1: B-EOS (.36) is the best continuation -> finished
    # (score ln .36 / 2); A-A (.175) and A-B (.15) run.  step 2: A-B-EOS (.135) finished (ln .135 / 3);
    # the best running beam A-A-A (.06125) scored at length 3 (-0.93) cannot beat -0.67: stop.
    out = engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=4, num_return=2)
    check(out, [[B, EOS], [A, B, EOS]], [L(B, EOS) / 2, L(A, B, EOS) / 3], [2, 3])
    assert out.steps == 3
    greedy = engine.generate(markov, PROMPTS, max_new_tokens=4)
    assert greedy.tokens[:, 0].tolist() == [[A, A, A, A]] * 3
    # one beam is greedy search; a hypothesis cut at max_new_tokens counts all its tokens
    one = engine.beam_search(markov, PROMPTS, num_beams=1, max_new_tokens=4)
    check(one, [[A, A, A, A]], [L(A, A, A, A) / 4], [4])


@pytest.mark.parametrize("early_stopping, steps", [(False, 3), (True, 3), ("never", 6)])
def test_early_stopping_modes(markov, early_stopping, steps):
    # False: heuristic at the current length (3) stops; True: 2 hypotheses finished -> stop;
    # "never" with length_penalty > 0 scores the best running beam at max_new_tokens (8):
    # ln(.06125) / 8 > ln(.135) / 3, so it goes on until the best running beam A^6 (.5 * .35^5)
    # scores ln(.0026) / 8 = -0.74 < -0.67 after 6 steps (finding nothing better).
    out = engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=8, num_return=2,
                             early_stopping=early_stopping)
    check(out, [[B, EOS], [A, B, EOS]], [L(B, EOS) / 2, L(A, B, EOS) / 3], [2, 3])
    assert out.steps == steps


def test_length_penalty_divides_by_length_to_its_power(markov):
    # length_penalty=0: raw sums of log-probs; 2: B-EOS scores ln .36 / 4 = -0.255 and A-B-EOS
    # ln .135 / 9 = -0.222, so the longer hypothesis ranks first
    out = engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=4, num_return=2, length_penalty=0.0)
    check(out, [[B, EOS], [A, B, EOS]], [L(B, EOS), L(A, B, EOS)], [2, 3])
    out = engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=4, num_return=2, length_penalty=2.0)
    check(out, [[A, B, EOS], [B, EOS]], [L(A, B, EOS) / 9, L(B, EOS) / 4], [3, 2])


def test_diverse_beam_search_hand_computed(markov):
    # 3 groups of 1 beam, diversity penalty 0.5 on tokens chosen by earlier groups at the same step.
    # step 0: g0 takes A; g1: B (ln .4) beats A - .5; g2: A - .5 (-1.19) beats B - .5 (-1.42).
    # step 1: g0 A-A; g1 B-EOS finished (ln .36 / 2) and g1 stops (its running beam cannot beat it);
    #         g2 from A: C (ln .25, unused) beats A and B (each penalised .5) -> A-C.
    # step 2: g2 A-C-EOS finished, score (ln(.5 * .25 * .5) - .5) / 3, and g2 stops.
    # step 3: g0 reaches max_new_tokens: A-A-A-A finished, ln(.5 * .35^3) / 4.
    out = engine.beam_search(markov, PROMPTS, num_beams=3, num_beam_groups=3, diversity_penalty=0.5,
                             max_new_tokens=4, num_return=3)
    check(out, [[B, EOS], [A, A, A, A], [A, C, EOS]],
          [L(B, EOS) / 2, L(A, A, A, A) / 4, (L(A, C, EOS) - 0.5) / 3], [2, 4, 3])
    assert out.steps == 4
    # without the penalty the groups are independent copies of one greedy beam
    same = engine.beam_search(markov, PROMPTS, num_beams=3, num_beam_groups=3, max_new_tokens=4, num_return=3)
    check(same, [[A, A, A, A]] * 3, [L(A, A, A, A) / 4] * 3, [4] * 3)


def test_settings_are_traced_not_recompiled(markov):
    engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=4)
    before = beam_module._search._cache_size()
    for es, lp in [(True, 0.5), ("never", -1.0), (False, 2.0)]:
        engine.beam_search(markov, PROMPTS, num_beams=2, max_new_tokens=4, early_stopping=es, length_penalty=lp,
                           num_return=2)
    assert beam_module._search._cache_size() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_beams=2, num_return=3), "num_return=3 is more than num_beams=2"),
    (dict(num_beams=4, num_beam_groups=3), "num_beam_groups=3 does not divide num_beams=4"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=-1.0), "diversity_penalty must be a number in [0, 1e30]"),
    # inf once cast to float32: the second group's scores became NaN and it returned empty hypotheses
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1e39), "diversity_penalty must be a number in [0, 1e30]"),
    (dict(num_beams=2, length_penalty=1e308), "makes length ** length_penalty leave float32's range"),  # OverflowError
    (dict(num_beams=2 ** 24), "of search state; the memory is"),
    (dict(num_beams=4, diversity_penalty=1.0), "diversity_penalty only acts between beam groups"),
    (dict(num_beams=2, max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(num_beams=2, early_stopping=1), "early_stopping must be True, False or 'never', got 1"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(num_beams=2 ** 31), "more rows than int32 indexing allows"),
    (dict(num_beams=2, stop_tokens=[0, 1, 3, 4, 5]), "more than the vocabulary (6)"),
])
def test_bad_settings_are_value_errors(markov, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError) as err:
        engine.beam_search(markov, PROMPTS, **kwargs)
    assert message in str(err.value)


def test_bad_prompts_are_value_errors(markov):
    with pytest.raises(ValueError) as err:
        engine.beam_search(markov, [[START], [9]], num_beams=2, max_new_tokens=4)
    assert "prompt 1 has token ids outside the vocabulary" in str(err.value)


def test_string_prompts_and_text(markov):
    class Letters:
        def encode(self, text):
            return ["_^$abc".index(ch) for ch in text]

        def decode(self, ids):
            return "".join("_^$abc"[i] for i in ids)

    model = SimpleNamespace(**{**vars(markov), "tokenizer": Letters()})
    out = engine.beam_search(model, ["^", "ca^"], num_beams=2, max_new_tokens=4, num_return=2)
    assert out.text == [["b", "ab"], ["b", "ab"]]     # the final EOS is not text


HF_PROMPTS = [[1, 5, 9, 33, 42], [1, 7], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70], [1, 20, 30]]


def sharp_checkpoint(path, case):
    """A random tiny transformers checkpoint with sharper distributions and a likely EOS (id 2), so that
    hypotheses end at different steps and near-ties (where fp32 noise could flip a choice) are rare."""
    ref = write_hf(path, case)
    with torch.no_grad():
        ref.lm_head.weight.mul_(8.0)
        ref.lm_head.weight[2] += 1.5
    ref.save_pretrained(path, safe_serialization=True)
    return ref, models.load(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return sharp_checkpoint(tmp_path_factory.mktemp("llama-gqa"), "llama-gqa")


def hf_beam_search(ref, prompt, **kwargs):
    """transformers on one prompt (no padding): generated token lists (up to EOS) and sequences_scores."""
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), do_sample=False, return_dict_in_generate=True, output_scores=True,
                           pad_token_id=0, **kwargs)
    seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        seqs.append(row[:row.index(2) + 1] if 2 in row else row)
    return seqs, out.sequences_scores.numpy()


def hypotheses(result, g):
    return [result.sequences[g, r, :n].tolist() for r, n in enumerate(result.lengths[g])]


@pytest.mark.parametrize("case", ["llama-gqa", "mistral"])   # mistral: a sliding window (16) < prompt + beam
def test_beam_search_matches_transformers(request, tmp_path, case):
    ref, model = request.getfixturevalue("llama") if case == "llama-gqa" else sharp_checkpoint(tmp_path, case)
    settings = [(False, 1.0, 4), (True, 0.5, 2), ("never", 1.0, 3), ("never", -0.5, 4)]
    lengths = set()
    for early_stopping, length_penalty, num_return in settings:
        got = engine.beam_search(model, HF_PROMPTS, num_beams=4, max_new_tokens=12, num_return=num_return,
                                 length_penalty=length_penalty, early_stopping=early_stopping)
        for g, p in enumerate(HF_PROMPTS):
            want, scores = hf_beam_search(ref, p, num_beams=4, num_return_sequences=num_return, max_new_tokens=12,
                                          length_penalty=length_penalty, early_stopping=early_stopping)
            assert hypotheses(got, g) == want
            np.testing.assert_allclose(got.scores[g], scores, rtol=0, atol=1e-4)
            lengths |= set(map(len, want))
    assert len(lengths) > 1   # hypotheses of several lengths were compared


def test_beam_groups_against_transformers(llama):
    # transformers' own group beam search is a Hub download now; what can be checked against it:
    # without a penalty every group of 2 beams is an independent beam search of width 2, and with one
    # the first group (penalised by no earlier group) still is.
    ref, model = llama
    kw = dict(num_beams=4, num_beam_groups=2, max_new_tokens=12, num_return=4)
    plain = engine.beam_search(model, HF_PROMPTS, **kw)
    diverse = engine.beam_search(model, HF_PROMPTS, diversity_penalty=0.3, **kw)
    new = penalised = 0
    for g, p in enumerate(HF_PROMPTS):
        want, scores = hf_beam_search(ref, p, num_beams=2, num_return_sequences=2, max_new_tokens=12)
        assert hypotheses(plain, g) == [want[0], want[0], want[1], want[1]]
        np.testing.assert_allclose(plain.scores[g], np.repeat(scores, 2), rtol=0, atol=1e-4)
        got = hypotheses(diverse, g)
        for seq, score in zip(want, scores):
            assert abs(diverse.scores[g, got.index(seq)] - score) < 1e-4
        new += sum(seq not in want for seq in got)
        # a score is (log-probability - 0.3 * (uses of tokens chosen by the first group)) / length
        for seq, score in zip(got, diverse.scores[g]):
            with torch.no_grad():
                logp = torch.log_softmax(ref(torch.tensor([p + seq])).logits[0, len(p) - 1:-1], -1)
            uses = (float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum()) - score * len(seq)) / 0.3
            assert abs(uses - round(uses)) < 1e-2 and round(uses) >= 0
            penalised += round(uses) > 0
    assert new >= len(HF_PROMPTS) and penalised >= 3   # the penalty found other hypotheses, and it shows
