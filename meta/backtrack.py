"""Backtracking: decode step by step, and resample a step the process scorer rejects.

Each round every unfinished rollout decodes to the end of its next step (a step delimiter pauses
it; an EOS ends it) and is scored, by a process reward model riding along as a track (no
recompute) or by a callable on the partial texts. A rollout whose new step scores below
``threshold`` is cut back to before that step with ``engine.rewind`` and gets a fresh key
(``engine.select(rekey=mask)``), so the next round draws that step again, differently; each
rollout does so at most ``max_backtracks`` times, and then keeps what it draws. Nothing already in
the cache is recomputed (a rewind feeds the last kept token once more), and ``engine.compact``
frees the slots of the steps cut back and of the rows that idled while others finished a step.

Each rollout has its own limit of ``max_new_tokens`` tokens (``decode(max_length=)``; the cache has
twice the slots, so a round always fits after the longest rollout once the cache is compacted): a
rollout's text depends on its key and the scorer only, not on the prompts that share the call.
"""
from __future__ import annotations

import numpy as np

import engine
from engine.checks import check_int
from engine.decode import place_model
from meta.budget import param_count
from meta.common import check_threshold, extract, finish, score
from meta.result import Result
from meta.scoring import sigmoid
from meta.search import TRACK, _texts, checked, pick, slots, spend


def backtrack(model, prompts, *, scorer, threshold: float, max_backtracks: int, max_steps: int,
              max_new_tokens: int, n: int = 1, sampler=None, seed: int = 0, budget=None, references=None,
              answer=None, final: str = "best", step_tokens="\n", stop_tokens=None, mesh=None) -> Result:
    """``n`` rollouts per prompt, each step kept only if ``scorer`` gives it at least ``threshold``.

    ``scorer``: a process reward model (``config.score_head``, e.g. ``tiny-arith-prm``; its score is
    ``sigmoid`` of its logit) or a callable process scorer ``scorer(prompts, texts, references,
    budget) -> [G][N]`` on the texts so far. ``max_steps``: decode rounds, retries included;
    ``max_new_tokens``: each rollout's limit (a rollout that reaches it ends there, mid-step if need
    be; the rollouts beside it do not change where). The chosen rollout is the best-scored one with
    an answer (``final="best"``) or the answer with the largest total score (``"vote"``).
    ``info[g]`` has each rollout's ``backtracks`` and the rounds' ``events``: ``[round, rollout,
    rejected score]``. Budget: every drawn token counts, the rejected ones too.
    """
    budget, sampler, t0, tracks, ids = checked(model, prompts, scorer=scorer, n=n, max_steps=max_steps,
                                               max_new_tokens=max_new_tokens, sampler=sampler, references=references,
                                               budget=budget, final=final, step_tokens=step_tokens,
                                               stop_tokens=stop_tokens)
    check_threshold(threshold)
    check_int("max_backtracks", max_backtracks, 0)
    model, g = place_model(model, mesh), len(ids)
    cap = max_new_tokens                # each rollout's own limit
    state = engine.start(model, ids, capacity=cap, slots=slots(cap), n=n, seed=seed, tracks=tracks, mesh=mesh)
    left, events, generated, refed, calls = np.full((g, n), max_backtracks), [[] for _ in ids], 0, 0, 1

    def scores_of(state):
        if tracks:
            return np.asarray(sigmoid(engine.track_scores(state, TRACK)), np.float64)
        return np.asarray(score(scorer, prompts, _texts(model, state), references, budget))

    for step in range(max_steps):
        before, live = np.asarray(state.cache.length).reshape(g, n), ~np.asarray(state.done).reshape(g, n)
        if not live.any():
            break
        room = int((cap - before)[live].max())
        if int(state.cache.index) + room + 1 > state.cache.size:      # the round and a retry must fit
            state = engine.compact(state)                              # the next write after the longest row
        at = int(state.cache.index)
        state = engine.decode(model, state, max_new_tokens=room, sampler=sampler, step_tokens=step_tokens,
                              stop_tokens=stop_tokens, tracks=tracks, mesh=mesh, max_length=cap)
        now = np.asarray(state.cache.length).reshape(g, n)
        calls += int(state.cache.index) - at
        generated += int((now - before).sum())
        scores = scores_of(state)
        bad = (now > before) & (scores < threshold) & (left > 0)
        if bad.any():
            for i, r in zip(*np.nonzero(bad)):
                events[i].append([step, int(r), float(scores[i, r])])
            state = engine.rewind(model, state, np.where(bad, before, now), tracks=tracks)
            state = engine.select(state, np.tile(np.arange(n), (g, 1)), rekey=bad)
            left -= bad
            refed, calls = refed + int((bad & (before > 0)).sum()), calls + 1
    scores = scores_of(state)
    spend(budget, model, tracks.get(TRACK), ids, generated, calls)
    budget.prefilled += refed                     # a rewound rollout's last kept token, fed again (tracks too)
    budget.policy_flops += 2.0 * param_count(model.params) * refed
    if tracks:
        budget.scorer_tokens += refed
        budget.scorer_flops += 2.0 * param_count(scorer.params) * refed
    texts, lengths = _texts(model, state), np.asarray(state.cache.length).reshape(g, n)
    answers = extract(answer, texts)
    picks = pick(answers, scores.tolist(), final)
    info = [{"backtracks": (max_backtracks - left[i]).tolist(), "events": events[i]} for i in range(g)]
    return Result(method="backtrack", prompts=list(prompts), answers=[p[0] for p in picks],
                  chosen=[p[1] for p in picks], texts=texts, lengths=lengths.tolist(), extracted=answers,
                  scores=scores.tolist(), votes=[p[2] for p in picks], budget=finish(budget, t0), info=info)
