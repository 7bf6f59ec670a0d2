"""Monte Carlo tree search over reasoning steps, guided by a process reward model.

A node of the tree is a partial rollout that ends at a step delimiter (by default ``"\\n"``); its
children continue it by one step each. Every node is one row of a *node store*, a
``DecodeState`` of ``M = 1 + simulations * n`` rows per prompt (row 0: the root, the prompt with
no tokens of its own; the ``n`` children of a node are consecutive rows, made at one expansion):
a node's KV lives in the store's rollout block and is selected by its row, never recomputed. Per
prompt the tree holds each node's parent, depth, first child (-1: none yet), visits ``N``, the
sum ``W`` of the values backed up through it (``Q = W / N``), its own score (the scorer's value of
its text) and whether it can be expanded (it ended a step: not finished, fewer than
``max_steps`` steps deep, below its limit of ``max_new_tokens`` tokens).

One simulation, for every prompt at once:

1. **Selection**: from the root, while the node has children, go to the child ``c`` with the
   largest ``UCT(c) = Q(c) + exploration * sqrt(ln N(node) / N(c))`` (float32; ties go to the
   lower row, the child made first), at most ``max_steps`` times.
2. **Expansion**: a leaf that can be expanded gets ``n`` children: ``n`` copies of its row are
   gathered into a working state of ``n`` rows per prompt (``engine.select(rekey=True)``: the
   copies diverge, reproducibly), decoded to the end of their next step (``engine.step.
   decode_loop``), scored, and scattered into the store's next ``n`` free rows
   (``engine.cache.put_rollouts``). Only the working rows are decoded: a simulation costs ``n``
   rows' decode, not ``M``, and no KV is recomputed. A child starts with ``N = 1`` and ``W`` =
   its score. A reward-model scorer's score is ``sigmoid`` of its track's score at the child's
   last token; with ``rollout=True`` it is that at the end of a *rollout*: a copy of the child
   decoded without step delimiters until it finishes (or reaches its limit), then
   thrown away (the store keeps the child at its step's end).
3. **Backup**: the children's **mean** score (an expansion), or the leaf's own score again (a
   leaf that cannot be expanded: EOS, a stop token, ``max_steps`` deep, or at its limit), is added to
   ``W``, and 1 to ``N``, of the leaf and of every node above it up to the root. A leaf that
   cannot be expanded stays a leaf: each time selection reaches it, its score is backed up again.

**Capacity.** ``max_new_tokens`` is the most tokens a node holds, its own limit: a child that
reaches it is done there (mid-step if need be) and cannot be expanded. The store's rows have that
many slots. An expansion decodes its working rows in a wider block, ``meta.search.slots(
max_new_tokens)``, packed first (``DecodeState.packed``: each row's tokens and KV moved to its first
slots, nothing recomputed) and again when a whole node might not fit after the slots used, so a
prompt's tree does not depend on the prompts beside it and the search is not bounded by
``simulations x`` a step; the children are packed back into ``max_new_tokens`` slots when stored.
With a budget limit (``Budget(max_generated=)``) a simulation runs only while its worst case, ``G x
n x max_new_tokens`` tokens, fits in what is left (``info[g]["simulations"]``: how many ran).

**Result.** The candidates are the tree's leaves (nodes without children, in row order), each
with its own score; ``final="best"`` picks the highest-scoring *finished* candidate (EOS or a stop
token) with an answer, or, where no candidate with an answer finished, the highest-scoring
candidate with an answer (ties: the lower row); ``"vote"`` the answer with the largest total
score over the same candidates. ``info[g]``: ``simulations``; ``nodes``, each candidate's row;
``node``, the chosen one's; ``tree``, per node (row ``0 ..`` used): ``parent``, ``depth``,
``visits``, ``value`` (``Q``), ``score``, ``done`` (it ended with EOS or a stop token), and per
simulation the leaf it reached (``order``) and whether it expanded it (``expanded``).

``scorer`` is a reward model (``config.score_head``), which rides in the decode step as a track:
the whole search is one compiled program. A callable ``scorer(prompts, texts, references, budget)
-> [G][n]`` runs on the host, once per simulation, on every prompt's ``n`` new children (a prompt
whose leaf cannot be expanded gives copies of the leaf, whose scores are not used); its scores
must be finite.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import engine
import sharding
from engine.cache import put_rollouts
from engine.checks import check_bool, check_int
from engine.decode import decoding, model_stack, place_model
from meta.common import extract, finish, score
from meta.result import Result
from meta.search import TRACK, _round, _texts, checked, pick, slots, spend


def _at(x, i):
    """``x`` [G, M] at the rows ``i`` [G, ...] of each prompt."""
    return jnp.take_along_axis(x, i.reshape(i.shape[0], -1), axis=1).reshape(i.shape)


def new_tree(groups: int, nodes: int, simulations: int) -> dict:
    """The tree of each of ``groups`` prompts before the first simulation: the root only (row 0, open),
    ``nodes`` rows in all; with the log of ``simulations`` simulations."""
    g, m = groups, nodes
    return {"parent": jnp.full((g, m), -1, jnp.int32), "depth": jnp.zeros((g, m), jnp.int32),
            "first": jnp.full((g, m), -1, jnp.int32), "visits": jnp.zeros((g, m), jnp.int32),
            "total": jnp.zeros((g, m), jnp.float32), "score": jnp.zeros((g, m), jnp.float32),
            "open": jnp.zeros((g, m), bool).at[:, 0].set(True), "used": jnp.ones((g,), jnp.int32),
            "order": jnp.zeros((simulations, g), jnp.int32), "grew": jnp.zeros((simulations, g), bool),
            "generated": jnp.zeros((g,), jnp.int32), "calls": jnp.int32(0), "t": jnp.int32(0)}


def descend(tree: dict, exploration, n: int, max_steps: int):
    """Selection: each prompt's leaf [G], reached from the root by the largest UCT (see the module docstring)."""
    def down(_, node):
        first = _at(tree["first"], node)
        kids = jnp.maximum(first, 0)[:, None] + jnp.arange(n, dtype=jnp.int32)
        visits = jnp.maximum(_at(tree["visits"], kids), 1).astype(jnp.float32)
        log_n = jnp.log(jnp.maximum(_at(tree["visits"], node), 1).astype(jnp.float32))
        uct = _at(tree["total"], kids) / visits + exploration * jnp.sqrt(log_n[:, None] / visits)
        return jnp.where(first >= 0, _at(kids, jnp.argmax(uct, axis=1)), node)     # argmax: the first of ties

    return jax.lax.fori_loop(0, max_steps, down, jnp.zeros(tree["used"].shape, jnp.int32))


