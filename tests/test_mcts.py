"""meta.mcts: hand-derived trees, the search against a plain-Python MCTS over the engine's verbs (fake
policy, fake PRM), put_rollouts, one compilation, a callable scorer, a mesh, the budget, bad input."""
import jax
import numpy as np
import pytest

import engine
import meta
import models
import sharding
from engine.cache import put_rollouts, take_rollouts
from fakes import EOS, Fake
from meta.mcts import _mcts
from meta.tasks import arith
from sampling import Sampler

PRM = Fake(table=np.array([0.0, 1.0, -1.0, 2.0, 0.5]), reward=True)   # score logit by last token
STEPS = [0, 1, 2, 3]               # every token but EOS ends a step: one token per step, scores hand-checkable
PROMPTS = [[1, 2], [3], [2, 2, 1]]
A, B = 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))    # the PRM's score of a step ending in 1, in 2 (A + B = 1)


def tree(r, g=0, *keys):
    return [r.info[g]["tree"][k] for k in keys]


def test_a_greedy_search_of_ties_grows_the_hand_derived_tree():
    # greedy from the prompt's last token 2: 1 2 1 2 ...; both children of a node are the same (ties)
    r = meta.mcts(Fake(), [[1, 2]], scorer=PRM, n=2, simulations=4, max_steps=3, max_new_tokens=4, step_tokens=STEPS,
                  sampler=Sampler.greedy())
    # sim 0 expands the root: nodes 1, 2 ("1", A).  sim 1: ln N(root) = 0, a tie, node 1: nodes 3, 4 ("1 2", B).
    # sim 2: node 1 has Q = (A + B) / 2 = 0.5, N = 2 -> 0.5 + sqrt(ln 2 / 2) = 1.089; node 2 A + sqrt(ln 2) = 1.564:
    # node 2, nodes 5, 6.  sim 3: nodes 1 and 2 tie (Q 0.5, N 2): node 1, then its children tie: node 3, whose
    # children 7, 8 ("1 2 1", A) are max_steps = 3 deep and cannot be expanded
    parent, depth, visits, value, order, expanded = tree(r, 0, "parent", "depth", "visits", "value", "order",
                                                         "expanded")
    assert parent == [-1, 0, 0, 1, 1, 2, 2, 3, 3] and depth == [0, 1, 1, 2, 2, 2, 2, 3, 3]
    assert visits == [4, 3, 2, 2, 1, 1, 1, 1, 1] and order == [0, 1, 2, 3] and expanded == [True] * 4
    np.testing.assert_allclose(value, [0.5, (2 * A + B) / 3, 0.5, 0.5, B, B, B, A, A], rtol=1e-6)
    assert r.info[0]["nodes"] == [4, 5, 6, 7, 8] and r.texts == [["1 2", "1 2", "1 2", "1 2 1", "1 2 1"]]
    np.testing.assert_allclose(r.scores[0], [B, B, B, A, A], rtol=1e-6)
    assert r.chosen == [3] and r.info[0]["node"] == 7 and r.answers == ["1 2 1"]        # nothing finished: the best
    assert r.budget.generated == 8 and r.budget.policy_calls == 1 + 4 and r.budget.scorer_tokens == 8 + 2

    # max_steps = 1: the root's children cannot grow; later simulations back their own score up again
    r = meta.mcts(Fake(), [[1, 2]], scorer=PRM, n=2, simulations=3, max_steps=1, max_new_tokens=4, step_tokens=STEPS,
                  sampler=Sampler.greedy())
    parent, visits, value, order, expanded = tree(r, 0, "parent", "visits", "value", "order", "expanded")
    # sim 1: a tie at ln 1 = 0: node 1; sim 2: node 1 has N = 2 (A + sqrt(ln 2 / 2)) < node 2 (A + sqrt(ln 2))
    assert parent == [-1, 0, 0] and visits == [3, 2, 2] and order == [0, 1, 2] and expanded == [True, False, False]
    np.testing.assert_allclose(value, [A, A, A], rtol=1e-6)
    assert r.budget.generated == 2 and r.budget.policy_calls == 2


