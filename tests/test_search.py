"""meta.search: each rule's choice on hand-made scores, the whole search against a hand-written loop over
the engine's verbs (fake policy, fake PRM), resampling frequencies, one compilation, a mesh, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import engine
import meta
import models
import sharding
from fakes import Fake
from meta import search as S
from meta.tasks import arith, arith_verifiers
from sampling import Sampler

PRM = Fake(table=np.array([0.0, 1.0, -1.0, 2.0, 0.5]), reward=True)   # score logit by last token
STEPS = [0, 1, 2, 3]               # every token but EOS ends a step: one token per step, scores hand-checkable
PROMPTS = [[1, 2], [3], [2, 2, 1]]


def rows(x):
    return np.asarray(x).tolist()


def test_beam_keeps_the_best_live_rows_and_finished_rows_once():
    scores = jnp.array([[0.1, 0.9, 0.5, 0.9, 0.3, 0.2]])
    live = jnp.array([[True, True, False, True, True, True]])
    # 5 free slots: rows 1 and 3 tie at 0.9 (row 1 first) and get 2 each, row 4 (0.3) the last one;
    # row 2 is finished and keeps itself; rows 0 and 5 are dropped
    assert rows(S.beam_counts(scores, live, 2)) == [[0, 2, 1, 2, 1, 0]]
    assert rows(S.parents_of(S.beam_counts(scores, live, 2))) == [[1, 1, 2, 3, 3, 4]]
    assert rows(S.parents_of(S.beam_counts(scores, live, 3))) == [[1, 1, 1, 2, 3, 3]]


def choose(rule, scores, live, go=(True,)):
    z = jnp.zeros(np.shape(scores))
    keys = jax.random.split(jax.random.key(0), len(go))
    return S.choose(rule, jnp.asarray(scores), jnp.asarray(live), (z, z, z), keys, jnp.asarray(go))


def test_dvts_keeps_each_subtrees_best_and_rebase_shares_by_softmax():
    scores = [[0.1, 0.9, 0.5, 0.9, 0.3, 0.2]]
    live = [[True, True, False, True, True, True]]
    assert rows(choose(S.Rule("dvts", width=3), scores, live)[0]) == [[1, 1, 2, 3, 3, 3]]
    # softmax(score / 0.2) x 5 free slots = 0.18 2.31 - 2.31 0.13 0.07: floors 0 2 2 0 0, the one slot
    # left to the largest remainder, a tie of rows 1 and 3: row 1
    assert rows(S.rebase_counts(jnp.asarray(scores), jnp.asarray(live), 0.2)) == [[0, 3, 1, 2, 0, 0]]
    # a high temperature spreads the slots: shares 0.94 1.08 - 1.08 0.98 0.96 -> one child each
    assert rows(S.rebase_counts(jnp.asarray(scores), jnp.asarray(live), 100.0)) == [[1, 1, 1, 1, 1, 1]]
    # a prompt that does not go on keeps its rows
    assert rows(choose(S.Rule("beam", width=2), scores, live, go=(False,))[0]) == [[0, 1, 2, 3, 4, 5]]


def test_the_particle_filter_weighs_by_score_ratios_and_resamples_below_the_threshold():
    scores = np.array([[0.5, 0.25, 1.0, 0.5]])
    live = np.ones((1, 4), bool)
    w = scores[0] / scores.sum()
    size = 1 / (4 * np.sum(w ** 2))                                          # 0.8533
    parents, (logw, before), again, ess = choose(S.Rule("smc", threshold=0.8), scores, live)
    assert not bool(again[0]) and rows(parents) == [[0, 1, 2, 3]] and float(ess[0]) == pytest.approx(size, 1e-6)
    np.testing.assert_allclose(logw, np.log(scores), rtol=1e-6)
    parents, (logw, before), again, _ = choose(S.Rule("smc", threshold=0.9), scores, live)
    assert bool(again[0]) and rows(logw) == [[0, 0, 0, 0]]
    assert np.all(np.diff(parents[0]) >= 0) and 2 in rows(parents)[0]    # sorted; the heaviest is kept
    np.testing.assert_allclose(before, np.log(scores[0][np.asarray(parents[0])])[None], rtol=1e-6)
    # the next step multiplies by score_t / score_{t-1} and the importance ratio
    carry = (logw, before, jnp.full((1, 4), -0.5))
    _, (logw2, _), _, _ = S.choose(S.Rule("smc", threshold=0.01), jnp.full((1, 4), 0.5), jnp.asarray(live), carry,
                                   jax.random.split(jax.random.key(1), 1), jnp.asarray([True]))
    np.testing.assert_allclose(logw2, np.log(0.5) - before - 0.5, rtol=1e-6)


@pytest.mark.parametrize("how", S.RESAMPLING)
def test_resampling_draws_each_particle_in_proportion_to_its_weight(how):
    w = np.array([0.05, 0.3, 0.1, 0.15, 0.4])
    draws = 4000
    parents = np.asarray(S.resample(jax.random.split(jax.random.key(7), draws), jnp.log(jnp.tile(w, (draws, 1))), how))
    counts = np.bincount(parents.ravel(), minlength=5)
    assert counts.sum() == draws * 5 and np.all(np.diff(parents, axis=1) >= 0)
    assert stats.chisquare(counts, draws * 5 * w).pvalue > 1e-3
    per_draw = np.stack([np.bincount(p, minlength=5) for p in parents])
    if how == "systematic":     # every draw: floor or ceil of n * w copies of each particle
        assert np.all((per_draw == np.floor(5 * w)) | (per_draw == np.ceil(5 * w)))
    else:                       # independent draws: some draws keep none of the heaviest particle
        assert (per_draw[:, 4] == 0).any()


def python_rule(kind, width, temperature):
    """The rules written out in plain Python (an independent reference for the compiled ones)."""
    def children(s, done):
        n = len(s)
        live = [m for m in range(n) if not done[m]]
        counts = [1 if done[m] else 0 for m in range(n)]
        if kind == "beam":
            for r, m in enumerate(sorted(live, key=lambda m: (-s[m], m))):
                counts[m] = min(width, max(0, len(live) - r * width))
        else:
            e = np.exp(np.array([s[m] / temperature for m in live], np.float64) - max(s[m] / temperature for m in live))
            share = e / e.sum() * len(live)
            base = np.floor(share)
            order = sorted(range(len(live)), key=lambda i: (-(share[i] - base[i]), live[i]))
            for r, i in enumerate(order):
                counts[live[i]] = int(base[i]) + (r < len(live) - int(base.sum()))
        return [m for m in range(n) for _ in range(counts[m])]

    def parents(s, done):
        if kind != "dvts":
            return children(s, done)
        out = []
        for lo in range(0, len(s), width):
            out += [lo + p for p in python_rule("beam", width, 1)(s[lo:lo + width], done[lo:lo + width])]
        return out
    return parents


def hand_search(kind, n, width=2, temperature=0.5, max_steps=5, seed=3):
    """The search written with the public verbs, one call at a time, and the Python rules."""
    policy, tracks, capacity = Fake(), {"scorer": PRM}, max_steps + 2
    state = engine.start(policy, PROMPTS, capacity=capacity, n=n, seed=seed, tracks=tracks)
    rule, tree = python_rule(kind, width, temperature), []
    for t in range(max_steps):
        state = engine.decode(policy, state, max_new_tokens=1, sampler=Sampler(temperature=1.0), step_tokens=STEPS,
                              tracks=tracks)
        s = np.asarray(jax.nn.sigmoid(engine.track_scores(state, "scorer"))).tolist()
        done = np.asarray(state.done).reshape(len(PROMPTS), n).tolist()
        last = t == max_steps - 1
        parents = [list(range(n)) if last or all(d) else rule(si, d) for si, d in zip(s, done)]
        tree.append((s, parents))
        state = engine.select(state, np.array(parents), rekey=True)
        if all(all(d) for d in done):
            break
    return state, tree


@pytest.mark.parametrize("method, kind, kwargs", [
    (S.step_beam_search, "beam", dict(beam_width=2)), (S.dvts, "dvts", dict(beam_width=2)),
    (S.rebase, "rebase", dict(temperature=0.5))])
def test_a_search_expands_the_tree_a_hand_written_loop_expands(method, kind, kwargs):
    state, tree = hand_search(kind, n=4)
    r = method(Fake(), PROMPTS, scorer=PRM, n=4, max_steps=5, max_new_tokens=7, seed=3, step_tokens=STEPS,
               sampler=Sampler(temperature=1.0), **kwargs)
    for g in range(len(PROMPTS)):
        assert r.info[g]["steps"] == len(tree)
        assert r.info[g]["tree"]["parents"] == [parents[g] for _, parents in tree]
        np.testing.assert_allclose(r.info[g]["tree"]["scores"], [s[g] for s, _ in tree], rtol=1e-6)
    want = engine.rollouts(state)
    assert r.texts == [[" ".join(map(str, t[:k].tolist())) for t, k in zip(row, ks)]
                       for row, ks in zip(want.tokens, want.lengths)]
    assert len({tuple(p) for _, ps in tree for p in ps}) > 1        # the tree really branches and prunes


@pytest.mark.parametrize("method", [S.step_beam_search, S.dvts, S.rebase, S.particle_filter])
def test_a_prompts_search_is_the_same_whatever_else_is_in_the_batch(method):
    common = dict(scorer=PRM, n=4, max_steps=5, max_new_tokens=7, seed=5, step_tokens=STEPS,
                  sampler=Sampler(temperature=1.0))
    together = method(Fake(), PROMPTS, **common)
    for g, prompt in enumerate(PROMPTS):
        alone = method(Fake(), [prompt], **common)
        assert alone.texts[0] == together.texts[g] and alone.chosen[0] == together.chosen[g]
        assert alone.info[0]["steps"] == together.info[g]["steps"]
        assert alone.info[0]["tree"]["parents"] == together.info[g]["tree"]["parents"]


@pytest.mark.parametrize("method", [S.step_beam_search, S.particle_filter])
def test_a_rollout_at_its_limit_ends_there_whatever_else_is_in_the_batch(method):
    # steps of random length (token 3 ends one): rows idle while others finish a step, and a prompt
    # whose steps run long must not take slots from the others (its rollouts end at their own limit)
    common = dict(scorer=PRM, n=4, max_steps=8, max_new_tokens=9, seed=2, step_tokens=[3],
                  sampler=Sampler(temperature=1.0))
    together = method(Fake(), PROMPTS, **common)
    assert max(max(row) for row in together.lengths) == 9
    for g, prompt in enumerate(PROMPTS):
        alone = method(Fake(), [prompt], **common)
        assert alone.texts[0] == together.texts[g] and alone.info[0] == together.info[g]


def test_a_callable_scorer_searches_as_the_reward_track_does():
    logits = np.asarray(PRM.params["table"])

    def scorer(prompts, texts, references, budget):                 # the fake PRM on the host: last token's score
        return [[float(jax.nn.sigmoid(logits[int(t.split()[-1])])) for t in row] for row in texts]

    common = dict(n=4, max_steps=4, max_new_tokens=6, seed=1, step_tokens=STEPS, sampler=Sampler(temperature=1.0))
    for method in (S.step_beam_search, S.particle_filter):
        a, b = method(Fake(), PROMPTS, scorer=PRM, **common), method(Fake(), PROMPTS, scorer=scorer, **common)
        assert a.texts == b.texts and [i["tree"]["parents"] for i in a.info] == [i["tree"]["parents"] for i in b.info]


def test_the_particle_filter_resamples_when_the_ess_is_low():
    r = S.particle_filter(Fake(), PROMPTS, scorer=PRM, n=8, max_steps=4, max_new_tokens=6, seed=0,
                          step_tokens=STEPS, ess_threshold=1.0, sampler=Sampler(temperature=1.0))
    tree = r.info[0]["tree"]
    assert tree["resampled"][:-1] == [True] * (len(tree["resampled"]) - 1) and not tree["resampled"][-1]
    never = S.particle_filter(Fake(), PROMPTS, scorer=PRM, n=8, max_steps=4, max_new_tokens=6, seed=0,
                              step_tokens=STEPS, ess_threshold=1e-9, sampler=Sampler(temperature=1.0))
    assert all(p == list(range(8)) for i in never.info for p in i["tree"]["parents"])


def test_the_budget_counts_every_drawn_token_and_the_track_reads():
    r = S.step_beam_search(Fake(), PROMPTS, scorer=PRM, n=4, beam_width=2, max_steps=5, max_new_tokens=7,
                           step_tokens=STEPS, sampler=Sampler(temperature=1.0))
    kept = sum(map(sum, r.lengths))
    b = r.budget
    assert b.generated >= kept and b.prefilled == sum(map(len, PROMPTS)) and b.policy_calls == 1 + r.info[0]["steps"]
    assert b.scorer_tokens == b.generated + b.prefilled and b.scorer_calls == b.policy_calls and b.wall_s > 0
    assert b.policy_flops == 2.0 * meta.budget.param_count(Fake().params) * (b.generated + b.prefilled)


def test_each_search_is_one_compiled_program_per_shape():
    common = dict(scorer=PRM, n=4, max_steps=3, max_new_tokens=6, step_tokens=STEPS, sampler=Sampler(temperature=1.0))
    S.rebase(Fake(), PROMPTS, seed=0, **common)
    before = S._search._cache_size()
    S.rebase(Fake(), PROMPTS, seed=1, **common)
    S.rebase(Fake(), [[2], [1, 1], [3, 3, 3]], seed=2, **common)
    assert S._search._cache_size() == before


def test_a_search_on_a_mesh_equals_one_device():
    policy, prm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    prompts = [p.prompt for p in arith.held_out("test", "hard", 4)]
    common = dict(scorer=prm, n=4, beam_width=2, max_steps=3, max_new_tokens=40, sampler=Sampler(temperature=0.8))
    one = S.step_beam_search(policy, prompts, **common)
    mesh = S.step_beam_search(policy, prompts, mesh=sharding.make_mesh(data=4, tensor=2), **common)
    assert one.texts == mesh.texts and [i["tree"]["parents"] for i in one.info] == [i["tree"]["parents"] for i in mesh.info]
    np.testing.assert_allclose([i["tree"]["scores"] for i in one.info], [i["tree"]["scores"] for i in mesh.info],
                               rtol=1e-4)                   # a tensor-sharded forward sums in another order


def test_a_search_over_tiny_arith_with_the_process_verifier():
    policy = models.load("tiny-arith")
    problems = arith.held_out("test", "hard", 3)
    r = S.step_beam_search(policy, [p.prompt for p in problems], scorer=arith_verifiers.process_verifier("min"),
                           references=problems, n=4, beam_width=2, max_steps=8, max_new_tokens=64, answer=arith.answer,
                           sampler=Sampler(temperature=0.8))
    for g, p in enumerate(problems):
        assert r.chosen[g] is not None and r.answers[g] == r.extracted[g][r.chosen[g]]
        kept = r.texts[g][r.chosen[g]]
        assert r.scores[g][r.chosen[g]] == min(arith_verifiers.step_scores(kept, p).tolist() or [0.0])
    assert r.budget.scorer_calls == r.info[0]["steps"] and r.budget.scorer_tokens == 0


@pytest.mark.parametrize("call, message", [
    (lambda: S.step_beam_search(Fake(), PROMPTS, scorer=PRM, n=6, beam_width=4, max_steps=2, max_new_tokens=4),
     "beam_width must divide n"),
    (lambda: S.dvts(Fake(), PROMPTS, scorer=PRM, n=4, beam_width=0, max_steps=2, max_new_tokens=4),
     "beam_width must be"),
    (lambda: S.rebase(Fake(), PROMPTS, scorer=PRM, n=4, max_steps=0, max_new_tokens=4), "max_steps must be"),
    (lambda: S.rebase(Fake(), PROMPTS, scorer=PRM, n=4, temperature=0.0, max_steps=2, max_new_tokens=4),
     "temperature must be a finite number > 0"),
    (lambda: S.rebase(Fake(), PROMPTS, scorer=Fake(), n=4, max_steps=2, max_new_tokens=4), "scorer must be a reward"),
    (lambda: S.rebase(Fake(), PROMPTS, scorer="prm", n=4, max_steps=2, max_new_tokens=4), "scorer must be a reward"),
    (lambda: S.particle_filter(Fake(), PROMPTS, scorer=PRM, n=4, ess_threshold=1.5, max_steps=2, max_new_tokens=4),
     "ess_threshold must be in (0, 1]"),
    (lambda: S.particle_filter(Fake(), PROMPTS, scorer=PRM, n=4, ess_threshold=0, max_steps=2, max_new_tokens=4),
     "ess_threshold must be in (0, 1]"),
    (lambda: S.particle_filter(Fake(), PROMPTS, scorer=PRM, n=4, resampling="stratified", max_steps=2,
                               max_new_tokens=4), "resampling must be one of"),
    (lambda: S.dvts(Fake(), PROMPTS, scorer=PRM, n=4, final="mode", max_steps=2, max_new_tokens=4), "final must be"),
    (lambda: S.particle_filter(Fake(), PROMPTS, scorer=lambda p, t, r, b: [[2.0] * 4] * 3, n=4, max_steps=2,
                               max_new_tokens=4, step_tokens=STEPS), "scores in [0, 1]"),
    (lambda: S.rebase(Fake(), PROMPTS, scorer=PRM, n=4, max_steps=2, max_new_tokens=4), "step_tokens need a model"),
])
def test_bad_search_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