def backup(tree: dict, leaf, value, max_steps: int) -> dict:
    """``tree`` with ``value`` [G] added to ``W`` and 1 to ``N`` of each prompt's ``leaf`` and every node above it."""
    g, m = tree["parent"].shape
    rows = jnp.arange(g)

    def up(_, c):
        node, visits, total = c
        at = jnp.where(node >= 0, node, m)                                           # m: past the root, dropped
        return (jnp.where(node >= 0, _at(tree["parent"], jnp.maximum(node, 0)), -1),
                visits.at[rows, at].add(1, mode="drop"), total.at[rows, at].add(value, mode="drop"))

    _, visits, total = jax.lax.fori_loop(0, max_steps + 1, up, (leaf, tree["visits"], tree["total"]))
    return dict(tree, visits=visits, total=total)


def _expand(stack, params, store, tree, how, ending, exploration, *, n: int, max_steps: int, mesh=None):
    """Selection and the decode of an expansion: each prompt's leaf [G], whether it grows [G], the ``n``
    children of each (a working state [G, n] in the store's slots, packed), the state that scores them
    (the children, or their rollouts to the end: ``ending``, a Decoding without step delimiters; ``None``:
    no rollout), and ``tree`` with the tokens drawn and the calls counted. The working rows decode in a
    block of ``slots(max_new_tokens)`` (see Capacity in the module docstring)."""
    g, size, pad = store.shape[0], store.cache.size, stack[0][2].pad_id
    leaf = descend(tree, exploration, n, max_steps)
    grow = _at(tree["open"], leaf)
    work = engine.select(store, jnp.repeat(leaf[:, None], n, axis=1), rekey=True)
    work = dataclasses.replace(work, done=work.done | ~jnp.repeat(grow, n))   # a leaf that cannot grow: no decode
    work, drawn, _, calls = _round(stack, params, work.resized(slots(size), pad).compacted(), how, mesh)
    scored, more, rolled = work, jnp.zeros_like(drawn), 0
    if ending is not None:
        scored, more, _, rolled = _round(stack, params, work, ending, mesh)
    tree = dict(tree, generated=tree["generated"] + jnp.sum((drawn + more).reshape(g, n), axis=1),
                calls=tree["calls"] + calls + rolled)
    return tree, leaf, grow, work.packed().resized(size, pad), scored


