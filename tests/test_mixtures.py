"""Logit mixtures inside the loop: exact sequences on hand-computable fakes, a step-by-step reference on real models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.step import decode_loop
from sampling.sampler import draw
import models
from sampling import Sampler, compile_regex, mixtures, rollout_keys

from fakes import EOS, Fake

# next-token probabilities by last token (token 4 is EOS), one table per fake model
EXPERT = np.array([[0.05, 0.40, 0.35, 0.15, 0.05],
                   [0.10, 0.05, 0.20, 0.15, 0.50],
                   [0.10, 0.10, 0.05, 0.30, 0.45],
                   [0.02, 0.09, 0.05, 0.04, 0.80],
                   [0.20, 0.20, 0.20, 0.20, 0.20]])
AMATEUR = np.array([[0.10, 0.60, 0.10, 0.10, 0.10],
                    [0.10, 0.05, 0.40, 0.05, 0.40],
                    [0.05, 0.05, 0.05, 0.05, 0.80],
                    [0.02, 0.01, 0.05, 0.02, 0.90],
                    [0.20, 0.20, 0.20, 0.20, 0.20]])
UNIFORM = np.full((5, 5), 0.2)


def run(fakes, combine, params, prompt=(0,), model_prompts=None, sampler=None, seed=0):
    out = engine.mix_generate([Fake(t) for t in fakes], [list(prompt)], combine=combine, params=params,
                              model_prompts=model_prompts, max_new_tokens=6, sampler=sampler, seed=seed)
    return out.tokens[0, 0, :out.lengths[0, 0]].tolist()


# Each expected sequence is worked out by hand from the tables (see the comments).
EXACT = [
    # log E/A on tokens with E >= 0.1 max E: row 0 -> 2 (ratio 3.5), row 2 -> 3 (6), row 3 -> 1 (9: 0.09 >= 0.08),
    # row 1 -> 3 (3); the expert alone would go 0 -> 1 -> EOS
    ("contrastive alpha=0.1", [EXPERT, AMATEUR], "contrastive", {"alpha": 0.1}, None, [2, 3, 1, 3, 1, 3]),
    # the cut at 0.5 max E leaves only EOS in row 3
    ("contrastive alpha=0.5", [EXPERT, AMATEUR], "contrastive", {"alpha": 0.5}, None, [2, 3, 4]),
    # uniform base + (log E - log A): the ratios without a cut, same argmaxes here
    ("proxy_tuning alpha=1", [UNIFORM, EXPERT, AMATEUR], "proxy_tuning", {"alpha": 1.0}, None, [2, 3, 1, 3, 1, 3]),
    ("dexperts alpha=0 is the base", [EXPERT, EXPERT, AMATEUR], "dexperts", {"alpha": 0.0}, None, [1, 4]),
    # 1.5 log E - 0.5 log A: row 0 -> 2 (-0.42 vs -1.12 for 1), row 2 -> 3, row 3 -> EOS (-0.28 vs -1.31 for 1)
    ("dexperts alpha=0.5", [EXPERT, EXPERT, AMATEUR], "dexperts", {"alpha": 0.5}, None, [2, 3, 4]),
    # one model, prompts [0] and [3]: step 1 scores 3 log E[0] - 2 log E[3] -> 2 (2.84 vs 2.07 for 1); from then on
    # both see the same last token, so the mixture is the conditional model: 2 -> EOS
    ("cfg scale=3", [EXPERT, EXPERT], "cfg", {"scale": 3.0}, [None, [[3]]], [2, 4]),
    ("cfg scale=1 is the conditional model", [EXPERT, EXPERT], "cfg", {"scale": 1.0}, [None, [[3]]], [1, 4]),
]


@pytest.mark.parametrize("name, tables, combine, params, model_prompts, want", EXACT, ids=[e[0] for e in EXACT])
def test_fake_models_exact_sequences(name, tables, combine, params, model_prompts, want):
    assert run(tables, combine, params, model_prompts=model_prompts) == want


def test_contrastive_cut_holds_for_sampled_rows():
    # sampling from the contrastive scores (alpha 0.5) can only pick plausible tokens: row 3 allows only EOS,
    # row 0 allows 1 or 2, row 2 allows 3 or EOS, row 1 allows 2 or EOS
    allowed = {0: {1, 2}, 1: {2, 4}, 2: {3, 4}, 3: {4}}
    for seed in range(8):
        seq = [0] + run([EXPERT, AMATEUR], "contrastive", {"alpha": 0.5}, sampler=Sampler(), seed=seed)
        assert seq[-1] == EOS
        assert all(b in allowed[a] for a, b in zip(seq, seq[1:])), seq


def test_mixture_with_a_constraint():
    # tokens read "a" "b" "c" "d", EOS; "[bd]{2}" with contrastive alpha 0.5: row 0 -> "b" (plausible: 1, 2);
    # row 1 has only EOS plausible, which the constraint forbids: the best allowed score wins, "d" (log 3 > log 1)
    c = compile_regex("[bd]{2}", ["a", "b", "c", "d", None], eos_id=EOS)
    assert run([EXPERT, AMATEUR], "contrastive", {"alpha": 0.5}, sampler=Sampler(temperature=0, constraint=c)) \
        == [1, 3, 4]
    for seed in range(4):
        seq = run([EXPERT, AMATEUR], "contrastive", {"alpha": 0.5}, sampler=Sampler(constraint=c), seed=seed)
        assert len(seq) == 3 and set(seq[:2]) <= {1, 3} and seq[2] == EOS


def test_combine_functions_by_hand():
    e, a = jnp.log(jnp.asarray(EXPERT[:1])), jnp.log(jnp.asarray(AMATEUR[:1]))
    got = mixtures.contrastive([e + 3.0, a - 1.0], {"alpha": 0.5})   # offsets cancel (log-softmax first)
    np.testing.assert_allclose(got[0, 1:3], np.log([0.40 / 0.60, 0.35 / 0.10]), rtol=1e-6)
    np.testing.assert_allclose(got[0, [0, 3, 4]], np.log([0.5, 1.5, 0.5]) - mixtures.IMPLAUSIBLE, rtol=1e-6)
    assert np.all(np.asarray(jax.nn.softmax(got)[0, [0, 3, 4]]) == 0)      # probability exactly 0
    got = mixtures.cfg([e, a], {"scale": 2.0})
    np.testing.assert_allclose(got, np.log(AMATEUR[:1]) + 2 * (np.log(EXPERT[:1]) - np.log(AMATEUR[:1])), rtol=1e-6)
    got = mixtures.proxy_tuning([a, e, a], {"alpha": jnp.asarray([0.5])})
    np.testing.assert_allclose(got, 0.5 * np.log(AMATEUR[:1]) + 0.5 * np.log(EXPERT[:1]), rtol=1e-5)


# ---------------------------------------------------------------------------- real models, step-by-step reference

def _tiny_config():
    return models.preset("tiny", vocab_size=64, eos_ids=(), bos_id=None)


def _tiny(seed):
    config = _tiny_config()
    return models.Model(config, models.init_params(config, jax.random.key(seed), std=0.3))


@pytest.fixture(scope="module")
def trio():
    return [_tiny(0), _tiny(1), _tiny(2)]


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


REFERENCE = {  # the mixtures written again in numpy: (models' log-probs) -> scores
    "contrastive": lambda lp, p: np.where(lp[0] >= lp[0].max() + np.log(p["alpha"]), lp[0] - lp[1], -np.inf),
    "proxy_tuning": lambda lp, p: lp[0] + p["alpha"] * (lp[1] - lp[2]),
    "cfg": lambda lp, p: lp[1] + p["scale"] * (lp[0] - lp[1]),
}


@jax.jit
def _padded_forward(params, tokens):
    return models.forward(_tiny_config(), params, tokens)[0]


def _full_forward(model, seq, width=32):
    """The last position's logits of a cache-free causal forward over ``seq`` (right padding changes nothing)."""
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(seq)] = seq
    return _padded_forward(model.params, jnp.asarray(tokens))[0, len(seq) - 1]


