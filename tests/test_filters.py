"""Logit filters against the ``transformers`` processors of the same name, on random logits."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from sampling import filters

SHAPES = [(3, 50), (2, 4, 17)]


def random_logits(shape, seed, ties=False):
    x = np.random.default_rng(seed).normal(scale=2.0, size=shape).astype(np.float32)
    return np.round(x, 1) if ties else x         # rounding makes many exact ties


@pytest.fixture
def stable_torch(monkeypatch):
    """transformers with torch's sorts made stable.

    Among equal logits the order of torch's default sort (and topk) is unspecified, so
    transformers' kept set is arbitrary there; rollax uses the stable order. With ties, the
    comparison is against transformers' algorithm under that same, deterministic order.
    """
    sort = torch.sort

    def topk(x, k, dim=-1, largest=True, sorted=True):
        values, indices = sort(x, dim=dim, descending=largest, stable=True)
        return collections.namedtuple("topk", "values indices")(values[..., :k], indices[..., :k])

    monkeypatch.setattr(torch, "sort", lambda x, dim=-1, descending=False: sort(x, dim=dim, descending=descending,
                                                                                   stable=True))
    monkeypatch.setattr(torch, "topk", topk)


def hf_apply(processor, logits, input_ids=None):
    flat = logits.reshape(-1, logits.shape[-1])
    ids = torch.zeros((flat.shape[0], 1), dtype=torch.long) if input_ids is None else torch.tensor(input_ids)
    return processor(ids, torch.tensor(flat)).numpy().reshape(logits.shape)


def assert_same(got, want):
    got = np.asarray(got)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))   # the same kept set
    kept = np.isfinite(want)
    np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6, atol=1e-6)


CASES = [
    ("top_k", hf.TopKLogitsWarper, "top_k", [1, 3, 10]),
    ("top_p", hf.TopPLogitsWarper, "top_p", [0.05, 0.5, 0.9, 0.999]),
    ("min_p", hf.MinPLogitsWarper, "min_p", [0.0, 0.05, 0.3, 1.0]),
    ("typical", hf.TypicalLogitsWarper, "mass", [0.2, 0.5, 0.95]),
    ("epsilon", hf.EpsilonLogitsWarper, "epsilon", [1e-3, 0.03, 0.2]),
    ("eta", hf.EtaLogitsWarper, "epsilon", [1e-3, 0.03, 0.2]),
]


@pytest.mark.parametrize("name, cls, arg, values", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_truncation_matches_transformers(name, cls, arg, values, shape, ties, min_keep, request):
    if ties:
        request.getfixturevalue("stable_torch")
    for seed in range(3):
        logits = random_logits(shape, seed, ties)
        for value in values:
            want = hf_apply(cls(**{arg: value, "min_tokens_to_keep": min_keep}), logits)
            assert_same(getattr(filters, name)(jnp.asarray(logits), value, min_keep), want)


def test_per_row_values_in_one_call():
    logits = random_logits((4, 30), 0)
    p = np.array([0.2, 0.5, 0.9, 1.0], np.float32)
    got = np.asarray(filters.top_p(jnp.asarray(logits), p))
    for row in range(3):
        assert_same(got[row], hf_apply(hf.TopPLogitsWarper(float(p[row])), logits[row:row + 1])[0])
    np.testing.assert_array_equal(got[3], logits[3])          # top_p = 1 is off


@pytest.mark.parametrize("min_keep", [1, 2, 5])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_top_p_edge_rows_match_transformers(min_keep, backend, stable_torch, monkeypatch):
    """top_p finds its cut by bisection, not a sort: rows that stress it, under jit, with a
    per-row min_keep: a whole row tied, ties at the cut, -inf tokens, p so small that only
    min_keep survive, p just below 1, p = 1 (off), and a row of -inf only (no probabilities).
    Both loop forms: stopping once every row is done (CPU), a fixed trip count (elsewhere)."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    rng = np.random.default_rng(min_keep)
    logits = np.round(rng.normal(scale=2.0, size=(7, 40)), 0).astype(np.float32)
    logits[0] = 1.5
    logits[1, ::3] = -np.inf
    logits[2, :20] = logits[2, 20:] = np.arange(20, dtype=np.float32) / 4
    logits[6] = -np.inf
    ps = np.array([0.51, 0.9, 0.37, 1e-9, 0.999999, 1.0, 0.9], np.float32)   # no cut exactly at a float sum
    keep = np.full(7, min_keep)
    keep[1] = 1
    got = np.asarray(jax.jit(lambda *a: filters.top_p(*a))(jnp.asarray(logits), ps, keep))   # traced here, not cached
    for row in range(7):
        want = hf_apply(hf.TopPLogitsWarper(float(ps[row]), min_tokens_to_keep=int(keep[row])), logits[row:row + 1])
        assert_same(got[row:row + 1], want)
    assert np.isfinite(got[3]).sum() == min_keep             # p ~ 0: the min_keep most likely only


