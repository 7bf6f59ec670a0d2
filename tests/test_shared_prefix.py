"""Shared-prefix rollouts: the two-block cache against the naive layout, select / fork / append."""

import jax
import numpy as np
import pytest

import engine
import models
from sampling import Sampler

PROMPTS = [[3, 17, 42, 9, 100], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [200, 201, 202]]


@pytest.fixture(scope="module", params=["llama", "window"])
def tiny(request):
    # "window": Mistral-style sliding window shorter than prompt + rollout, so masks cross blocks
    window = {"llama": None, "window": 6}[request.param]
    config = models.preset("tiny", eos_ids=(), bos_id=None, sliding_window=window)
    return models.Model(config, models.init_params(config, jax.random.key(0), std=0.2))


def both_layouts(model, **kw):
    return [engine.generate(model, PROMPTS, share_prefix=s, **kw) for s in (True, False)]


def test_greedy_tokens_and_logits_equal_the_naive_layout(tiny):
    shared, naive = both_layouts(tiny, max_new_tokens=16, n=3)
    np.testing.assert_array_equal(shared.tokens, naive.tokens)
    np.testing.assert_allclose(shared.logprobs, naive.logprobs, rtol=1e-5, atol=1e-5)
    states = [engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=16, n=3, share_prefix=s), max_new_tokens=16)
              for s in (True, False)]
    np.testing.assert_allclose(states[0].logits, states[1].logits, rtol=1e-5, atol=1e-5)


def test_sampled_rollouts_equal_the_naive_layout(tiny):
    shared, naive = both_layouts(tiny, max_new_tokens=16, n=4, seed=11, sampler=Sampler(temperature=1.0))
    np.testing.assert_array_equal(shared.tokens, naive.tokens)
    np.testing.assert_allclose(shared.sample_logprobs, naive.sample_logprobs, rtol=1e-5, atol=1e-5)
    assert len({tuple(r) for r in shared.tokens[0]}) > 1


def test_select_then_continue_equals_generating_directly(tiny):
    sampler = Sampler(temperature=1.0)
    direct = engine.rollouts(engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=20, n=6, seed=3),
                                           max_new_tokens=20, sampler=sampler))
    state = engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=20, n=6, seed=3), max_new_tokens=8,
                          sampler=sampler)
    pick = np.array([[4, 1, 1, 0], [5, 4, 3, 2], [0, 0, 0, 0]])
    state = engine.decode(tiny, engine.select(state, pick), max_new_tokens=12, sampler=sampler)
    got = engine.rollouts(state)
    want = np.take_along_axis(direct.tokens, pick[:, :, None], axis=1)
    np.testing.assert_array_equal(got.tokens, want)
    np.testing.assert_allclose(got.logprobs, np.take_along_axis(direct.logprobs, pick[:, :, None], axis=1),
                               rtol=1e-5, atol=1e-5)


def test_fork_children_share_the_past_and_diverge_after(tiny):
    sampler = Sampler(temperature=1.0)
    state = engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=24, n=2, seed=5), max_new_tokens=6,
                          sampler=sampler)
    forked = engine.decode(tiny, engine.fork(state, 3), max_new_tokens=18, sampler=sampler)
    assert forked.shape == (3, 6)
    parent, kids = engine.rollouts(state).tokens, engine.rollouts(forked).tokens
    for g in range(3):
        for r in range(2):
            children = kids[g, 3 * r:3 * r + 3]
            np.testing.assert_array_equal(children[:, :6], np.repeat(parent[g, r:r + 1, :6], 3, axis=0))
            assert len({tuple(c[6:]) for c in children}) > 1


@pytest.mark.parametrize("stop_early", [False, True])
def test_append_then_continue_equals_a_fresh_generation(tiny, stop_early):
    first = engine.generate(tiny, PROMPTS, max_new_tokens=6, n=1)
    stop = [int(first.tokens[0, 0, 2])] if stop_early else None   # prompt 0 stops after 3 tokens
    state = engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=20, n=2), max_new_tokens=6, stop_tokens=stop)
    mid = engine.rollouts(state)
    feedback = [7, 8, 9, 10]
    state = engine.decode(tiny, engine.append(tiny, state, feedback), max_new_tokens=5)
    out = engine.rollouts(state)
    if stop_early:
        assert mid.lengths[0, 0] == 3 and mid.lengths[1, 0] == 6
    for g, prompt in enumerate(PROMPTS):
        for r in range(2):
            past = mid.tokens[g, r, :mid.lengths[g, r]].tolist()
            fresh = engine.generate(tiny, [prompt + past + feedback], max_new_tokens=5)
            n = mid.lengths[g, r]
            np.testing.assert_array_equal(out.tokens[g, r, :n + 4], past + feedback)
            np.testing.assert_array_equal(out.tokens[g, r, n + 4:n + 9], fresh.tokens[0, 0])
            assert out.lengths[g, r] == n + 9