def hand_mcts(prompt, *, n, simulations, max_steps, exploration, seed, capacity, rollout=False):
    """The search for one prompt in plain Python, one engine verb at a time: each node its own 1-row state."""
    policy, tracks, sampler, f32 = Fake(), {"scorer": PRM}, Sampler(temperature=1.0), np.float32
    states = [engine.start(policy, [prompt], capacity=capacity, n=1, seed=seed, tracks=tracks)]
    parent, depth, first, visits, total, score, grows, done = [-1], [0], [-1], [0], [f32(0)], [f32(0)], [True], [False]
    order, expanded = [], []
    for _ in range(simulations):
        node = 0
        while first[node] >= 0:                                               # selection: UCT, ties to the lower row
            kids = list(range(first[node], first[node] + n))
            uct = [total[c] / f32(visits[c]) + f32(exploration) * np.sqrt(np.log(f32(visits[node])) / f32(visits[c]))
                   for c in kids]
            node = kids[int(np.argmax(uct))]
        order.append(node)
        expanded.append(grows[node])
        if grows[node]:                                                       # expansion: n children, one step each
            work = engine.select(states[node], [[0] * n], rekey=True)
            work = engine.decode(policy, work, max_new_tokens=capacity - int(work.cache.index), sampler=sampler,
                                 step_tokens=STEPS, tracks=tracks)
            scored = work
            if rollout:                                                       # a copy to the end, scored there
                scored = engine.decode(policy, engine.select(work, [list(range(n))]),
                                       max_new_tokens=capacity - int(work.cache.index), sampler=sampler, tracks=tracks)
            s = np.asarray(jax.nn.sigmoid(engine.track_scores(scored, "scorer")))[0]
            first[node] = len(parent)
            for c in range(n):
                states.append(engine.select(work, [[c]]))
                parent.append(node), depth.append(depth[node] + 1), first.append(-1), visits.append(1)
                total.append(s[c]), score.append(s[c]), done.append(bool(work.done[c]))
                end = int(np.max(np.nonzero(np.asarray(work.cache.valid[c]))[0], initial=-1)) + 1
                grows.append(bool(work.paused[c]) and not done[-1] and depth[-1] < max_steps and end < capacity)
            value = f32(np.sum(s, dtype=f32) / f32(n))
        else:
            value = score[node]
        while node >= 0:                                                      # backup: the mean, up to the root
            visits[node] += 1
            total[node] = f32(total[node] + value)
            node = parent[node]
    leaves = [m for m in range(len(parent)) if first[m] < 0]
    texts = []
    for m in leaves:
        out = engine.rollouts(states[m])
        texts.append(" ".join(map(str, out.tokens[0][0][:out.lengths[0][0]].tolist())))
    return dict(parent=parent, depth=depth, visits=visits, value=[t / v for t, v in zip(total, visits)], score=score,
                done=done, order=order, expanded=expanded), leaves, texts


