"""Speculative decoding: greedy rows equal plain greedy decoding token for token, sampled rows keep the
target distribution (chi-square), composition with rollouts, stops, pauses, rewind and select."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

import engine
import models
from sampling import Sampler
from tests.conftest import write_hf
from tests.fakes import TABLE, Fake

K = 2                                              # lookahead of every test: one compiled block shape
PROMPTS = [[1, 5, 9, 33, 42], [1, 7, 7, 60, 61, 62, 7, 60]]


def checkpoint(path, case, seed):
    """A random tiny transformers checkpoint with sharp distributions (few near-ties fp32 noise could flip),
    its vocabulary even, so that a tensor axis of 2 splits it."""
    ref = write_hf(path, case, seed=seed, vocab_size=96)
    with torch.no_grad():
        ref.lm_head.weight.mul_(8.0)
    ref.save_pretrained(path, safe_serialization=True)
    return models.load(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("llama"), "llama-gqa", 0)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2", 1)


def holes(state):
    """Rollout slots each row left empty [B] (rejected proposals)."""
    return int(state.cache.index) - np.asarray(state.cache.length)


def search(model, tracks, stops, steps, draft=None):
    """decode to a pause or stop, continue, rewind every rollout to 3 tokens, keep rollout 1 twice, continue:
    the states' rollouts after each call."""
    calls, m = 3, 6
    state = engine.start(model, PROMPTS, capacity=calls * m + 1, n=2, tracks=tracks,
                         slots=calls * ((K + 1) * m + 1) + 1)
    go = lambda s: engine.decode(model, s, max_new_tokens=m, stop_tokens=stops, step_tokens=steps, tracks=tracks,
                                 draft=draft, lookahead=K)
    out = []
    for verb in (None, "decode", "rewind"):
        if verb == "rewind":
            cut = np.minimum(np.asarray(state.cache.length).reshape(2, 2), 3)
            state = engine.select(engine.rewind(model, state, cut, tracks=tracks), [[1, 1], [1, 1]])
        state = go(state)
        r = engine.rollouts(state)
        out.append((r.tokens[..., :r.lengths.max()], r.lengths, np.asarray(state.done), np.asarray(state.paused),
                    r.logprobs[..., :r.lengths.max()]))
    return out, state


def test_greedy_with_a_draft_is_greedy_token_for_token_through_stops_pauses_rewind_select(llama, qwen2):
    probe, _ = search(llama, {}, [95], [94])                    # the same compiled programs as below
    stops, steps = [int(probe[0][0][0, 0, 4])], [int(probe[0][0][1, 1, 2])]
    plain, _ = search(llama, {}, stops, steps)
    assert any(call[2].any() for call in plain) and any(call[3].any() for call in plain)   # stops and pauses
    got, state = search(llama, {"draft": qwen2}, stops, steps, draft="draft")   # a random draft: low acceptance
    for (a, la, da, pa, lpa), (b, lb, db, pb, lpb) in zip(plain, got):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(lb, la)
        np.testing.assert_array_equal(db, da)
        np.testing.assert_array_equal(pb, pa)
        np.testing.assert_allclose(lpb, lpa, rtol=1e-4, atol=1e-4)
    assert holes(state).min() > 2 * K                              # many proposals were rejected


def test_a_copy_of_the_target_as_its_draft_accepts_everything(qwen2):
    m = 12
    plain = engine.generate(qwen2, PROMPTS, max_new_tokens=m)
    state = engine.start(qwen2, PROMPTS, capacity=m, tracks={"d": qwen2}, slots=(K + 1) * m + 1)
    state = engine.decode(qwen2, state, max_new_tokens=m, tracks={"d": qwen2}, draft="d", lookahead=K)
    spec = engine.rollouts(state)
    np.testing.assert_array_equal(spec.tokens[..., :m], plain.tokens)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    done = np.asarray(state.done)
    assert np.all(holes(state)[~done] <= K)           # only the last block's tokens past the budget are holes
    assert int(state.cache.index) <= m + K + 1        # a policy forward per K+1 tokens


