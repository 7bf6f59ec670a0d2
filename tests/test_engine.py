"""The generation engine on a random tiny model: cache correctness, reproducibility, bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
import models
from engine import KVCache, PrefillCache
from engine.decode import decoding, left_pad
from engine.step import decode_loop, decode_step
from sampling import Sampler


@pytest.fixture(scope="module")
def tiny():
    config = models.preset("tiny", eos_ids=(), bos_id=None)   # no EOS: every row runs full length
    return models.Model(config, models.init_params(config, jax.random.key(0), std=0.2))


def test_prefill_then_decode_equals_full_forward(tiny):
    config, params = tiny.config, tiny.params
    rng = np.random.default_rng(0)
    lengths = [5, 11, 3]
    extra = 6
    full = [rng.integers(0, config.vocab_size, size=n + extra).tolist() for n in lengths]
    # prefill the prompts (left-padded) then feed the next tokens one at a time
    tokens, start = left_pad([f[:n] for f, n in zip(full, lengths)], config.pad_id, 16)
    prefix = PrefillCache.create(config, len(full), 16, start)
    logits, prefix = models.forward(config, params, jnp.asarray(tokens), None, prefix)
    cache = KVCache.from_prefill(prefix, 1, extra)
    steps = [logits[:, -1]]
    for t in range(extra - 1):
        nxt = jnp.asarray([[f[n + t]] for f, n in zip(full, lengths)])
        logits, cache = models.forward(config, params, nxt, None, cache)
        steps.append(logits[:, -1])
    for row, (f, n) in enumerate(zip(full, lengths)):
        want, _ = models.forward(config, params, jnp.asarray([f]))
        got = np.stack([s[row] for s in steps])
        np.testing.assert_allclose(got, want[0, n - 1:n - 1 + extra], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,blocks", [("cpu", [24, 24, 22]), ("gpu", [70])])
def test_rollout_cache_blocks_equal_full_forward(tiny, monkeypatch, backend, blocks):
    """Decode steps and multi-token writes that cross the rollout cache's buffer boundaries (CPU:
    the unwritten buffers are skipped; elsewhere one buffer) give the logits of one full forward."""
    monkeypatch.setattr(engine.cache.jax, "default_backend", lambda: backend)
    config, params = tiny.config, tiny.params
    full = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 4 + 60)).tolist()
    tokens, start = left_pad([f[:4] for f in full], config.pad_id, 4)
    _, prefix = models.forward(config, params, jnp.asarray(tokens), None, PrefillCache.create(config, 2, 4, start))
    cache = KVCache.from_prefill(prefix, 1, 70)
    assert [x.shape[2] for x in cache.k[0]] == blocks and cache.size == 70
    chunks = [1] * 30 + [20] + [1] * 10                   # one token at slot 24, slots 30..49 across 48
    step = jax.jit(lambda *a: models.forward(config, *a))  # as the engine runs it (eager: ~50 s); traced here
    got, at = [], 4
    for t in chunks:
        logits, cache = step(params, jnp.asarray([f[at:at + t] for f in full]), None, cache)
        got.append(logits)
        at += t
    want, _ = models.forward(config, params, jnp.asarray(full))
    # jitted steps and the eager full forward round differently (up to ~1.5e-5 on logits of
    # magnitude ~3); a step that misses a cache slot moves its logits by ~0.1 or more
    np.testing.assert_allclose(np.concatenate(got, axis=1), want[:, 4:], rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("size", [1, 31, 32, 33, 100, 128, 257, 1024, 5000])
def test_block_sizes_cover_the_slots(size):
    sizes = engine.cache.block_sizes(size)
    assert sum(sizes) == size and 1 <= len(sizes) <= 8 and min(sizes) >= 1
    assert len(sizes) == min(8, -(-size // 32)) and len(set(sizes[:-1])) <= 1


def test_sampled_rollout_is_independent_of_batch(tiny):
    sampler = Sampler(temperature=1.0, top_p=0.95)
    prompt = [3, 17, 42, 9]
    others = [[1] * 30, [200, 201], [7, 7, 7, 7, 7, 7, 7]]
    alone = engine.generate(tiny, [prompt], max_new_tokens=24, sampler=sampler, n=3, seed=7)
    batch = engine.generate(tiny, others[:2] + [prompt] + others[2:], max_new_tokens=24, sampler=sampler,
                            n=3, seed=7)
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[2])
    np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[2], rtol=1e-5, atol=1e-6)
    # rollouts of one prompt differ from each other, and another seed changes them
    assert not np.array_equal(alone.tokens[0, 0], alone.tokens[0, 1])
    other = engine.generate(tiny, [prompt], max_new_tokens=24, sampler=sampler, n=3, seed=8)
    assert not np.array_equal(alone.tokens, other.tokens)


def test_logprobs_are_model_and_proposal_logprobs(tiny):
    sampler = Sampler(temperature=0.7, top_k=5)
    out = engine.generate(tiny, [[4, 5, 6]], max_new_tokens=4, sampler=sampler, n=2, seed=1)
    toks = np.asarray(out.tokens[0, 0])
    seq = jnp.asarray([[4, 5, 6] + toks.tolist()])
    logits, _ = models.forward(tiny.config, tiny.params, seq)
    logits = np.asarray(logits[0, 2:6], np.float64)
    want = logits[np.arange(4), toks] - np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(out.logprobs[0, 0], want, rtol=1e-4, atol=1e-5)
    scaled = logits / 0.7
    kth = np.sort(scaled, -1)[:, -5][:, None]
    kept = np.where(scaled >= kth, scaled, -np.inf)
    want_q = kept[np.arange(4), toks] - np.log(np.exp(kept).sum(-1))
    np.testing.assert_allclose(out.sample_logprobs[0, 0], want_q, rtol=1e-4, atol=1e-5)


def test_stop_tokens_end_rows_and_pad_after(tiny):
    greedy = engine.generate(tiny, [[4, 5, 6]], max_new_tokens=12)
    first = int(greedy.tokens[0, 0, 3])
    out = engine.generate(tiny, [[4, 5, 6]], max_new_tokens=12, stop_tokens=[first])
    n = int(out.lengths[0, 0])
    assert n <= 4 and int(out.tokens[0, 0, n - 1]) == first
    np.testing.assert_array_equal(out.tokens[0, 0, :n], greedy.tokens[0, 0, :n])
    assert np.all(np.asarray(out.tokens[0, 0, n:]) == tiny.config.pad_id)
    assert np.all(np.asarray(out.logprobs[0, 0, n:]) == 0)


def test_stream_yields_what_generate_returns(tiny):
    sampler = Sampler(temperature=1.0)
    streamed = list(engine.stream(tiny, [9, 8, 7], max_new_tokens=10, sampler=sampler, seed=3))
    out = engine.generate(tiny, [[9, 8, 7]], max_new_tokens=10, sampler=sampler, seed=3)
    assert streamed == np.asarray(out.tokens[0, 0]).tolist()
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        engine.stream(tiny, [9, 8, 7], max_new_tokens=0)              # at the call, not at the first token


def test_mixed_settings_rows_are_each_their_own_sampler(tiny):
    prompts = [[1, 2, 3], [4, 5, 6]]
    mixed = Sampler(temperature=[0.0, 1.0], top_k=[0, 3])
    out = engine.generate(tiny, prompts, max_new_tokens=8, sampler=mixed, seed=5)
    greedy = engine.generate(tiny, prompts[:1], max_new_tokens=8)
    sampled = engine.generate(tiny, prompts[1:], max_new_tokens=8, sampler=Sampler(temperature=1.0, top_k=3),
                              seed=5)
    np.testing.assert_array_equal(out.tokens[0], greedy.tokens[0])
    np.testing.assert_array_equal(out.tokens[1], sampled.tokens[0])


def test_prompt_buckets_limit_compilations(tiny):
    engine.generate(tiny, [[1, 2, 3]], max_new_tokens=5)
    before = decode_loop._cache_size()
    for n in (2, 7, 13, 16):      # all in the 16-token bucket
        engine.generate(tiny, [list(range(1, n + 1))], max_new_tokens=5)
    assert decode_loop._cache_size() == before


@pytest.mark.parametrize("kwargs, prompts, message", [
    ({}, [[]], "prompt 0 is empty"),
    ({}, [], "non-empty list"),
    ({}, [[1, 2, 999]], "outside the vocabulary"),
    ({}, [[-1, 2]], "outside the vocabulary"),
    ({}, [list(range(1, 200)) * 3], "maximum length"),
    ({"max_new_tokens": 0}, [[1, 2]], "max_new_tokens must be an integer >= 1, got 0"),
    ({"max_new_tokens": 2.5}, [[1, 2]], "max_new_tokens must be an integer >= 1, got 2.5"),
    ({"n": 0}, [[1, 2]], "n must be an integer >= 1"),
    ({"seed": 1.5}, [[1, 2]], "seed must be an integer, got 1.5"),
    ({"first_rollout": -1}, [[1, 2]], "first_rollout must be an integer >= 0"),
    ({}, [[1.5, 2]], "prompt 0 must hold integer token ids"),
    # one prompt of ids given unwrapped was read as one-token prompts [2] and [3]
    ({}, [2, 3], "prompt 0 is a single value (2); prompts is a list of prompts"),
    ({}, [np.array(2)], "prompt 0 is a single value"),
    ({"stop_tokens": [999]}, [[1, 2]], "stop_tokens must be token ids in [0, "),
    ({"stop_tokens": [-2]}, [[1, 2]], "stop_tokens must be token ids in [0, "),
    ({"sampler": Sampler(temperature=[0.5, 0.6, 0.7])}, [[1, 2], [3]], "shape (3,) does not fit rollouts (2, 1)"),
    ({}, ["text"], "need a model with a tokenizer"),
    ({"seed": 2 ** 64}, [[1, 2]], "seed must fit in 64 bits"),
    # rollout numbers are uint32: past 2**32 they would repeat rollout 0, 1, .. silently
    ({"first_rollout": 2 ** 32 - 1, "n": 2}, [[1, 2]], "rollouts are numbered below 2**32"),
    ({"n": 2 ** 40}, [[1, 2]], "rollouts are numbered below 2**32"),
    ({"n": 2 ** 30}, [[1, 2], [3]], "more rows than int32 indexing allows"),
    # 550 GiB of logits and counts: refused at once (it once swapped the machine to a standstill)
    ({"n": 2 ** 28}, [[1, 2]], "of decoding state (KV cache, logits); the memory is"),
    ({}, [[[1, 2]]], "prompt 0 must be a flat list of token ids"),      # was flattened to [1, 2]
    ({"stop_tokens": [[1], [2, 3]]}, [[1, 2]], "stop_tokens must be token ids in [0, "),
    ({"sampler": Sampler(banned_tokens=list(range(256)))}, [[1, 2]], "no token could be drawn"),
])
def test_bad_input_is_a_clear_value_error(tiny, kwargs, prompts, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError) as err:
        engine.generate(tiny, prompts, **kwargs)
    assert message in str(err.value)


def test_a_cache_without_position_bound_still_works(tiny):
    """``position_bound`` is optional in the cache protocol: without it the angles come from the positions."""
    class Plain:                                   # PrefillCache's protocol, less position_bound
        def __init__(self, cache):
            self.cache = cache
        def positions(self, t):
            return self.cache.positions(t)
        def attend(self, layer, q, k, v, window=None, **opts):
            out, cache = self.cache.attend(layer, q, k, v, window, **opts)
            return out, Plain(cache)
        def advance(self, t):
            return Plain(self.cache.advance(t))
    cache = PrefillCache.create(tiny.config, 2, 8, [0, 3])
    tokens = jnp.asarray([[3, 4, 5, 6, 7, 8, 9, 10], [0, 0, 0, 6, 7, 8, 9, 10]])
    want, _ = models.forward(tiny.config, tiny.params, tokens, None, cache)
    got, _ = models.forward(tiny.config, tiny.params, tokens, None, Plain(cache))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_forward_refuses_tokens_without_a_batch_axis(tiny):
    with pytest.raises(ValueError, match=r"tokens must be an int array \[batch, time\], got shape \(3,\)"):
        models.forward(tiny.config, tiny.params, jnp.asarray([1, 2, 3]))


@pytest.mark.parametrize("settings, message", [
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_k": -1}, "top_k must be >= 0"),
])
def test_bad_sampler_settings_are_value_errors(settings, message):
    with pytest.raises(ValueError) as err:
        Sampler(**settings)
    assert message in str(err.value)


def test_cache_is_donated_to_decode_step(tiny):
    state = engine.start(tiny, [[1, 2, 3]], capacity=4)
    old = state.cache.k
    how = decoding(tiny, state)
    new = decode_step((("", tiny.forward, tiny.config),), (tiny.params,), state, how)
    assert all(x.is_deleted() for x in jax.tree.leaves(old)) and int(new.cache.index) == 1
    assert dataclasses.is_dataclass(new.cache)


def test_preset_variants_re_derive_head_dim():
    assert models.preset("tiny").head_dim == 16
    assert models.preset("tiny", hidden=512, heads=8).head_dim == 64
    assert models.preset("tiny", hidden=512, heads=8, head_dim=32).head_dim == 32
    assert models.preset("llama-3.2-1b", layers=2).head_dim == 64


@pytest.mark.parametrize("call, message", [
    (lambda m, s: engine.append(m, s, 5), "tokens must be a token-id list, a string, or a nested list"),
    (lambda m, s: engine.append(m, s, [1.5]), "tokens must be one list for every rollout or a nested list"),
    (lambda m, s: engine.select(s, [[0, 1], [0]]), "indices must have shape [G=1, M>=1]"),
    (lambda m, s: engine.stream(m, [[1, 2], [3, 4]], max_new_tokens=2), "prompt 0 must be a flat list"),
    (lambda m, s: engine.mix_generate([m, m], None, combine="cfg", max_new_tokens=2), "must be non-empty lists"),
    (lambda m, s: engine.mix_generate([m, m], [[1, 2]], combine="cfg", max_new_tokens=2, params={"scale": [1.0, 2.0]}),
     "mixture parameter scale of shape (2,) does not fit rollouts (1, 1)"),
])
def test_search_primitives_refuse_malformed_arguments(tiny, call, message):
    state = engine.start(tiny, [[1, 2, 3]], capacity=8, n=2)
    with pytest.raises(ValueError) as err:
        call(tiny, state)
    assert message in str(err.value)


def test_beam_search_takes_numpy_scalars_like_python_ones(tiny):
    want = engine.beam_search(tiny, [[1, 2]], num_beams=2, max_new_tokens=3, length_penalty=1.0, early_stopping=True)
    got = engine.beam_search(tiny, [[1, 2]], num_beams=2, max_new_tokens=3, length_penalty=np.float32(1.0),
                             early_stopping=np.True_)
    np.testing.assert_array_equal(got.sequences, want.sequences)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_the_state_size_checked_before_allocating_is_what_start_allocates(tiny, share_prefix):
    from engine.decode import bucket, state_bytes
    prompts, n, capacity = [[1, 2, 3], list(range(1, 20))], 3, 40
    state = engine.start(tiny, prompts, capacity=capacity, n=n, share_prefix=share_prefix)
    real = sum(x.nbytes for x in jax.tree.leaves(state))
    groups = len(prompts) if share_prefix else len(prompts) * n
    estimate = state_bytes(tiny.config, groups, bucket(19), len(prompts) * n, capacity)
    assert abs(estimate - real) < 0.01 * real