@pytest.mark.parametrize("rollout", [False, True])
def test_mcts_grows_the_tree_a_hand_written_loop_grows(rollout):
    common = dict(n=3, simulations=6, max_steps=4, exploration=0.7, seed=3)
    r = meta.mcts(Fake(), PROMPTS, scorer=PRM, max_new_tokens=96, step_tokens=STEPS, rollout=rollout,
                  sampler=Sampler(temperature=1.0), **common)
    for g, prompt in enumerate(PROMPTS):
        want, leaves, texts = hand_mcts(prompt, capacity=96, rollout=rollout, **common)
        got = r.info[g]["tree"]
        for k in ("parent", "depth", "visits", "done", "order", "expanded"):
            assert got[k] == want[k], k
        for k in ("value", "score"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
        assert r.info[g]["nodes"] == leaves and r.texts[g] == texts and r.info[g]["simulations"] == 6
        np.testing.assert_allclose(r.scores[g], [want["score"][m] for m in leaves], rtol=1e-6)
    assert any(len(set(i["tree"]["parent"])) > 2 for i in r.info)           # the tree really branches and deepens
    assert any(i["tree"]["done"][1:].count(True) for i in r.info)           # and some leaves finished (EOS)
    assert any(not all(i["tree"]["expanded"]) for i in r.info) or rollout   # some finished leaf was visited again


def test_a_callable_scorer_searches_as_the_reward_track_does():
    logits = np.asarray(PRM.params["table"])

    def scorer(prompts, texts, references, budget):                 # the fake PRM on the host: last token's score
        return [[float(jax.nn.sigmoid(logits[int(t.split()[-1])])) for t in row] for row in texts]

    common = dict(n=2, simulations=5, max_steps=3, max_new_tokens=8, seed=1, step_tokens=STEPS,
                  sampler=Sampler(temperature=1.0))
    a, b = meta.mcts(Fake(), PROMPTS, scorer=PRM, **common), meta.mcts(Fake(), PROMPTS, scorer=scorer, **common)
    assert a.texts == b.texts and a.chosen == b.chosen
    for x, y in zip(a.info, b.info):
        for k in ("parent", "visits", "order", "expanded"):
            assert x["tree"][k] == y["tree"][k]
        np.testing.assert_allclose(x["tree"]["value"], y["tree"]["value"], rtol=1e-6)
    assert b.budget.generated == a.budget.generated and b.budget.scorer_tokens == 0


def same(a, b, only_rollouts=False):
    """Every array of two states (or only those with a rollouts axis) equal, NaN too (mu is NaN without Mirostat)."""
    key = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    check = lambda x, y, axes: (not only_rollouts or "rollouts" in axes) and np.testing.assert_array_equal(
        key(x), key(y))
    jax.tree.map(check, a, b, a.axes())
    return True


def test_put_rollouts_is_the_inverse_of_take_rollouts():
    tracks = {"scorer": PRM}
    state = engine.start(Fake(), PROMPTS, capacity=6, n=4, seed=0, tracks=tracks)
    state = engine.decode(Fake(), state, max_new_tokens=3, sampler=Sampler(temperature=1.0), tracks=tracks)
    other = engine.decode(Fake(), engine.select(state, np.zeros((3, 4), int), rekey=True), max_new_tokens=2,
                          sampler=Sampler(temperature=1.0), tracks=tracks)
    rows = np.array([5, 0, 11, 2])
    assert same(put_rollouts(state, rows, take_rollouts(state, rows)), state)
    moved = put_rollouts(other, rows, take_rollouts(state, rows))
    assert same(take_rollouts(moved, rows), take_rollouts(state, rows))
    kept = np.setdiff1d(np.arange(12), rows)
    assert same(take_rollouts(moved, kept), take_rollouts(other, kept), only_rollouts=True)
    dropped = put_rollouts(other, np.array([12, 12, 12, 12]), take_rollouts(state, rows))     # out of range: dropped
    assert same(dropped, other, only_rollouts=True)
    assert int(moved.cache.index) == int(state.cache.index)                  # scalars: the newer state's


def test_a_packed_state_decodes_on_as_before_from_its_first_free_slot():
    policy, rm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    tracks, sampler = {"rm": rm}, Sampler(temperature=0.8)
    prompts = [p.prompt for p in arith.held_out("test", "hard", 2)]
    state = engine.start(policy, prompts, capacity=64, n=4, seed=5, tracks=tracks)
    for _ in range(3):                       # rows pause at different slots: the next step leaves gaps
        state = engine.decode(policy, state, max_new_tokens=16, sampler=sampler, step_tokens="\n", tracks=tracks)
    lengths = np.asarray(state.cache.length)
    valid = np.asarray(state.cache.valid)
    assert (lengths < valid.shape[1] - np.argmax(valid[:, ::-1], axis=1)).any()             # some row has a gap
    packed = engine.select(state, [[0, 1, 2, 3]] * 2).packed()       # a copy: decode uses up (donates) a state
    assert np.array_equal(np.asarray(packed.cache.valid), np.arange(64)[None] < lengths[:, None])
    packed = packed.writing_at(int(lengths.max()))                  # its slots after the longest row reused
    before = engine.rollouts(engine.select(state, [[0, 1, 2, 3]] * 2))
    after = engine.rollouts(engine.select(packed, [[0, 1, 2, 3]] * 2))
    assert np.array_equal(before.tokens, after.tokens) and np.array_equal(before.lengths, after.lengths)
    a = engine.decode(policy, state, max_new_tokens=24, sampler=sampler, tracks=tracks)
    b = engine.decode(policy, packed, max_new_tokens=24, sampler=sampler, tracks=tracks)
    ta, tb = engine.rollouts(a, policy.tokenizer), engine.rollouts(b, policy.tokenizer)
    assert ta.text == tb.text and int(b.cache.index) <= int(a.cache.index)
    np.testing.assert_allclose(engine.track_scores(a, "rm"), engine.track_scores(b, "rm"), rtol=1e-4, atol=1e-5)


def test_a_resized_state_decodes_on_as_before_and_narrows_back_without_loss():
    policy, rm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    tracks, sampler = {"rm": rm}, Sampler(temperature=0.8)
    prompts = [p.prompt for p in arith.held_out("test", "hard", 2)]
    state = engine.start(policy, prompts, capacity=40, n=3, seed=7, tracks=tracks)
    state = engine.decode(policy, state, max_new_tokens=12, sampler=sampler, step_tokens="\n", tracks=tracks)
    copy = lambda s: engine.select(s, [[0, 1, 2]] * 2)                 # decode uses up (donates) a state
    wide = copy(state).resized(100, policy.config.pad_id)             # on CPU 2 buffers of 20 slots -> 4 of 25
    assert [b.shape[-2] for b in wide.cache.k[0]] == engine.cache.block_sizes(100)
    assert wide.cache.size == 100 and int(wide.cache.index) == int(state.cache.index)
    a = engine.decode(policy, copy(state), max_new_tokens=24, sampler=sampler, tracks=tracks)
    b = engine.decode(policy, wide, max_new_tokens=24, sampler=sampler, tracks=tracks)
    assert engine.rollouts(a, policy.tokenizer).text == engine.rollouts(b, policy.tokenizer).text
    np.testing.assert_allclose(engine.track_scores(a, "rm"), engine.track_scores(b, "rm"), rtol=1e-4, atol=1e-5)
    packed = copy(state).packed()
    assert same(packed.resized(100, policy.config.pad_id).resized(40, policy.config.pad_id), copy(state).packed())


def test_mcts_is_one_compiled_program_per_shape():
    common = dict(scorer=PRM, n=2, simulations=3, max_steps=3, max_new_tokens=6, step_tokens=STEPS,
                  sampler=Sampler(temperature=1.0))
    meta.mcts(Fake(), PROMPTS, seed=0, **common)
    before = _mcts._cache_size()
    meta.mcts(Fake(), PROMPTS, seed=1, exploration=2.0, **common)
    meta.mcts(Fake(), [[2], [1, 1], [3, 3, 3]], seed=2, **common)
    assert _mcts._cache_size() == before


def test_mcts_on_a_mesh_equals_one_device():
    policy, prm = models.load("tiny-arith"), models.load("tiny-arith-rm")
    prompts = [p.prompt for p in arith.held_out("test", "hard", 4)]
    common = dict(scorer=prm, n=2, simulations=4, max_steps=6, max_new_tokens=48, answer=arith.answer,
                  sampler=Sampler(temperature=0.8))
    one = meta.mcts(policy, prompts, **common)
    mesh = meta.mcts(policy, prompts, mesh=sharding.make_mesh(data=4, tensor=2), **common)
    assert one.texts == mesh.texts and one.chosen == mesh.chosen and one.answers == mesh.answers
    for a, b in zip(one.info, mesh.info):
        for k in ("parent", "visits", "order", "expanded", "done"):
            assert a["tree"][k] == b["tree"][k]
        for k in ("value", "score"):        # a tensor-sharded forward sums in another order
            np.testing.assert_allclose(a["tree"][k], b["tree"][k], rtol=1e-4)
    assert one.info[0]["simulations"] == 4 and max(one.info[0]["tree"]["depth"]) >= 2
    for g in range(len(prompts)):
        if one.chosen[g] is not None:
            assert one.answers[g] == one.extracted[g][one.chosen[g]]


def test_the_budget_counts_every_drawn_token_and_the_track_reads():
    r = meta.mcts(Fake(), PROMPTS, scorer=PRM, n=3, simulations=4, max_steps=4, max_new_tokens=8, step_tokens=STEPS,
                  sampler=Sampler(temperature=1.0))
    b, grown = r.budget, sum(sum(i["tree"]["expanded"]) for i in r.info)
    assert b.generated == 3 * grown                                        # one token per child (one-token steps)
    assert b.prefilled == sum(map(len, PROMPTS)) and b.policy_calls == 1 + 4 and b.scorer_calls == b.policy_calls
    assert b.scorer_tokens == b.generated + b.prefilled and b.wall_s > 0
    assert b.policy_flops == 2.0 * meta.budget.param_count(Fake().params) * (b.generated + b.prefilled)
    with pytest.raises(ValueError, match="do not fit in the budget"):
        meta.mcts(Fake(), PROMPTS, scorer=PRM, n=3, simulations=4, max_steps=4, max_new_tokens=8, step_tokens=STEPS,
                  budget=meta.Budget(max_generated=3 * 3 * 8 - 1))


def test_the_capacity_bounds_the_depth_not_the_simulations():
    # one prompt, one-token steps: a node d steps deep holds d tokens, so with a limit of 3 a node 3 deep is
    # done there and cannot be expanded, however many simulations run
    r = meta.mcts(Fake(), [[1, 2]], scorer=PRM, n=2, simulations=12, exploration=0.2, max_steps=8, max_new_tokens=3,
                  step_tokens=STEPS, sampler=Sampler(temperature=1.0))
    depth, order, expanded, done = tree(r, 0, "depth", "order", "expanded", "done")
    assert r.info[0]["simulations"] == 12 and max(depth) == 3
    ended = [t.split()[-1] == str(EOS) for t in r.texts[0]]               # done: EOS, not the limit
    assert [done[m] for m in r.info[0]["nodes"]] == ended
    assert any(depth[m] == 3 and not e for m, e in zip(r.info[0]["nodes"], ended))     # some at their limit
    assert [e for m, e in zip(order, expanded) if depth[m] == 3] == [False] * sum(depth[m] == 3 for m in order) != []


@pytest.mark.parametrize("rollout", [False, True])
def test_a_prompts_tree_is_the_same_whatever_else_is_in_the_batch(rollout):
    # steps of random length (token 3 ends one) and a limit some nodes reach: a prompt whose nodes run long
    # must not take slots from another's children (each node ends at its own limit, mid-step if need be)
    common = dict(scorer=PRM, n=3, simulations=8, max_steps=6, max_new_tokens=7, seed=4, step_tokens=[3],
                  sampler=Sampler(temperature=1.0), rollout=rollout)
    together = meta.mcts(Fake(), PROMPTS, **common)
    assert max(max(row) for row in together.lengths) == 7
    for g, prompt in enumerate(PROMPTS):
        alone = meta.mcts(Fake(), [prompt], **common)
        assert alone.texts[0] == together.texts[g] and alone.info[0] == together.info[g]


def test_a_budget_limit_stops_the_simulations_that_might_pass_it():
    # each simulation could draw 3 prompts x n=3 x 8 slots = 72 tokens: with 81 left, it runs while at most
    # 9 are drawn: the first simulation draws 9 (a token per child), the second more, and the search stops
    r = meta.mcts(Fake(), PROMPTS, scorer=PRM, n=3, simulations=6, max_steps=4, max_new_tokens=8, step_tokens=STEPS,
                  budget=meta.Budget(max_generated=81))
    assert [i["simulations"] for i in r.info] == [2] * 3 and 9 < r.budget.generated <= 18


@pytest.mark.parametrize("kwargs, message", [
    (dict(simulations=0), "simulations must be"),
    (dict(n=0), "n must be"),
    (dict(max_steps=0), "max_steps must be"),
    (dict(max_new_tokens=0), "max_new_tokens must be"),
    (dict(exploration=-1.0), "exploration must be a finite number >= 0"),
    (dict(exploration=float("inf")), "exploration must be a finite number >= 0"),
    (dict(exploration=True), "exploration must be a finite number >= 0"),
    (dict(rollout=1), "rollout must be"),
    (dict(scorer=Fake()), "scorer must be a reward"),
    (dict(scorer="prm"), "scorer must be a reward"),
    (dict(final="mode"), "final must be"),
    (dict(step_tokens="\n"), "step_tokens need a model"),
    (dict(scorer=lambda p, t, r, b: [[float("inf")] * 2] * 3), "finite scores"),
])
def test_bad_mcts_arguments_are_value_errors(kwargs, message):
    args = dict(scorer=PRM, n=2, simulations=2, max_steps=2, max_new_tokens=4, step_tokens=STEPS) | kwargs
    with pytest.raises(ValueError) as err:
        meta.mcts(Fake(), PROMPTS, **args)
    assert message in str(err.value)