def test_cache_memory_is_prefix_once_plus_rollouts():
    config = models.preset("tiny", max_len=8192)
    model = models.Model(config, models.init_params(config, jax.random.key(0)))
    prompt = [[5] * 4096]
    shapes = [jax.eval_shape(lambda s=s: engine.start(model, prompt, capacity=256, n=64, share_prefix=s))
              for s in (True, False)]
    shared, naive = (s.cache for s in shapes)
    assert shared.token_slots() == 4096 + 64 * 256
    assert naive.token_slots() == 64 * (4096 + 256)
    per_slot = 2 * config.layers * config.kv_heads * config.head_dim * 4
    assert shared.nbytes() == per_slot * (4096 + 64 * 256)
    # generate reports what it used
    out = engine.generate(model, [[5] * 100], max_new_tokens=4, n=8)
    assert out.cache_slots == 128 + 8 * 4 and out.cache_bytes == per_slot * out.cache_slots


def test_bad_search_calls_are_value_errors(tiny):
    state = engine.start(tiny, PROMPTS, capacity=8, n=2)
    cases = [
        (lambda: engine.select(state, np.array([[0, 2]] * 3)), "rollout numbers in [0, 2)"),
        (lambda: engine.select(state, np.array([[0, 1]] * 2)), "indices must have shape [G=3, M>=1]"),
        (lambda: engine.decode(tiny, state, max_new_tokens=9), "do not fit"),
        (lambda: engine.append(tiny, state, [1] * 9), "appending 9 tokens needs 9 rollout cache slots; the cache has 8"),
        (lambda: engine.append(tiny, state, [[[1]]]), "nested list [G=3][N=2]"),
        (lambda: engine.append(tiny, state, [1, 999]), "appended token ids must be in [0, 256)"),
        (lambda: engine.append(tiny, state, [[[2.5], [1]]] * 3), "appended tokens must hold integer token ids"),
        (lambda: engine.fork(state, 0), "k must be an integer >= 1"),
        # [G][N] of bare ids gave each rollout one token
        (lambda: engine.append(tiny, state, [[5, 6]] * 3), "appended tokens must be a flat list of token ids"),
        (lambda: engine.rollouts(state, shape=(2, 2)), "shape must be (G, N) with G * N = 6 rollouts"),
        (lambda: engine.start(tiny, PROMPTS, capacity=0), "capacity must be an integer >= 1, got 0"),
        (lambda: engine.start(tiny, PROMPTS, capacity=4, share_prefix="no"), "share_prefix must be True or False"),
        (lambda: engine.decode(tiny, state, max_new_tokens=2, sampler={"temperature": 1.0}),
         "sampler must be a sampling.Sampler"),
        (lambda: engine.generate(tiny, PROMPTS, max_new_tokens=2, mesh="data=2"), "mesh must be a jax.sharding.Mesh"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value)


def test_a_used_up_state_is_a_clear_error_and_select_copies(tiny):
    state = engine.start(tiny, PROMPTS, capacity=8, n=2, seed=1)
    copy = engine.select(state, np.tile(np.arange(2), (3, 1)))           # the way to branch
    first = engine.decode(tiny, state, max_new_tokens=4, sampler=Sampler(temperature=1.0))
    for call in (lambda: engine.decode(tiny, state, max_new_tokens=4), lambda: engine.append(tiny, state, [1]),
                 lambda: engine.rollouts(state), lambda: engine.select(state, [[0]] * 3)):
        with pytest.raises(ValueError, match="used up by an earlier engine.decode / engine.append"):
            call()                                                    # was "RuntimeError: Array has been deleted"
    second = engine.decode(tiny, copy, max_new_tokens=4, sampler=Sampler(temperature=1.0))
    np.testing.assert_array_equal(engine.rollouts(first).tokens, engine.rollouts(second).tokens)


def test_a_rollout_draws_the_same_whatever_its_siblings_are_appended(tiny):
    hot = Sampler(temperature=1.0)

    def run(cues):
        state = engine.decode(tiny, engine.start(tiny, PROMPTS[:1], capacity=32, n=2, seed=1), max_new_tokens=4,
                              sampler=hot)
        if cues is not None:
            state = engine.append(tiny, state, [cues])
        return engine.rollouts(engine.decode(tiny, state, max_new_tokens=6, sampler=hot)).tokens[0]

    # the decode keys were folded with the shared slot, which an append moves by the longest cue's padded width
    short, long_, none = run([[50, 51, 52], []]), run([[50, 51, 52], [60, 61, 62, 63, 64]]), run(None)
    np.testing.assert_array_equal(short[0], long_[0])                 # the same cue, whatever the sibling got
    np.testing.assert_array_equal(short[1], none[1])                  # an empty cue leaves a rollout as it is
    assert not np.array_equal(short[0], none[0])


def test_append_pads_its_text_only_within_the_cache(tiny):
    state = engine.decode(tiny, engine.start(tiny, PROMPTS, capacity=11, n=1), max_new_tokens=4)
    state = engine.append(tiny, state, [7, 8, 9, 10, 11])             # 4 + 5 <= 11 (padding to 8 was refused)
    assert engine.rollouts(state).lengths.tolist() == [[9]] * 3 and int(state.cache.index) == 11
