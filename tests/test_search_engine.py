"""The search-ready engine: pauses, re-keyed copies, rewind and tracks — exact sequences on a fake
model, a reward track against a from-scratch reward model, a search loop inside jit and on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import engine
import models
import sharding
from engine.decode import REKEY, place_model
from sampling import Sampler

from fakes import EOS, TABLE, Fake

POLICY, RM = Fake(), Fake(reward=True)


def tokens_of(state):
    out = engine.rollouts(state)
    return [[out.tokens[g, r, :out.lengths[g, r]].tolist() for r in range(out.tokens.shape[1])]
            for g in range(out.tokens.shape[0])]


def test_a_step_delimiter_pauses_and_the_next_decode_continues():
    state = engine.start(POLICY, [[0], [3]], capacity=40)
    state = engine.decode(POLICY, state, max_new_tokens=12, step_tokens=[2])
    # prompt 0: 1 2 pauses after the delimiter 2 (kept); prompt 1: 3 -> EOS is done, not paused
    assert tokens_of(state) == [[[1, 2]], [[4]]]
    assert state.paused.tolist() == [True, False] and state.done.tolist() == [False, True]
    state = engine.decode(POLICY, state, max_new_tokens=12, step_tokens=[2])
    assert tokens_of(state) == [[[1, 2, 1, 2]], [[4]]] and state.paused.tolist() == [True, False]
    state = engine.decode(POLICY, state, max_new_tokens=3)          # no delimiter: runs to the limit
    assert tokens_of(state) == [[[1, 2, 1, 2, 1, 2, 1]], [[4]]] and not state.paused.any()


def test_max_length_ends_each_row_at_its_own_length_whatever_the_others_drew():
    # greedy from 0 and from 2 is 1 2 1 2 ...; a rewind puts row 1 one token behind row 0, in the same slots
    state = engine.start(POLICY, [[0], [2]], capacity=6, slots=12)
    state = engine.decode(POLICY, state, max_new_tokens=4, step_tokens=[2], max_length=6)
    assert tokens_of(state) == [[[1, 2]], [[1, 2]]] and state.paused.tolist() == [True, True]
    state = engine.rewind(POLICY, state, [[2], [1]])
    state = engine.decode(POLICY, state, max_new_tokens=9, max_length=6)     # row 1 needs 5 steps, row 0 only 4
    assert tokens_of(state) == [[[1, 2, 1, 2, 1, 2]], [[1, 2, 1, 2, 1, 2]]] and state.done.all()
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=8), max_new_tokens=8, step_tokens=[2])
    state = engine.decode(POLICY, state, max_new_tokens=6, max_length=2)     # paused at its limit: done, no token
    assert tokens_of(state) == [[[1, 2]]] and state.done.tolist() == [True] and not state.paused.any()


def test_a_multi_token_delimiter_and_stop_tokens():
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=40), max_new_tokens=12, step_tokens=[[2, 1]])
    assert tokens_of(state) == [[[1, 2, 1]]] and state.paused.tolist() == [True]      # "2 1" ends the step
    state = engine.decode(POLICY, state, max_new_tokens=12, step_tokens=[[2, 1]])
    assert tokens_of(state) == [[[1, 2, 1, 2, 1]]]
    # a stop token that is also a delimiter finishes the row for good
    state = engine.decode(POLICY, state, max_new_tokens=12, step_tokens=[2], stop_tokens=[2])
    assert tokens_of(state) == [[[1, 2, 1, 2, 1, 2]]] and state.done.tolist() == [True]
    assert not state.paused.any()


def test_a_string_delimiter_is_its_tokens_on_a_real_tokenizer():
    model = models.load("tiny-arith")
    state = engine.start(model, ["Q: 12+7-3=?\n"], capacity=40, n=2)
    state = engine.decode(model, state, max_new_tokens=40, step_tokens="\n")
    text = engine.rollouts(state, model.tokenizer).text[0]
    assert state.paused.all() and all(t.endswith("\n") and t.count("\n") == 1 for t in text)


def test_pausing_at_every_step_draws_what_one_decode_draws():
    sampler = Sampler(temperature=1.0)
    whole = engine.decode(POLICY, engine.start(POLICY, [[0], [2]], capacity=16, n=3, seed=5), max_new_tokens=16,
                          sampler=sampler)
    state = engine.start(POLICY, [[0], [2]], capacity=16 * 17, n=3, seed=5)
    for _ in range(16):
        state = engine.decode(POLICY, state, max_new_tokens=16, sampler=sampler, step_tokens=[1])
    stepped = [[t[:16] for t in group] for group in tokens_of(state)]     # rows may have gone on past 16
    assert stepped == tokens_of(whole) and 1 in stepped[0][0][:-1]        # ... and they did pause


def test_rekeyed_copies_diverge_reproducibly_and_keep_their_keys_otherwise():
    sampler = Sampler(temperature=1.0)
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=24, n=2, seed=1), max_new_tokens=4,
                          sampler=sampler)
    base = tokens_of(state)[0][0]

    def copies(rekey, others=()):
        s = engine.start(POLICY, [*others, [0]], capacity=24, n=2, seed=1)
        s = engine.decode(POLICY, s, max_new_tokens=4, sampler=sampler)
        s = engine.select(s, [[0, 0, 0]] * (len(others) + 1), rekey=rekey)
        keys = np.asarray(jax.random.key_data(s.keys))[-3:]           # before decode uses s up
        return tokens_of(engine.decode(POLICY, s, max_new_tokens=12, sampler=sampler))[-1], keys

    same, plain = copies(False)
    assert same[0] == same[1] == same[2] and same[0][:4] == base
    fresh, rekeyed = copies(True)
    assert all(t[:4] == base for t in fresh) and len({tuple(t) for t in fresh}) == 3
    # each row's key is fold_in(fold_in(old key, REKEY), its place m), whatever else is in the batch
    fold = jax.random.fold_in
    want = [jax.random.key_data(fold(fold(jax.random.wrap_key_data(plain[0]), REKEY), m)) for m in range(3)]
    np.testing.assert_array_equal(rekeyed, np.stack(want))
    assert copies(True, others=[[3, 3], [1]])[0] == fresh
    some, masked = copies(np.array([[False, True, False]]))                # only the rows a mask names
    np.testing.assert_array_equal(masked, np.stack([plain[0], want[1], plain[2]]))
    assert some == [same[0], fresh[1], same[2]]


def test_rekeyed_copies_draw_from_the_model_distribution():
    """2,000 re-keyed copies of one rollout each draw a next token: chi-square against TABLE[1]."""
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=2, seed=3), max_new_tokens=1)   # token 1
    state = engine.select(state, [[0] * 2000], rekey=True)
    state = engine.decode(POLICY, state, max_new_tokens=1, sampler=Sampler(temperature=1.0))
    drawn = np.asarray(state.tokens[:, 1])
    counts = np.bincount(drawn, minlength=5)
    assert stats.chisquare(counts, 2000 * TABLE[1]).pvalue > 1e-3


def test_rewind_replays_the_same_draws():
    sampler = Sampler(temperature=1.0)
    state = engine.decode(POLICY, engine.start(POLICY, [[0], [3]], capacity=40, n=2, seed=2), max_new_tokens=10,
                          sampler=sampler, stop_tokens=[])
    before = tokens_of(state)
    lengths = [[3, 0], [1, len(before[1][1])]]                        # the last row keeps its length
    state = engine.rewind(POLICY, state, lengths)
    assert tokens_of(state) == [[before[0][0][:3], []], [before[1][0][:1], before[1][1]]]
    assert state.cache.length.tolist() == [3, 0, 1, len(before[1][1])]
    state = engine.decode(POLICY, state, max_new_tokens=10, sampler=sampler)
    after = tokens_of(state)                                # cut rows may now go on past where they stopped
    assert [[t[:len(b)] for t, b in zip(*rows)] for rows in zip(after, before)] == before
    assert after[1][1] == before[1][1]


@pytest.mark.parametrize("settings, want", [
    # counts-based penalties see only the kept tokens: after rewinding [1 2 3 4] to [1 2], 3 then EOS again
    ({"presence_penalty": 1.2}, [1, 2, 3, 4]),
    ({"repetition_penalty": 10.0}, [1, 2, 3, 4]),
])
def test_the_sampler_memory_follows_a_rewind(settings, want):
    sampler = Sampler(temperature=0, **settings)
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=16), max_new_tokens=8, sampler=sampler)
    assert tokens_of(state) == [[want]]
    state = engine.decode(POLICY, engine.rewind(POLICY, state, [[2]]), max_new_tokens=8, sampler=sampler)
    assert tokens_of(state) == [[want]]


def test_a_constraint_state_follows_a_rewind():
    # the automaton alternates: state 0 allows only 2 (-> 1), state 1 allows 1 or EOS (-> 0)
    table = np.full((2, 5), -1, np.int32)
    table[0, 2], table[1, 1], table[1, EOS] = 1, 0, 0
    sampler = Sampler(temperature=0, constraint=table)
    state = engine.decode(POLICY, engine.start(POLICY, [[0]], capacity=16), max_new_tokens=5, sampler=sampler)
    assert tokens_of(state) == [[[2, 1, 2, 1, 2]]]
    state = engine.decode(POLICY, engine.rewind(POLICY, state, [[3]]), max_new_tokens=2, sampler=sampler)
    assert tokens_of(state) == [[[2, 1, 2, 1, 2]]]      # after the 3rd token (2) the automaton is in state 1


def test_a_reward_track_scores_every_token_drawn_appended_and_rewound():
    state = engine.start(POLICY, [[0], [3]], capacity=16, n=2, tracks={"rm": RM})
    np.testing.assert_array_equal(engine.track_scores(state, "rm"), [[0, 0], [30, 30]])   # after the prompt
    state = engine.decode(POLICY, state, max_new_tokens=3, step_tokens=[2], tracks={"rm": RM})
    np.testing.assert_array_equal(engine.track_scores(state, "rm"), [[20, 20], [40, 40]])  # 1 2 | EOS
    state = engine.append(POLICY, state, [[[3], []], [[1, 1], [2]]], tracks={"rm": RM})
    np.testing.assert_array_equal(engine.track_scores(state, "rm"), [[30, 20], [10, 20]])
    state = engine.rewind(POLICY, state, [[1, 0], [2, 2]], tracks={"rm": RM})             # [1] [] [4 1] [4 2]
    np.testing.assert_array_equal(engine.track_scores(state, "rm"), [[10, 0], [10, 20]])
    state = engine.fork(engine.select(state, [[1, 0], [1, 1]]), 2)
    np.testing.assert_array_equal(engine.track_scores(state, "rm"), [[0, 0, 10, 10], [20] * 4])


def test_a_reward_track_equals_the_reward_model_from_scratch():
    """tiny-arith-rm riding along tiny-arith: after decode, select (re-keyed), fork, rewind and append
    its score of each rollout is what models.rewards gives prompt + rollout from scratch."""
    policy, rm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    prompts, tracks, sampler = ["Q: 12+7-3=?\n", "Q: 5+9+11-4=?\n"], {"rm": rm}, Sampler(temperature=0.8)

    def check(state):                   # every rollout from scratch in one [12, 128] batch: one compilation
        out = engine.rollouts(state)
        g, n = state.shape
        rows = [policy.tokenizer.encode(prompts[i]) + out.tokens[i, r, :out.lengths[i, r]].tolist()
                for i in range(g) for r in range(n)]
        batch = np.zeros((12, 128), np.int32)                  # right padding: causal, earlier positions unchanged
        for b, row in enumerate(rows):
            batch[b, :len(row)] = row
        scores = np.asarray(models.rewards(rm.config, rm.params, jnp.asarray(batch)))
        want = np.array([scores[b, len(row) - 1] for b, row in enumerate(rows)]).reshape(g, n)
        np.testing.assert_allclose(engine.track_scores(state, "rm"), want, rtol=1e-4, atol=1e-5)

    state = engine.start(policy, prompts, capacity=80, n=3, seed=0, tracks=tracks)
    check(state)
    state = engine.decode(policy, state, max_new_tokens=20, sampler=sampler, step_tokens="\n", tracks=tracks)
    check(state)
    state = engine.fork(engine.select(state, [[0, 0, 2], [1, 2, 2]], rekey=True), 2)
    state = engine.decode(policy, state, max_new_tokens=20, sampler=sampler, step_tokens="\n", tracks=tracks)
    check(state)
    state = engine.rewind(policy, state, np.minimum(np.asarray(state.cache.length).reshape(2, 6), [[0, 2, 4, 6, 8, 9]]),
                          tracks=tracks)
    check(state)
    state = engine.append(policy, state, "7", tracks=tracks)
    check(state)


def test_a_mixture_over_tracks_is_the_mixed_generation():
    contrastive = dict(combine="contrastive", params={"alpha": 0.1})
    want = engine.mix_generate([POLICY, POLICY], [[0]], max_new_tokens=6, model_prompts=[None, [[3]]], **contrastive)
    state = engine.start(POLICY, [[0]], capacity=6, tracks={"amateur": POLICY}, track_prompts={"amateur": [[3]]})
    state = engine.decode(POLICY, state, max_new_tokens=6, tracks={"amateur": POLICY},
                          mixture=engine.Mixture(contrastive["combine"], ("amateur",), contrastive["params"]))
    assert tokens_of(state)[0][0] == want.tokens[0, 0, :want.lengths[0, 0]].tolist()


def beam_step_search(policy, rm, prompts, *, n, beam, steps, mesh=None):
    """A step-level beam search as one jitted program (as docs/architecture.md shows)."""
    tracks, sampler = {"rm": rm}, Sampler(temperature=0.8)

    @jax.jit
    def search(state):
        def one_step(_, state):
            state = engine.decode(policy, state, max_new_tokens=12, sampler=sampler, step_tokens="\n", tracks=tracks,
                                  mesh=mesh)
            best = jnp.argsort(-engine.track_scores(state, "rm"), axis=1)[:, :n // beam]
            return engine.select(state, jnp.repeat(best, beam, axis=1), rekey=True)
        return jax.lax.fori_loop(0, steps, one_step, state)

    policy, rm = place_model(policy, mesh), place_model(rm, mesh)
    return search(engine.start(policy, prompts, capacity=12 * steps, n=n, seed=0, tracks={"rm": rm}, mesh=mesh))


def test_a_search_loop_in_one_jitted_program_equals_the_same_calls_one_by_one_and_on_a_mesh():
    policy, rm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    prompts, tracks, sampler = ["Q: 12+7-3=?\n", "Q: 5+9+11-4=?\n"], {"rm": rm}, Sampler(temperature=0.8)
    state = engine.start(policy, prompts, capacity=36, n=4, seed=0, tracks=tracks)
    for _ in range(3):                                                      # eager: checked, host round trips
        state = engine.decode(policy, state, max_new_tokens=12, sampler=sampler, step_tokens="\n", tracks=tracks)
        best = np.argsort(-np.asarray(engine.track_scores(state, "rm")), axis=1, kind="stable")[:, :2]
        state = engine.select(state, np.repeat(best, 2, axis=1), rekey=True)
    eager = tokens_of(state)
    jitted = beam_step_search(policy, rm, prompts, n=4, beam=2, steps=3)
    assert tokens_of(jitted) == eager
    on_mesh = beam_step_search(policy, rm, prompts, n=4, beam=2, steps=3, mesh=sharding.make_mesh(data=4, tensor=2))
    assert tokens_of(on_mesh) == eager


@pytest.mark.parametrize("call, message", [
    (lambda s: engine.track_scores(s, "prm"), "unknown track 'prm'; this state's tracks: ['rm']"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2), "this state has tracks ['rm']: pass tracks="),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, tracks={"rm": POLICY}), "track 'rm' was started with a reward"),
    (lambda s: engine.rewind(POLICY, s, [[1, 0]], tracks={"rm": RM}), "lengths must be integers in [0, 0]"),
    (lambda s: engine.rewind(POLICY, s, [[-1, 0]], tracks={"rm": RM}), "lengths must be integers in [0, 0]"),
    (lambda s: engine.rewind(POLICY, s, [[0, 0, 0]], tracks={"rm": RM}), "lengths must have shape [G=1, N=2]"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, step_tokens=[7], tracks={"rm": RM}),
     "step_tokens must be non-empty token ids in [0, 5)"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, step_tokens="\n", tracks={"rm": RM}),
     "string step_tokens need a model with a tokenizer"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, tracks={"rm": RM}, max_length=0),
     "max_length must be an integer >= 1"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, tracks={"rm": RM}, max_length=2, draft="prompt_lookup"),
     "max_length is for plain decoding"),
    (lambda s: engine.select(s, [[0, 1]], rekey=1), "rekey must be True, False or bool [G, M] like indices (1, 2), got 1"),
    (lambda s: engine.decode(POLICY, s, max_new_tokens=2, tracks={"rm": RM},
                             mixture=engine.Mixture("cfg", ("rm",))), "track 'rm' is a reward model"),
])
def test_bad_search_arguments_are_value_errors(call, message):
    state = engine.start(POLICY, [[0]], capacity=4, n=2, tracks={"rm": RM})
    with pytest.raises(ValueError) as err:
        call(state)
    assert message in str(err.value)


def test_a_track_must_share_the_policy_vocabulary():
    other = models.Model(models.preset("tiny", vocab_size=7), None)
    with pytest.raises(ValueError) as err:
        engine.start(POLICY, [[0]], capacity=4, tracks={"big": other})
    assert "track 'big' has a vocabulary of 7 tokens; the policy's has 5" in str(err.value)


# --- reliability (issue 25): broken models, oversized copies, wrong objects -------------------------

def test_nan_logits_end_their_rows_and_are_named_after_the_call():
    table = TABLE.copy()
    table[3] = np.nan                                                   # after token 3 the model breaks
    model = Fake(table=table)
    with pytest.raises(ValueError) as err:
        engine.generate(model, [[0], [3]], max_new_tokens=4, n=2)
    assert "NaN or infinite logits for 2 of 4 rollouts ((prompt 1, rollout 0), (prompt 1, rollout 1))" in str(err.value)
    # traced (no error can be raised there): the rows are failed and done, with no token drawn
    state = jax.jit(lambda s: engine.decode(model, s, max_new_tokens=4))(engine.start(model, [[0], [3]], capacity=4))
    assert state.failed.tolist() == [False, True] and state.done.tolist() == [False, True]
    assert tokens_of(state) == [[[1, 2, 1, 2]], [[]]]


def test_a_nan_poisoned_model_is_an_error_not_out_of_vocabulary_tokens():
    config = models.preset("tiny", eos_ids=(), bos_id=None)
    params = models.init_params(config, jax.random.key(0))
    params["final_norm"] = params["final_norm"].at[3].set(jnp.nan)
    model = models.Model(config, params)
    for sampler in (None, Sampler(temperature=1.0)):
        with pytest.raises(ValueError) as err:
            engine.generate(model, [[1, 2, 3]], max_new_tokens=4, sampler=sampler)
        assert "NaN or infinite logits for 1 of 1 rollouts" in str(err.value)


def test_copies_that_cannot_fit_are_refused_before_allocating(monkeypatch):
    state = engine.start(POLICY, [[0]], capacity=64, n=2)
    per_row = sum(x.nbytes for x in jax.tree.leaves(engine.select(state, [[0]])))
    monkeypatch.setattr(engine.checks, "memory_bytes", lambda mesh=None: 100 * per_row)
    assert engine.fork(state, 50).shape == (1, 100)
    with pytest.raises(ValueError) as err:
        engine.fork(state, 1000)
    assert "2000 rollouts of this state need" in str(err.value) and "the memory left is" in str(err.value)
    with pytest.raises(ValueError) as err:
        engine.select(state, [[0] * 5000])
    assert "5000 rollouts of this state need" in str(err.value)


@pytest.mark.parametrize("call, message", [
    (lambda: engine.fork("x", 2), "expected a DecodeState (from engine.start), got str"),
    (lambda: engine.decode(models.Model(models.preset("tiny"), None), engine.start(POLICY, [[0]], capacity=4),
                           max_new_tokens=2), "this state was started with a 5-token model; got 256 instead"),
    (lambda: engine.generate(models.load("tiny-arith"), [""], max_new_tokens=2), "prompt 0 is empty"),
])
def test_wrong_objects_are_value_errors(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


def test_a_lone_surrogate_in_a_prompt_is_a_value_error():
    with pytest.raises(ValueError) as err:
        engine.generate(models.load("tiny-arith"), ["Q: 1+\ud800=?"], max_new_tokens=2)
    assert "text is not valid Unicode (surrogates not allowed at character 5)" in str(err.value)