def _grow(store, tree, leaf, grow, work, scores, *, max_steps: int, mesh=None):
    """Expansion's end and backup: the children ``work`` [G, n] with their ``scores`` [G, n] put in the
    store's next free rows (where ``grow``), and the value backed up from each ``leaf``."""
    g, m = tree["parent"].shape
    n = scores.shape[1]
    used, rows = tree["used"], jnp.arange(g)[:, None]
    kids = jnp.where(grow[:, None], used[:, None] + jnp.arange(n, dtype=jnp.int32), m)          # m: dropped
    store = put_rollouts(store, jnp.where(grow[:, None], rows * m + kids, g * m).reshape(-1), work)
    store = sharding.constrain(store, store.axes(), mesh)
    put = lambda x, v: x.at[rows, kids].set(jnp.broadcast_to(v, kids.shape).astype(x.dtype), mode="drop")
    depth = _at(tree["depth"], leaf) + 1
    fresh = (work.paused & ~work.done).reshape(g, n) & (depth < max_steps)[:, None]
    value = jnp.where(grow, jnp.mean(scores, axis=1), _at(tree["score"], leaf))
    t = tree["t"]
    tree = dict(tree, parent=put(tree["parent"], leaf[:, None]), depth=put(tree["depth"], depth[:, None]),
                visits=put(tree["visits"], 1), total=put(tree["total"], scores), score=put(tree["score"], scores),
                open=put(tree["open"], fresh), first=tree["first"].at[rows[:, 0], jnp.where(grow, leaf, m)].set(
                    used, mode="drop"), used=used + n * grow,
                order=tree["order"].at[t].set(leaf), grew=tree["grew"].at[t].set(grow), t=t + 1)
    return store, backup(tree, leaf, value, max_steps)


_expand_jit = jax.jit(_expand, static_argnums=(0,), static_argnames=("n", "max_steps", "mesh"))
_grow_jit = jax.jit(_grow, static_argnames=("max_steps", "mesh"), donate_argnums=(0,))


@partial(jax.jit, static_argnames=("stack", "n", "max_steps", "mesh"), donate_argnums=(2,))
def _mcts(stack, params, store, tree, how, ending, exploration, limit, *, n: int, max_steps: int, mesh=None):
    """The whole search with a reward-model track, in one compiled program (``limit``: the most tokens drawn
    before a simulation still fits in the budget)."""
    def body(c):
        store, tree = c
        tree, leaf, grow, work, scored = _expand(stack, params, store, tree, how, ending, exploration, n=n,
                                                 max_steps=max_steps, mesh=mesh)
        scores = jax.nn.sigmoid(engine.track_scores(scored, TRACK))
        return _grow(store, tree, leaf, grow, work, scores, max_steps=max_steps, mesh=mesh)

    simulations = tree["order"].shape[0]
    cond = lambda c: (c[1]["t"] < simulations) & (jnp.sum(c[1]["generated"]) <= limit)
    return jax.lax.while_loop(cond, body, (store, tree))


