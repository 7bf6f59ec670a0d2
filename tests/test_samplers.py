"""The sampler chain in the decode loop: exact sequences on a fake model, distributions, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import engine
from engine.step import decode_loop
import models
from sampling import Sampler, filters, sample
from sampling import sampler as sampler_lib
from sampling.sampler import Context, top_k

from fakes import Fake

FAKE = Fake()


def run(prompt, sampler, max_new_tokens=6, seed=0):
    out = engine.generate(FAKE, [prompt], max_new_tokens=max_new_tokens, sampler=sampler, seed=seed)
    return out.tokens[0, 0, :out.lengths[0, 0]].tolist()


# Each expected sequence is worked out by hand from TABLE (see the comments).
EXACT = [
    ("greedy", [0], Sampler.greedy(), [1, 2, 1, 2, 1, 2]),                # argmax of each row
    ("greedy to EOS", [3], Sampler.greedy(), [4]),
    ("top_k=1", [0], Sampler(top_k=1), [1, 2, 1, 2, 1, 2]),
    ("top_p=0.1", [0], Sampler(top_p=0.1), [1, 2, 1, 2, 1, 2]),
    ("min_p=0.9", [0], Sampler(min_p=0.9), [1, 2, 1, 2, 1, 2]),
    ("epsilon=0.45", [0], Sampler(epsilon=0.45), [1, 2, 1, 2, 1, 2]),
    # the most typical token (surprise closest to the entropy): row 0 -> 2, row 2 -> 3, row 3 -> 0
    ("typical=0.1", [0], Sampler(typical=0.1), [2, 3, 0, 2, 3, 0]),
    # seen tokens' log-probs x10: 0 -> 1, 1 -> 2, 2 -> 3 (1 and 0 seen), 3 -> EOS
    ("repetition_penalty=10", [0], Sampler(temperature=0, repetition_penalty=10.0), [1, 2, 3, 4]),
    # -1.2 once generated: row 2 prefers 3 (log .2 = -1.61) to 1 (log .6 - 1.2 = -1.71)
    ("presence_penalty=1.2", [0], Sampler(temperature=0, presence_penalty=1.2), [1, 2, 3, 4]),
    # -0.6 per occurrence: 1 and 2 win twice, then 3 beats 1 (-1.61 > -0.51 - 1.2)
    ("frequency_penalty=0.6", [0], Sampler(temperature=0, frequency_penalty=0.6), [1, 2, 1, 2, 3, 4]),
    # after 0 1 2 1 the bigram (1, 2) is banned: row 1 -> 3, then EOS
    ("no_repeat_ngram=2", [0], Sampler(temperature=0, no_repeat_ngram=2), [1, 2, 1, 3, 4]),
    ("logit_bias", [0], Sampler(temperature=0, logit_bias={3: 2.0}), [3, 4]),   # log .1 + 2 > log .5
    ("banned_tokens", [0], Sampler(temperature=0, banned_tokens=[1]), [2, 3, 4]),
    ("allowed_tokens", [0], Sampler(temperature=0, allowed_tokens=[0, 3, 4]), [3, 4]),
    # EOS suppressed for 3 tokens: 3 -> 0 -> 1 -> 2, then the 1/2 cycle
    ("min_new_tokens=3", [3], Sampler(temperature=0, min_new_tokens=3), [0, 1, 2, 1, 2, 1]),
    # mu starts at 2 tau = 1 bit: only p >= 1/2 survives, and mu grows by 0.05 a step
    ("mirostat", [0], Sampler(mirostat=0.5), [1, 2, 1, 2, 1, 2]),
    # a hand-written automaton: state 0 allows 3 (-> 1), state 1 allows 0 or 2 (-> 2), state 2 only EOS
    ("constraint", [0], Sampler(temperature=0, constraint=np.array([[-1, -1, -1, 1, -1],
                                                                    [2, -1, 2, -1, -1],
                                                                    [-1, -1, -1, -1, 2]])), [3, 0, 4]),
]


@pytest.mark.parametrize("name, prompt, sampler, want", EXACT, ids=[e[0] for e in EXACT])
def test_fake_model_exact_sequences(name, prompt, sampler, want):
    for seed in (0, 1, 2):
        assert run(prompt, sampler, seed=seed) == want


def test_mirostat_estimate_is_carried_in_the_loop_state():
    state = engine.start(FAKE, [[0]], capacity=6)
    state = engine.decode(FAKE, state, max_new_tokens=6, sampler=Sampler(mirostat=0.5, mirostat_lr=0.1))
    # each step the drawn token had proposal probability 1 (surprise 0): mu += 0.1 * 0.5
    np.testing.assert_allclose(state.mu, [1.0 + 6 * 0.05], rtol=1e-6)


DIST_LOGITS = np.log(np.array([0.30, 0.22, 0.15, 0.12, 0.08, 0.06, 0.04, 0.02, 0.007, 0.003]))
DISTRIBUTIONS = [
    ("temperature", Sampler(temperature=0.7), lambda x: filters.temperature(x, 0.7)),
    ("top_k", Sampler(top_k=4), lambda x: filters.top_k(x, 4)),
    ("top_p", Sampler(top_p=0.8), lambda x: filters.top_p(x, 0.8)),
    ("min_p", Sampler(min_p=0.2), lambda x: filters.min_p(x, 0.2)),
    ("typical", Sampler(typical=0.7), lambda x: filters.typical(x, 0.7)),
    ("epsilon", Sampler(epsilon=0.05), lambda x: filters.epsilon(x, 0.05)),
    ("eta", Sampler(eta=0.1), lambda x: filters.eta(x, 0.1)),
    ("chain", Sampler(temperature=1.5, top_k=6, top_p=0.9),
     lambda x: filters.top_p(filters.top_k(filters.temperature(x, 1.5), 6), 0.9)),
]


@pytest.mark.parametrize("name, sampler, reference", DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS])
def test_draws_follow_the_filtered_distribution(name, sampler, reference):
    draws = 20_000
    logits = jnp.broadcast_to(jnp.asarray(DIST_LOGITS, jnp.float32), (draws, len(DIST_LOGITS)))
    keys = jax.random.split(jax.random.key(1234), draws)
    ctx = Context(counts=jnp.zeros(logits.shape, jnp.int32), history=jnp.zeros((draws, 1), jnp.int32),
                  valid=jnp.zeros((draws, 1), bool), mu=jnp.full((draws,), jnp.nan), stop_ids=jnp.asarray([-1]),
                  fsm=jnp.zeros((draws,), jnp.int32))
    tokens = jax.jit(sample)(logits, sampler.broadcast((draws,)), keys, ctx).tokens
    expected = np.asarray(jax.nn.softmax(reference(jnp.asarray(DIST_LOGITS))), np.float64)
    expected /= expected.sum()
    kept = expected > 0
    observed = np.bincount(np.asarray(tokens), minlength=len(expected))
    assert observed[~kept].sum() == 0                       # never a removed token
    assert kept.sum() > 1                                   # a real distribution, not a point mass
    _, p = stats.chisquare(observed[kept], draws * expected[kept])
    assert p > 1e-3, (observed, draws * expected)


def _tiny():
    config = models.preset("tiny", eos_ids=())
    return models.Model(config, models.init_params(config, jax.random.key(0), std=0.2))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


PROMPTS = [[1, 2, 3], [9, 8, 7, 6, 5]]


def test_top_k_1_and_cold_temperature_are_greedy(tiny):
    greedy = engine.generate(tiny, PROMPTS, max_new_tokens=12, n=2).tokens
    for sampler in (Sampler(top_k=1), Sampler(temperature=1e-4)):
        np.testing.assert_array_equal(engine.generate(tiny, PROMPTS, max_new_tokens=12, n=2, sampler=sampler,
                                                      seed=3).tokens, greedy)


def test_off_values_change_no_draw(tiny):
    plain = engine.generate(tiny, PROMPTS, max_new_tokens=12, n=3, sampler=Sampler(), seed=4)
    # prompt 0's rollouts have every filter off; prompt 1's keep the filters in the chain
    off = Sampler(top_p=[1.0, 0.5], min_p=[0.0, 0.1], epsilon=[0.0, 0.01], top_k=[0, 5])
    assert {"top_p", "min_p", "epsilon", "top_k"} <= set(off.chain)
    same = engine.generate(tiny, PROMPTS, max_new_tokens=12, n=3, sampler=off, seed=4)
    np.testing.assert_array_equal(plain.tokens[0], same.tokens[0])
    np.testing.assert_allclose(plain.sample_logprobs[0], same.sample_logprobs[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain.sample_logprobs[1], same.sample_logprobs[1])


def test_rows_with_different_settings_share_one_compilation(tiny):
    first = Sampler(temperature=[0.0, 0.8], top_p=[0.9, 0.5], min_p=[0.05, 0.0], repetition_penalty=[1.1, 1.3])
    engine.generate(tiny, PROMPTS, max_new_tokens=8, n=2, sampler=first)
    before = decode_loop._cache_size()
    for temperature, top_p in [([1.0, 0.3], [0.95, 0.7]), ([0.5, 0.0], [0.2, 0.99])]:
        sampler = Sampler(temperature=temperature, top_p=top_p, min_p=[0.1, 0.02], repetition_penalty=[1.2, 1.0])
        out = engine.generate(tiny, PROMPTS, max_new_tokens=8, n=2, sampler=sampler)
    assert decode_loop._cache_size() == before
    # and each row really used its own settings: the greedy row equals plain greedy decoding
    alone = engine.generate(tiny, PROMPTS[1:], max_new_tokens=8, n=2, sampler=Sampler(
        temperature=0.0, top_p=0.99, min_p=0.02, repetition_penalty=1.0))
    np.testing.assert_array_equal(out.tokens[1], alone.tokens[0])


@pytest.mark.parametrize("settings, message", [
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.2}, "top_p must be in (0, 1]"),
    ({"min_p": -0.1}, "min_p must be in [0, 1]"),
    ({"typical": 0.0}, "typical must be in (0, 1]"),
    ({"epsilon": 1.0}, "epsilon must be in [0, 1)"),
    ({"eta": -0.5}, "eta must be in [0, 1)"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be in [1e-30, 1e30]"),
    ({"repetition_penalty": 1e-39}, "repetition_penalty must be in [1e-30, 1e30]"),   # logits / p overflowed: NaN
    ({"frequency_penalty": -3e38}, "frequency_penalty must be in [-1e30, 1e30]"),
    ({"no_repeat_ngram": 9}, "no_repeat_ngram must be in [0, 8]"),
    ({"min_keep": 0}, "min_keep must be >= 1"),
    ({"allowed_tokens": []}, "allowed_tokens is empty"),
    ({"banned_tokens": [-3]}, "banned_tokens token ids must be >= 0"),
    ({"top_q": 0.5}, "unknown sampler settings ['top_q']"),
    ({"top_p": [0.5, 2.0]}, "top_p must be in (0, 1], got [0.5, 2.0]"),
    ({"top_k": 2.5}, "top_k must be a whole number, got 2.5"),          # a cast would make it 2
    ({"min_keep": float("nan")}, "min_keep must be a whole number"),
    ({"temperature": "0.7"}, "temperature must be a number or an array of (real) numbers"),
    ({"temperature": 1 + 1j}, "temperature must be a number or an array of (real) numbers"),
    ({"banned_tokens": [3, 4.5]}, "banned_tokens must be a whole number"),
    ({"logit_bias": {3: float("nan")}}, "logit_bias biases must be finite or -inf (a ban)"),
    ({"logit_bias": {3: float("inf")}}, "logit_bias biases must be finite or -inf (a ban)"),   # NaN log-probs
    ({"logit_bias": {3: 1e39}}, "logit_bias biases is outside the range of float32"),         # inf once cast
    ({"logit_bias": 5}, "logit_bias must be a dict {token id: bias}, got 5"),
    # int32 casts would wrap: top_k=2**32 became 0 (off), token 2**32+5 became 5
    ({"top_k": 2 ** 32}, "top_k is outside the range of int32, got 4294967296"),
    ({"allowed_tokens": [2 ** 32 + 5]}, "allowed_tokens is outside the range of int32"),
    ({"allowed_tokens": [[1], [2, 3]]}, "allowed_tokens must be a number or an array of (real) numbers"),
    ({"constraint": np.array([[0.5, 0]])}, "constraint.table must be a whole number"),
    ({"constraint": "abc"}, "constraint.table must be a number or an array"),
    # the other token lists are checked with a constraint too (they were skipped)
    ({"constraint": np.zeros((1, 4), int), "allowed_tokens": []}, "allowed_tokens is empty"),
    ({"constraint": np.zeros((1, 4), int), "banned_tokens": [-5]}, "banned_tokens token ids must be >= 0"),
    # where a constraint allows only a stop token, min_new_tokens would leave nothing to draw (NaN, token 0)
    ({"constraint": np.zeros((1, 4), int), "min_new_tokens": 3}, "min_new_tokens cannot be combined with a constraint"),
    ({"top_k": []}, "top_k is an empty array"),                           # numpy's "zero-size array" before
    ({"top_p": []}, "top_p is an empty array"),
    # 1 - p was taken from these before they were checked: numpy's own errors
    ({"top_p": "abc"}, "top_p must be a number or an array of (real) numbers"),
    ({"top_p": 1 + 1j}, "top_p must be a number or an array of (real) numbers"),
    # bools were read as 0 and 1: temperature=True sampled at 1, banned_tokens=[True] banned token 1
    ({"temperature": True}, "temperature must be a number or an array of numbers, not bools, got True"),
    ({"top_k": [2, True]}, "top_k must be a number or an array of numbers, not bools"),
    ({"banned_tokens": [True]}, "banned_tokens must be a number or an array of numbers, not bools"),
    ({"logit_bias": {3: False}}, "logit_bias biases must be a number or an array of numbers, not bools"),
    # Mirostat's estimate became inf, then inf - inf = NaN (it silently started again)
    ({"mirostat": float("inf")}, "mirostat must be at most 1e30 in magnitude, got inf"),
    ({"mirostat_lr": 3e38}, "mirostat_lr must be at most 1e30 in magnitude"),
    # repetition_penalty=1e-30 made a seen token's biased logit inf: NaN log-probs, token 0
    ({"logit_bias": {5: 1e10}, "repetition_penalty": 1e-30}, "logit_bias biases must be at most 1e8"),
    # a key or a value that is not one number: an IndexError in check_vocab, a shape error inside jit
    ({"logit_bias": {(1, 2): 1.0, (3, 4): 2.0}}, "logit_bias must be a dict {token id: bias}"),
    ({"logit_bias": {1: [1.0, 2.0]}}, "logit_bias must be a dict {token id: bias}"),
])
def test_bad_settings_are_value_errors(settings, message):
    with pytest.raises(ValueError) as err:
        Sampler(**settings)
    assert message in str(err.value)
    jax_array = {k: jnp.asarray(v) for k, v in settings.items()
                 if k in sampler_lib.SETTINGS and isinstance(v, (int, float)) and abs(v) < 2 ** 31}
    if len(jax_array) == len(settings):           # as concrete jax arrays: they skipped every check
        with pytest.raises(ValueError) as err:
            Sampler(**jax_array)
        assert message.split(",")[0] in str(err.value)


def test_traced_top_k_is_a_clear_error():
    with pytest.raises(ValueError, match="top_k and min_keep cannot be traced"):     # ConcretizationTypeError before
        jax.jit(lambda k: Sampler(top_k=k).caps)(jnp.int32(3))
    jax.jit(lambda t: Sampler(temperature=t).values["temperature"])(jnp.float32(0.5))   # other settings may be


def test_traced_token_lists_and_bools_are_clear_errors():
    with pytest.raises(ValueError) as err:                  # a TracerArrayConversionError before
        jax.jit(lambda ids: Sampler(banned_tokens=ids).caps)(jnp.asarray([1, 2]))
    assert "banned_tokens cannot be traced (inside jit)" in str(err.value)
    with pytest.raises(ValueError) as err:                  # accepted before: a traced value is not checked
        jax.jit(lambda t: Sampler(temperature=t).caps)(jnp.asarray(True))
    assert "temperature must be a number or an array of numbers, not bools" in str(err.value)


@pytest.mark.parametrize("settings", [{"banned_tokens": []}, {"logit_bias": {}},
                                      {"banned_tokens": np.zeros(0, int), "logit_bias": {}, "top_p": 0.9}])
def test_empty_logit_bias_and_banned_tokens_filter_nothing(tiny, settings):
    """They crashed inside JAX (a ZeroDivisionError reshaping the ids to [rows, 0])."""
    plain = {k: v for k, v in settings.items() if k not in ("banned_tokens", "logit_bias")}
    assert Sampler(**settings).chain == Sampler(**plain).chain
    run = lambda s: engine.generate(tiny, PROMPTS, max_new_tokens=5, n=2, sampler=Sampler(**s), seed=2).tokens
    np.testing.assert_array_equal(run(settings), run(plain))


def test_logit_bias_applies_before_the_repetition_penalty_as_in_transformers():
    import torch
    from transformers.generation import logits_process as hf
    logits = jnp.asarray([[0.5, -1.0, 2.0, 1.0, 0.0]])
    history = jnp.asarray([[3, 1]])                            # tokens 3 and 1 already seen
    ctx = Context(counts=jnp.zeros((1, 5), jnp.int32).at[0, history[0]].set(1), history=history,
                  valid=jnp.ones((1, 2), bool), mu=jnp.full((1,), jnp.nan), stop_ids=jnp.asarray([-1]),
                  fsm=jnp.zeros((1,), jnp.int32))
    got = Sampler(repetition_penalty=1.5, logit_bias={3: -2.0, 1: 0.5}).process(logits, ctx)
    ids, want = torch.tensor(np.asarray(history)), torch.tensor(np.asarray(logits))
    want = hf.SequenceBiasLogitsProcessor({(3,): -2.0, (1,): 0.5})(ids, want)
    want = hf.RepetitionPenaltyLogitsProcessor(1.5)(ids, want)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)   # token 3: (1 - 2) * 1.5, not 1 / 1.5 - 2


def test_a_row_whose_filters_ban_every_token_ends_without_a_token(tiny):
    # allowed 5 and 6, each at most once: after both, nothing is left; the row drew token 0 with NaN log-probs
    for sampler in (Sampler(allowed_tokens=[5, 6], no_repeat_ngram=1),
                    Sampler(temperature=0.0, allowed_tokens=[5, 6], no_repeat_ngram=1)):
        out = engine.generate(tiny, PROMPTS, max_new_tokens=6, n=2, sampler=sampler, seed=1)
        assert out.lengths.tolist() == [[2, 2], [0, 0]]         # PROMPTS[1] holds 5 and 6: dead at once
        assert all(sorted(row[:2]) == [5, 6] for row in out.tokens[0].tolist())
        assert np.isfinite(out.logprobs).all() and np.isfinite(out.sample_logprobs).all()


def test_seeds_differ_in_every_bit():
    # jax.random.key(seed) keeps 32 bits: seeds 2**32 apart gave the same rollouts
    model = _tiny()
    draw = lambda seed: engine.generate(model, PROMPTS, max_new_tokens=6, n=2, sampler=Sampler(),
                                        seed=seed).tokens.tolist()
    outs = [draw(seed) for seed in (0, 2 ** 32, -2 ** 63, 7, 7 + 3 * 2 ** 32)]
    assert all(outs[i] != outs[j] for i in range(5) for j in range(i))
    assert draw(2 ** 32) == outs[1]


def test_sampler_of_the_wrong_shape_is_a_value_error(tiny):
    with pytest.raises(ValueError) as err:
        engine.generate(tiny, PROMPTS, max_new_tokens=4, sampler=Sampler(top_p=np.full((2, 1, 3), 0.5)))
    assert "does not fit rollouts (2, 1)" in str(err.value)


@pytest.mark.parametrize("settings, message", [
    ({"allowed_tokens": [3, 300]}, "allowed_tokens has token ids outside the vocabulary [0, 256): [300]"),
    ({"banned_tokens": [256]}, "banned_tokens has token ids outside the vocabulary [0, 256): [256]"),
    ({"logit_bias": {5: 1.0, 999: 2.0}}, "logit_bias has token ids outside the vocabulary [0, 256): [999]"),
    ({"constraint": np.zeros((1, 250), np.int32)}, "constraint.table has 250 columns; the model's vocabulary has 256"),
    # every token excluded: each drew token 0 with NaN log-probs
    ({"banned_tokens": list(range(256))}, "no token could be drawn"),
    ({"allowed_tokens": [1], "banned_tokens": [1]}, "no token could be drawn"),
    ({"allowed_tokens": [1, 2], "logit_bias": {1: -np.inf, 2: -np.inf}}, "no token could be drawn"),
    ({"constraint": np.where(np.arange(256) == 7, 0, -1)[None], "banned_tokens": [7]}, "no token could be drawn"),
    # a state the constraint reaches (0 -7-> 1) where every token it allows (8) is banned
    ({"constraint": np.stack([np.where(np.arange(256) == 7, 1, -1), np.where(np.arange(256) == 8, 1, -1)]),
      "banned_tokens": [8]}, "no token could be drawn in a state of the constraint"),
    # min_new_tokens masks the stop token 2 and nothing else is allowed: every logit -inf at the first step
    ({"allowed_tokens": [2], "min_new_tokens": 2}, "min_new_tokens suppresses the stop tokens"),
    ({"allowed_tokens": [2], "min_new_tokens": [[0], [1]]}, "min_new_tokens suppresses the stop tokens"),
])
def test_token_lists_outside_the_vocabulary_are_value_errors(tiny, settings, message):
    """Allowed ids the model cannot produce would silently give token 0 (every logit -inf)."""
    with pytest.raises(ValueError) as err:
        engine.generate(tiny, PROMPTS, max_new_tokens=4, sampler=Sampler(**settings), stop_tokens=[2])
    assert message in str(err.value)


@pytest.mark.parametrize("kind", ["normal", "ties", "-inf", "few finite"])
@pytest.mark.parametrize("shape, k, block", [((7, 5000), 9, 16), ((5, 300), 4, 32), ((64, 32000), 51, 32)])
def test_blocked_top_k_equals_lax_top_k(shape, k, block, kind):
    """The two-stage top-k returns what lax.top_k does: the same values and ids, ties by lower id."""
    rng = np.random.default_rng(k)
    x = rng.normal(size=shape).astype(np.float32)
    x = np.round(x) if kind == "ties" else x
    x[rng.random(shape) < {"-inf": 0.5, "few finite": 0.999}.get(kind, 0)] = -np.inf
    got, want = jax.jit(top_k, static_argnums=(1, 2))(jnp.asarray(x), k, block), jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("vocab", [300, 6000])          # 6000: top-k in two stages
def test_top_k_candidate_path_equals_the_full_filters(ties, vocab):
    """With top-k in the chain the later truncations run on the top-k candidates only; the
    result must equal the filters applied one after another over the whole vocabulary."""
    x = np.random.default_rng(0).normal(scale=2.0, size=(4, vocab)).astype(np.float32)
    x = np.round(x, 1) if ties else x          # rounding: ties at and across the top-k cut
    t, k, p, m = [0.8, 1.0, 1.3, 0.5], [5, 12, 40, 1], [0.9, 0.5, 0.99, 1.0], [0.05, 0.1, 0.0, 0.2]
    sampler = Sampler(temperature=t, top_k=k, top_p=p, min_p=m, typical=[0.9, 1.0, 0.8, 0.95], min_keep=2)
    got = np.asarray(sampler.broadcast((4,)).warp(jnp.asarray(x)))
    want = filters.temperature(jnp.asarray(x), jnp.asarray(t))
    want = filters.top_k(want, jnp.asarray(k), 2)
    want = filters.top_p(want, jnp.asarray(p), 2)
    want = filters.min_p(want, jnp.asarray(m), 2)
    want = np.asarray(filters.typical(want, jnp.asarray([0.9, 1.0, 0.8, 0.95]), 2))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)


def test_top_k_of_the_whole_vocabulary_keeps_every_token():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 50)).astype(np.float32))
    np.testing.assert_array_equal(Sampler(top_k=50).broadcast((2,)).warp(x), filters.temperature(x, 1.0))


def test_fast_argmax_equals_jnp_argmax_with_ties_and_inf():
    from sampling.sampler import argmax
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=(64, 1000)).astype(np.float32)     # many ties
    x[3] = -np.inf                                                  # a row with nothing left
    x[5, :500] = -np.inf
    x[7, 999] = np.inf
    np.testing.assert_array_equal(np.asarray(argmax(jnp.asarray(x))), np.argmax(x, axis=-1))
    y = rng.standard_normal((2, 3, 50)).astype(np.float32)          # any leading axes
    np.testing.assert_array_equal(np.asarray(argmax(jnp.asarray(y))), np.argmax(y, axis=-1))


def test_a_tiny_temperature_tends_to_greedy(tiny):
    """logits / 1e-10 once overflowed after XLA rounded the maximum in two fusions differently: every
    token -inf, token 0 drawn, infinite log-probs. The limit t -> 0 is greedy."""
    greedy = engine.generate(tiny, PROMPTS, max_new_tokens=8)
    for t in (1e-6, 1e-10, 1e-37):
        out = engine.generate(tiny, PROMPTS, max_new_tokens=8, n=2, sampler=Sampler(temperature=t))
        np.testing.assert_array_equal(out.tokens, np.repeat(greedy.tokens, 2, axis=1))
        assert np.all(out.sample_logprobs == 0.0)