def test_on_a_mesh_with_the_vocabulary_split_the_rollouts_are_one_device_s(llama, qwen2):
    """data=4 x tensor=2: the policy's and the draft's heads split over the vocabulary (the accept test
    reads whole distributions, gathered where the compiler needs them); same seed, same rollouts."""
    import sharding
    mesh = sharding.make_mesh(data=4, tensor=2)
    assert "tensor" in str(llama.shard(mesh).params["lm_head"].sharding.spec)
    run = lambda mesh: engine.generate(llama, PROMPTS, max_new_tokens=8, n=2, sampler=Sampler(), seed=3, draft=qwen2,
                                       lookahead=K, mesh=mesh)
    one, split = run(None), run(mesh)
    np.testing.assert_array_equal(split.tokens, one.tokens)
    np.testing.assert_allclose(split.logprobs, one.logprobs, rtol=1e-4, atol=1e-4)


# --- distributions: the fake model (next token from the last one alone), many rows in one batch -------

DRAFT = Fake(table=np.array([[0.30, 0.10, 0.20, 0.30, 0.10],     # far from TABLE: many rejections
                             [0.40, 0.30, 0.10, 0.10, 0.10],
                             [0.10, 0.10, 0.60, 0.10, 0.10],
                             [0.20, 0.20, 0.20, 0.20, 0.20],
                             [0.20, 0.20, 0.20, 0.20, 0.20]]))
ROWS, STEPS = 3000, 3


def joint(r, rows):
    """Counts of each row's first STEPS tokens (shorter sequences, after EOS, padded with 5)."""
    tokens = np.where(np.arange(STEPS) < r.lengths.reshape(-1, 1), r.tokens.reshape(-1, r.tokens.shape[-1])[:, :STEPS], 5)
    codes = (tokens[rows] * np.array([36, 6, 1])).sum(axis=1)
    return np.bincount(codes, minlength=216)


def chi2_p(a, b):
    keep = (a + b) > 0
    return chi2_contingency(np.stack([a[keep], b[keep]]))[1]


@pytest.fixture(scope="module")
def draws():
    """Plain and speculative draws (a model draft, prompt lookup) of ROWS rollouts: the first half with
    temperature + top-p, the second with a presence and a repetition penalty."""
    half = ROWS // 2
    sampler = Sampler(temperature=np.repeat([[0.7, 1.0]], half, axis=1), top_p=np.repeat([[0.8, 1.0]], half, axis=1),
                      presence_penalty=np.repeat([[0.0, 1.5]], half, axis=1),
                      repetition_penalty=np.repeat([[1.0, 1.3]], half, axis=1))
    run = lambda seed, **kw: engine.generate(Fake(), [[0, 1, 3]], max_new_tokens=STEPS, n=ROWS, sampler=sampler,
                                             seed=seed, lookahead=K, **kw)
    return dict(plain=run(1), model=run(2, draft=DRAFT), lookup=run(3, draft="prompt_lookup"),
                draft_only=engine.generate(DRAFT, [[0, 1, 3]], max_new_tokens=STEPS, n=ROWS, sampler=sampler, seed=4))