def test_top_p_cuts_exactly_at_a_float_sum_like_transformers():
    """Rows whose cumulative probability lands on 1 - p: ties of uniform rows (1 - float32(0.8) is one
    rounding below transformers' float32(0.2), and ten rounded 0.1s summed one above: nine kept, not
    eight), and a row whose nucleus ends on 0.5 where a second, differently rounded sum said "no cut"
    and dropped all but the top token (in a batch of 5 rows of a flat row, not in a batch of 4)."""
    ps, widths = np.round(np.arange(0.05, 1.0, 0.05), 2), range(2, 41)
    uniform = np.full((len(widths), len(ps), 40), -np.inf, np.float32)    # v tied tokens, the rest banned:
    for row, v in zip(uniform, widths):                                   # one call for every (v, p)
        row[:, :v] = 0
    got = np.isfinite(np.asarray(filters.top_p(jnp.asarray(uniform.reshape(-1, 40)), np.tile(ps, len(widths)))))
    want = [[np.isfinite(hf_apply(hf.TopPLogitsWarper(float(p)), np.zeros((1, v), np.float32))).sum() for p in ps]
            for v in widths]
    np.testing.assert_array_equal(got.sum(-1).reshape(len(widths), len(ps)), want)
    row = np.array([[-1.7917594909667969] * 3 + [-2.302584648132324, -3.4011950492858887, -1.7917596101760864,
                                                 -1.791759729385376, -3.401198387145996]], np.float32)
    assert_same(np.asarray(filters.top_p(jnp.asarray(row), 0.5)), hf_apply(hf.TopPLogitsWarper(0.5), row))
    flat = (np.random.default_rng(1).normal(size=(1, 1000)) * 1e-30).astype(np.float32)
    want = np.isfinite(hf_apply(hf.TopPLogitsWarper(0.05), flat)).sum()
    for batch in (1, 4, 5, 8):
        assert (np.isfinite(np.asarray(filters.top_p(jnp.asarray(np.repeat(flat, batch, 0)), 0.05))).sum(-1)
                == want).all(), batch
    from sampling import Sampler                             # the sampler passes 1 - p from the value it was given
    assert np.isfinite(np.asarray(Sampler(top_p=0.8).filter(jnp.zeros((2, 10))))).sum() == 2 * 8