def reference(models_, prompts, combine, params, steps, sampled=False, seed=0):
    """Greedy (or sampled with the engine's key scheme) decoding with a full, cache-free forward every step."""
    keys = rollout_keys(seed, [prompts[0]], 1)
    seqs, out, lps = [list(p) for p in prompts], [], []
    for t in range(steps):
        lp = [_np_log_softmax(_full_forward(m, s)) for m, s in zip(models_, seqs)]
        scores = REFERENCE[combine](lp, params)
        if sampled:
            key = jax.random.fold_in(keys[0], t)[None]
            tok = int(draw(key, jnp.asarray(scores, jnp.float32)[None])[0])     # rollax's draw from these logits
        else:
            tok = int(np.argmax(scores))
        out.append(tok)
        lps.append(_np_log_softmax(scores)[tok])
        seqs = [s + [tok] for s in seqs]
    return out, lps


@pytest.mark.parametrize("combine, params, count, extra", [
    ("contrastive", {"alpha": 0.1}, 2, None),
    ("proxy_tuning", {"alpha": 0.7}, 3, None),
    ("cfg", {"scale": 2.0}, 2, [[9, 3, 5, 6, 7, 8, 1], [2]]),     # the unconditional model sees other prompts
])
def test_loop_equals_step_by_step_reference(trio, combine, params, count, extra):
    mods = trio[:count] if combine != "cfg" else [trio[0], trio[0]]
    prompts = [[5, 17, 3], [40, 41]]
    model_prompts = None if extra is None else [None, extra]
    out = engine.mix_generate(mods, prompts, combine=combine, params=params, model_prompts=model_prompts,
                              max_new_tokens=8)
    for g in range(2):
        each = [prompts[g] if extra is None or i == 0 else extra[g] for i in range(len(mods))]
        want, lps = reference(mods, each, combine, params, 8)
        assert out.tokens[g, 0].tolist() == want
        np.testing.assert_allclose(out.logprobs[g, 0], lps, rtol=1e-4, atol=1e-4)