def mcts(model, prompts, *, scorer, n: int, simulations: int, exploration: float = 0.1, rollout: bool = False,
         max_steps: int, max_new_tokens: int, sampler=None, seed: int = 0, budget=None, references=None, answer=None,
         final: str = "best", step_tokens="\n", stop_tokens=None, mesh=None) -> Result:
    """Monte Carlo tree search over reasoning steps (see the module docstring): ``simulations`` rounds of
    UCT selection, expansion of the leaf into ``n`` children sampled one step each, and backup of
    their mean score. ``exploration``: UCT's constant (>= 0; 0 is greedy on ``Q``; the default, 0.1, was the
    best of 0.1, 0.3 and 1.0 on 100 hard tiny-arith val problems: docs/search.md); ``rollout``: value
    a child by the scorer's score at the end of a rollout from it instead of at the end of its step;
    ``max_steps``: the tree's depth; ``max_new_tokens``: the most tokens a node holds (its rollout
    block's slots; see Capacity in the module docstring). Returns each prompt's
    candidates (the tree's leaves) with their scores, the one chosen (``final``: ``"best"`` or
    ``"vote"``), the tree (``info``) and the budget."""
    check_int("simulations", simulations, 1)
    if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or not 0 <= exploration < math.inf:
        raise ValueError(f"exploration must be a finite number >= 0, got {exploration!r}")
    check_bool("rollout", rollout)
    budget, sampler, t0, tracks, ids = checked(model, prompts, scorer=scorer, n=n, max_steps=max_steps,
                                               max_new_tokens=max_new_tokens, sampler=sampler, references=references,
                                               budget=budget, final=final, step_tokens=step_tokens,
                                               stop_tokens=stop_tokens)
    model = place_model(model, mesh)
    g, m = len(ids), 1 + simulations * n
    store = engine.start(model, ids, capacity=max_new_tokens, n=m, seed=seed, tracks=tracks, mesh=mesh)
    template = engine.select(store, np.zeros((g, n), int))          # the working state's shape, for its sampler
    common = dict(sampler=sampler, stop_tokens=stop_tokens, mesh=mesh, max_length=max_new_tokens)
    how = decoding(model, template, step_tokens=step_tokens, **common)
    ending = decoding(model, template, **common) if rollout else None
    del template
    stack, params = model_stack(model, tracks)
    tree, c = new_tree(g, m, simulations), jnp.float32(exploration)
    # a simulation's G x n working rows draw at most max_new_tokens each (a step and its rollout fill at most the block)
    left = 2 ** 31 - 1 if budget.max_generated is None else budget.max_generated - budget.generated
    limit = min(2 ** 31 - 1, left - g * n * max_new_tokens)
    if tracks:
        store, tree = _mcts(stack, params, store, tree, how, ending, c, limit, n=n, max_steps=max_steps, mesh=mesh)
    else:
        while int(tree["t"]) < simulations and int(jnp.sum(tree["generated"])) <= limit:
            tree, leaf, grow, work, scored = _expand_jit(stack, params, store, tree, how, ending, c, n=n,
                                                         max_steps=max_steps, mesh=mesh)
            s = np.asarray(score(scorer, prompts, _texts(model, scored), references, budget), np.float64)
            if not np.isfinite(s).all():
                raise ValueError("mcts needs finite scores from its scorer (they are summed up the tree)")
            store, tree = _grow_jit(store, tree, leaf, grow, work, jnp.asarray(s, jnp.float32), max_steps=max_steps,
                                    mesh=mesh)
    return _result(model, tracks.get(TRACK), prompts, ids, store, tree, how.stops, answer, final, budget, t0)


def _result(model, track, prompts, ids, store, tree, stops, answer, final, budget, t0) -> Result:
    """The Result of a finished search: the leaves as candidates, the tree in ``info``, the budget counted
    (a node is *done* where it ended with EOS or a stop token, one of ``stops``: not at its limit)."""
    t = {k: np.asarray(v) for k, v in tree.items()}
    g, m = t["parent"].shape
    spend(budget, model, track, ids, int(t["generated"].sum()), 1 + int(t["calls"]))
    every, lengths = _texts(model, store), np.asarray(store.cache.length)
    last = np.asarray(store.tokens)[np.arange(g * m), np.maximum(lengths - 1, 0)]     # the store's rows are packed
    done = (np.asarray(store.done) & (lengths > 0) & np.isin(last, np.asarray(stops))).reshape(g, m)
    lengths = lengths.reshape(g, m)
    nodes = [[i for i in range(int(t["used"][p])) if t["first"][p, i] < 0] for p in range(g)]
    texts = [[every[p][i] for i in rows] for p, rows in enumerate(nodes)]
    answers = extract(answer, texts)
    scores = [[float(t["score"][p, i]) for i in rows] for p, rows in enumerate(nodes)]
    pool = []                                      # the finished candidates with an answer, where there are some
    for p, rows in enumerate(nodes):
        ended = [done[p, i] and a is not None for i, a in zip(rows, answers[p])]
        pool.append([a if e or not any(ended) else None for a, e in zip(answers[p], ended)])
    picks, sims = pick(pool, scores, final), int(t["t"])
    info = []
    for p, rows in enumerate(nodes):
        used = int(t["used"][p])
        info.append({"simulations": sims, "nodes": rows, "node": None if picks[p][1] is None else rows[picks[p][1]],
                     "tree": {"parent": t["parent"][p, :used].tolist(), "depth": t["depth"][p, :used].tolist(),
                              "visits": t["visits"][p, :used].tolist(),
                              "value": (t["total"][p, :used] / t["visits"][p, :used]).tolist(),
                              "score": t["score"][p, :used].tolist(), "done": done[p, :used].tolist(),
                              "order": t["order"][:sims, p].tolist(), "expanded": t["grew"][:sims, p].tolist()}})
    return Result(method="mcts", prompts=list(prompts), answers=[q[0] for q in picks], chosen=[q[1] for q in picks],
                  texts=texts, lengths=[[int(lengths[p, i]) for i in rows] for p, rows in enumerate(nodes)],
                  extracted=answers, scores=scores, votes=[q[2] for q in picks], budget=finish(budget, t0), info=info)