@pytest.mark.parametrize("half", ["top_p", "penalties"])
@pytest.mark.parametrize("draft", ["model", "lookup"])
def test_sampled_rows_keep_the_target_distribution(draws, half, draft):
    rows = slice(0, ROWS // 2) if half == "top_p" else slice(ROWS // 2, ROWS)
    plain = joint(draws["plain"], rows)
    assert chi2_p(joint(draws[draft], rows), plain) > 1e-3
    assert chi2_p(joint(draws["draft_only"], rows), plain) < 1e-6       # the test tells the draft's apart


def test_log_probs_are_the_target_s(draws):
    """``logprobs``: the policy's before filters; ``sample_logprobs``: the filtered target's (on the penalty
    rows' first token, by hand: the prompt's tokens 0, 1, 3 have their negative logits scaled by 1.3)."""
    r = draws["model"]
    tokens, lp = r.tokens[0, :, :STEPS], r.logprobs[0, :, :STEPS]
    prev = np.concatenate([np.full((ROWS, 1), 3), tokens[:, :-1]], axis=1)
    real = np.arange(STEPS) < r.lengths[0][:, None]
    np.testing.assert_allclose(lp[real], np.log(TABLE[prev, tokens])[real], rtol=1e-5)
    logits = np.log(TABLE[3]) * np.array([1.3, 1.3, 1.0, 1.3, 1.0])
    want = logits - np.log(np.exp(logits).sum())
    half = slice(ROWS // 2, ROWS)
    np.testing.assert_allclose(r.sample_logprobs[0, half, 0], want[tokens[half, 0]], rtol=1e-5)


def test_rows_of_one_batch_accept_different_counts():
    state = engine.start(Fake(), [[0, 1, 3]], capacity=6, n=64, tracks={"d": DRAFT}, slots=(K + 1) * 6 + 1)
    state = engine.decode(Fake(), state, max_new_tokens=6, sampler=Sampler(), tracks={"d": DRAFT}, draft="d",
                          lookahead=K, stop_tokens=None)
    assert len(set(holes(state).tolist())) > 3


# --- bad input ------------------------------------------------------------------------------------

def tokenizer(pieces):
    return SimpleNamespace(token_bytes=lambda: [p.encode() for p in pieces])


@pytest.mark.parametrize("kwargs, message", [
    (dict(draft=SimpleNamespace(config=models.preset("tiny", vocab_size=6, layers=1), forward=Fake.forward)),
     "the draft has a vocabulary of 6 tokens; the policy's has 5"),
    (dict(draft=Fake(reward=True)), "draft must be a language model"),
    (dict(draft="ngram"), "draft must be a language model"),
    (dict(draft="prompt_lookup", lookahead=0), "lookahead must be an integer >= 1, got 0"),
])
def test_bad_generate_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        engine.generate(Fake(), [[0, 1]], max_new_tokens=4, **kwargs)
    assert message in str(e.value)


def test_a_draft_with_another_tokenizer_is_refused():
    ours = SimpleNamespace(**{k: getattr(Fake(), k) for k in ("config", "params", "forward")},
                           tokenizer=tokenizer("abcde"))
    theirs = SimpleNamespace(**vars(ours) | {"tokenizer": tokenizer("abcdx")})
    with pytest.raises(ValueError) as e:
        engine.generate(ours, [[0, 1]], max_new_tokens=4, draft=theirs)
    assert "the draft's tokenizer differs from the policy's" in str(e.value)


def test_bad_decode_arguments_are_value_errors():
    tracks = {"d": DRAFT, "rm": Fake(reward=True)}
    with_tracks = engine.start(Fake(), [[0, 1]], capacity=8, tracks=tracks, slots=20)
    alone = engine.start(Fake(), [[0, 1]], capacity=8, slots=20)
    cases = [(with_tracks, dict(draft="rm"), "track 'rm' is a reward model"),
             (with_tracks, dict(draft="x"), "unknown track 'x'"),
             (with_tracks, dict(draft="d"), "speculative decoding feeds only its draft; this state also has tracks ['rm']"),
             (alone, dict(lookahead=2, max_new_tokens=8), "0 of the rollouts' 20 cache slots are used; 25 more do not fit"),
             (alone, dict(lookahead=19), "lookahead=19 may leave holes"),
             (alone, dict(mixture=engine.Mixture("contrastive", ("d",))), "speculative decoding does not take a mixture")]
    for state, kwargs, message in cases:
        defaults = dict(max_new_tokens=1, draft="prompt_lookup", tracks=tracks if state is with_tracks else None)
        with pytest.raises(ValueError) as e:
            engine.decode(Fake(), state, **defaults | kwargs)
        assert message in str(e.value)


def test_readme_example_runs():
    from tests.test_docs import blocks
    [code] = [b for b in blocks("README.md") if 'draft="prompt_lookup"' in b]
    ns = {}
    exec(code, ns)
    assert ns["fast"].tokens.shape == (2, 1, 32) and (ns["fast"].lengths > 8).all()