def test_sampled_loop_equals_reference_with_the_same_keys(trio):
    prompts = [[5, 17, 3]]
    out = engine.mix_generate(trio[:2], prompts, combine="contrastive", params={"alpha": 0.05}, sampler=Sampler(),
                              max_new_tokens=8, seed=7)
    want, _ = reference(trio[:2], [prompts[0]] * 2, "contrastive", {"alpha": 0.05}, 8, sampled=True, seed=7)
    assert out.tokens[0, 0].tolist() == want


def test_per_prompt_and_per_rollout_params_equal_separate_calls(trio):
    prompts = [[5, 17, 3], [40, 41]]
    run = lambda scale, p=prompts, n=2: engine.mix_generate(trio[:2], p, combine="cfg", params={"scale": scale},
                                                            sampler=Sampler(), n=n, seed=3, max_new_tokens=6).tokens
    alone = [[run(s, [p], 2)[0] for s in (0.5, 3.0)] for p in prompts]      # [prompt][scale] -> [N, T]
    assert not np.array_equal(alone[0][0], alone[0][1])                     # the scale matters here
    per_prompt = run([0.5, 3.0])
    np.testing.assert_array_equal(per_prompt[0], alone[0][0])
    np.testing.assert_array_equal(per_prompt[1], alone[1][1])
    per_rollout = run([[0.5, 3.0], [3.0, 0.5]])
    np.testing.assert_array_equal(per_rollout[0], np.stack([alone[0][0][0], alone[0][1][1]]))
    np.testing.assert_array_equal(per_rollout[1], np.stack([alone[1][1][0], alone[1][0][1]]))


def test_new_mixture_params_reuse_the_compiled_loop(trio):
    engine.mix_generate(trio[:2], [[1, 2]], combine="cfg", params={"scale": 1.5}, max_new_tokens=4)
    before = decode_loop._cache_size()
    engine.mix_generate(trio[:2], [[1, 2]], combine="cfg", params={"scale": 3.0}, max_new_tokens=4)
    assert decode_loop._cache_size() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(combine="contrastive"), "the models' vocabularies differ (sizes [64, 5])"),
])
def test_vocab_mismatch_is_a_value_error(trio, kwargs, message):
    with pytest.raises(ValueError) as err:
        engine.mix_generate([trio[0], Fake(EXPERT)], [[1, 2]], max_new_tokens=4, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("count, kwargs, message", [
    (2, dict(combine="proxy_tuning"), "proxy_tuning mixes 3 models (base, expert, anti_expert), got 2"),
    (2, dict(combine="nope"), "unknown mixture 'nope'"),
    (2, dict(combine="cfg", params={"alpha": 1.0}), "unknown cfg parameters ['alpha']"),
    (2, dict(combine="contrastive", params={"alpha": 0.0}), "contrastive alpha must be in (0, 1]"),
    (2, dict(combine="contrastive", params={"amateur_temperature": 0.0}),
     "contrastive amateur_temperature must be a finite number > 0"),
    (2, dict(combine="cfg", params={"scale": float("nan")}),
     "cfg scale must be a finite number (or an array of them), got nan"),
    (2, dict(combine="cfg", model_prompts=[None]), "model_prompts has 1 entries for 2 models"),
    (2, dict(combine="cfg", params={"scale": [1.0, 2.0]}), "mixture parameter scale of shape (2,) does not fit "
                                                            "rollouts (1, 1)"),
    (2, dict(combine="cfg", params={"scale": "big"}),
     "cfg scale must be a finite number (or an array of them), got 'big'"),
    (2, dict(combine="contrastive", params={"alpha": [0.1, 0.0]}), "contrastive alpha must be in (0, 1]"),
    (1, dict(combine="cfg"), "a mixture needs at least two models, got 1"),
    # NaN log-probs: the scale times a log-prob difference overflowed to inf
    (2, dict(combine="cfg", params={"scale": 3e38}), "cfg scale must be at most 1e30 in magnitude"),
    # NaN log-probs and token ids past the vocabulary: the amateur's log-softmax overflowed (sampling.checks)
    (2, dict(combine="contrastive", params={"amateur_temperature": 1e-10}),
     "contrastive amateur_temperature must be at least 0.001 (or an array of them), got 1e-10"),
    (2, dict(combine="cfg", params={"scale": [[2.0, True]]}, n=2),       # a bool was read as 1
     "cfg scale must be a finite number (or an array of them), got [[2.0, True]]"),
])
def test_bad_mixtures_are_value_errors(trio, count, kwargs, message):
    with pytest.raises(ValueError) as err:
        engine.mix_generate(trio[:count], [[1, 2]], max_new_tokens=4, **kwargs)
    assert message in str(err.value)