@pytest.mark.parametrize("name, cls, arg, value", [("top_k", hf.TopKLogitsWarper, "top_k", 2),
                                                   ("min_p", hf.MinPLogitsWarper, "min_p", 0.5),
                                                   ("typical", hf.TypicalLogitsWarper, "mass", 0.5),
                                                   ("epsilon", hf.EpsilonLogitsWarper, "epsilon", 0.1),
                                                   ("eta", hf.EtaLogitsWarper, "epsilon", 0.1)])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_min_keep_per_row_under_jit(name, cls, arg, value, backend, stable_torch, monkeypatch):
    """min_keep (found by bisection, not a sort) per row, under jit, in both loop forms; ties.
    typical's cut is a bisection too."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    logits = random_logits((5, 40), 7, ties=True) * 4
    logits[4] = 0.5                                          # one whole-row tie
    keep = np.array([1, 3, 6, 40, 9])
    got = np.asarray(jax.jit(lambda x, k: getattr(filters, name)(x, value, k))(jnp.asarray(logits), keep))
    for row in range(5):
        assert_same(got[row:row + 1], hf_apply(cls(**{arg: value, "min_tokens_to_keep": int(keep[row])}),
                                               logits[row:row + 1]))
    assert np.isfinite(got[3]).all()                         # min_keep = the vocabulary: nothing dropped


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    logits = random_logits((3, 40), 1)
    ids = np.random.default_rng(2).integers(0, 40, size=(3, 12))
    seen = np.zeros((3, 40), bool)
    np.put_along_axis(seen, ids, True, axis=1)
    want = hf_apply(hf.RepetitionPenaltyLogitsProcessor(penalty), logits, ids)
    assert_same(filters.repetition_penalty(jnp.asarray(logits), penalty, seen), want)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_no_repeat_ngram_matches_transformers(n):
    rng = np.random.default_rng(n)
    ids = rng.integers(0, 6, size=(4, 31 - n))
    ids = np.concatenate([ids, ids[:, :n - 1]], axis=1)  # the last n-1 tokens occurred before: a ban
    logits = random_logits((4, 20), n)
    want = hf_apply(hf.NoRepeatNGramLogitsProcessor(n), logits, ids)
    # our history may hold padding / holes anywhere (here: left padding and a gap); they are skipped
    padded = np.concatenate([np.full((4, 5), 9), ids[:, :10], np.full((4, 3), 9), ids[:, 10:]], axis=1)
    valid = np.concatenate([np.zeros((4, 5)), np.ones((4, 10)), np.zeros((4, 3)), np.ones((4, 20))], axis=1) > 0
    assert_same(filters.no_repeat_ngram(jnp.asarray(logits), n, jnp.asarray(padded), jnp.asarray(valid)), want)
    assert np.sum(~np.isfinite(want)) > 0                # the case really bans something


@pytest.mark.parametrize("generated", [0, 3, 5, 8])
def test_min_new_tokens_matches_transformers(generated):
    logits = random_logits((2, 12), 0)
    prompt_len, minimum = 4, 5
    ids = np.ones((2, prompt_len + generated), np.int64)
    want = hf_apply(hf.MinNewTokensLengthLogitsProcessor(prompt_len, minimum, [2, 7]), logits, ids)
    got = filters.min_new_tokens(jnp.asarray(logits), minimum, jnp.full((2,), generated), jnp.asarray([2, 7]))
    assert_same(got, want)


def test_presence_frequency_bias_allowed_banned_by_hand():
    logits = jnp.zeros((2, 6))
    counts = jnp.asarray([[0, 2, 1, 0, 0, 0], [3, 0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(filters.presence_penalty(logits, 0.5, counts),
                                  [[0, -.5, -.5, 0, 0, 0], [-.5, 0, 0, 0, 0, -.5]])
    np.testing.assert_array_equal(filters.frequency_penalty(logits, jnp.asarray([1.0, 2.0]), counts),
                                  [[0, -2, -1, 0, 0, 0], [-6, 0, 0, 0, 0, -2]])
    np.testing.assert_array_equal(filters.logit_bias(logits, jnp.asarray([1, 4, 1]), jnp.asarray([1., -2., 3.])),
                                  [[0, 4, 0, 0, -2, 0]] * 2)
    inf = -np.inf
    np.testing.assert_array_equal(filters.allowed_tokens(logits, jnp.asarray([2, 3])),
                                  [[inf, inf, 0, 0, inf, inf]] * 2)
    np.testing.assert_array_equal(filters.banned_tokens(logits, jnp.asarray([0, 5, -1])),
                                  [[inf, 0, 0, 0, 0, inf]] * 2)


def test_mirostat_keeps_tokens_under_the_surprise_bound():
    probs = np.array([[0.5, 0.25, 0.125, 0.125]])          # surprises 1, 2, 3, 3 bits
    logits = jnp.asarray(np.log(probs), jnp.float32)
    kept = lambda mu: np.isfinite(np.asarray(filters.mirostat(logits, mu)))[0].tolist()
    assert kept(2.5) == [True, True, False, False]
    assert kept(0.1) == [True, False, False, False]          # the most likely always stays
    assert kept(3.0) == [True, True, True, True]


@pytest.mark.parametrize("name, off", [("top_p", 1.0), ("min_p", 0.0), ("epsilon", 0.0), ("eta", 0.0),
                                       ("typical", 1.0), ("top_k", 0)])
def test_off_values_change_nothing(name, off):
    logits = random_logits((3, 64), 5, ties=True)
    np.testing.assert_array_equal(getattr(filters, name)(jnp.asarray(logits), off), logits)
