"""Step-level search guided by a process reward model: beam search, DVTS, REBASE, particle filtering.

The four are one loop that differs only in its *rule*, how a step's survivors are chosen. Each
step, every unfinished rollout is decoded to the end of its next step (a step delimiter, by
default ``"\\n"``, pauses it), every rollout is scored, and each prompt's ``n`` rows are filled
again from the scored ones: row ``m`` of the next step continues ``parents[g, m]``, gathered with
``engine.select(rekey=True)`` so that copies diverge. The rules:

* ``step_beam_search``: the best ``n / beam_width`` live rows get ``beam_width`` children each;
* ``dvts``: ``n / beam_width`` independent subtrees of ``beam_width`` rows, each keeping its best;
* ``rebase``: the live rows share the slots in proportion to ``softmax(score / temperature)``;
* ``particle_filter``: sequential Monte Carlo, resampled when the effective sample size is low.

In the first three a finished rollout (EOS) keeps its own row, once: it is a candidate, no longer
a parent; the slots left are the live rows'. The particle filter resamples finished particles
like the others. Ties go to the lower row. Parents are listed in ascending order, so each step's
tree is canonical; ``Result.info[g]["tree"]`` records every step's scores and parents.

``scorer`` is a reward model (``config.score_head``, e.g. ``tiny-arith-prm``) or a callable. A
reward model rides in the decode step as a track (``engine.start(tracks=)``): its score of a
partial rollout is read from the state, ``sigmoid`` of its logit, and the whole search is one
compiled program. A callable ``scorer(prompts, texts, references, budget) -> [G][N]`` (e.g.
``meta.tasks.arith_verifiers.process_verifier()``, called on the partial texts) runs on the host
after every step: the loop leaves the device once per step to decode and score the texts.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import engine
from engine.checks import check_int, check_prompts, step_ids, stop_ids
from engine.decode import decoding, model_stack, place_model
from engine.state import DecodeState
from engine.step import decode_loop
from meta.budget import param_count
from meta.common import check_scorer, extract, finish, score, setup
from meta.draw import rollout_texts
from meta.result import Result
from meta.vote import winner

TRACK = "scorer"          # the reward model's track name
SALT = 0x5EA4C4           # resampling keys: fold_in(fold_in(rollout 0's key, SALT), step)
RESAMPLING = ("systematic", "multinomial")
FINAL = ("best", "vote")


@dataclasses.dataclass(frozen=True)
class Rule:
    """How a step's survivors are chosen; static, part of the compiled program."""
    kind: str                        # "beam", "dvts", "rebase" or "smc"
    width: int = 1                   # beam: children per kept row; dvts: rows per subtree
    temperature: float = 1.0         # rebase: softmax temperature over scores
    threshold: float = 0.5           # smc: resample when ESS < threshold * n
    resampling: str = "systematic"   # smc: "systematic" or "multinomial"


def parents_of(counts):
    """Row ``m``'s parent [..., N] from each row's number of children ``counts`` [..., N] (summing to N):
    parents in ascending order, each repeated ``counts`` times."""
    n = counts.shape[-1]
    ends = jnp.cumsum(counts, axis=-1)
    return jax.vmap(lambda e: jnp.searchsorted(e, jnp.arange(n), side="right"))(ends.reshape(-1, n)).reshape(
        counts.shape).astype(jnp.int32)


def _rank(key, live):
    """Each row's rank [G, N] among the live rows of its prompt by ``key`` ascending (ties: lower row
    first); finished rows rank after every live one."""
    order = jnp.argsort(jnp.where(live, key, jnp.inf), axis=-1, stable=True)
    return jnp.argsort(order, axis=-1)


def beam_counts(scores, live, width: int):
    """Children per row [G, N]: the best live rows ``width`` each until the free slots (``N`` minus the
    finished rows) are used up; a finished row keeps itself."""
    free = jnp.sum(live, axis=-1, keepdims=True)
    return jnp.where(live, jnp.clip(free - _rank(-scores, live) * width, 0, width), 1)


def rebase_counts(scores, live, temperature: float):
    """Children per row [G, N]: the free slots shared among the live rows by ``softmax(score / temperature)``,
    rounded down, the slots left to the largest remainders; a finished row keeps itself."""
    free = jnp.sum(live, axis=-1, keepdims=True)
    share = jax.nn.softmax(jnp.where(live, scores / temperature, -jnp.inf), axis=-1)
    share = jnp.where(live, jnp.nan_to_num(share), 0.0) * free
    base = jnp.floor(share)
    left = free - jnp.sum(base, axis=-1, keepdims=True)
    return jnp.where(live, base + (_rank(base - share, live) < left), 1).astype(jnp.int32)


def resample(keys, logw, how: str):
    """Parents [G, N] drawn with probabilities ``softmax(logw)`` per prompt (keys [G]), ascending:
    ``"multinomial"`` (N independent draws) or ``"systematic"`` (one uniform offset, N evenly spaced
    points on the weights' cumulative sum)."""
    n = logw.shape[-1]

    def one(key, lw):
        if how == "multinomial":
            return jnp.sort(jax.random.categorical(key, lw, shape=(n,)))
        points = (jax.random.uniform(key) + jnp.arange(n)) / n                  # in [0, 1)
        edges = jnp.cumsum(jax.nn.softmax(lw))
        return jnp.searchsorted(edges / edges[-1], points, side="right")   # the last edge exactly 1: never n

    return jax.vmap(one)(keys, logw).astype(jnp.int32)


def ess(logw):
    """Effective sample size [G] of log-weights [G, N], as a fraction of N: ``(sum w)^2 / (N sum w^2)``."""
    w = jax.nn.softmax(logw, axis=-1)
    return 1.0 / (logw.shape[-1] * jnp.sum(w * w, axis=-1))


def choose(rule: Rule, scores, live, carry, keys, go):
    """This step's parents [G, N] for the next step's rows, from its ``scores`` [G, N] (``live``: rows not
    finished; ``go`` [G]: prompts that continue, the others keep their rows); with the rule's
    ``carry`` (the particle filter's log-weights, each row's last log-score and its step's log
    importance ratio, [G, N]) updated, whether each prompt was resampled, and its ESS [G]."""
    logw, before, ratio = carry
    g, n = scores.shape
    keep = lambda parents: jnp.where(go[:, None], parents, jnp.arange(n))
    none, full = jnp.zeros((g,), bool), jnp.ones((g,))
    if rule.kind == "beam":
        return keep(parents_of(beam_counts(scores, live, rule.width))), (logw, before), none, full
    if rule.kind == "dvts":
        w = rule.width
        counts = beam_counts(scores.reshape(-1, w), live.reshape(-1, w), w)
        parents = parents_of(counts).reshape(g, n // w, w) + (jnp.arange(n // w) * w)[None, :, None]
        return keep(parents.reshape(g, n)), (logw, before), none, full
    if rule.kind == "rebase":
        return keep(parents_of(rebase_counts(scores, live, rule.temperature))), (logw, before), none, full
    # smc, the scorer as potential: w *= score_t / score_{t-1} * p_model / q_proposal (scores floored at 1e-30)
    now = jnp.log(jnp.maximum(scores, 1e-30))
    logw = logw + now - before + ratio
    size = ess(logw)
    again = go & (size < rule.threshold)
    parents = jnp.where(again[:, None], resample(keys, logw, rule.resampling), jnp.arange(n))
    logw = jnp.where(again[:, None], 0.0, logw)
    return parents, (logw, jnp.take_along_axis(now, parents, axis=1)), again, size


def slots(max_new_tokens: int) -> int:
    """The rollout block's slots for step-level rollouts of ``max_new_tokens`` each: a whole rollout's
    after the longest one (once compacted: see :func:`_round`), and a token a rewind feeds again."""
    return 2 * max_new_tokens + 1


def _advance(stack, params, state, how, mesh):
    """Decode every unfinished row to the end of its next step: (state, tokens drawn [B], the step's
    log importance ratio sum(log p_model - log q_proposal) [B])."""
    before, at = state.cache.length, state.cache.index
    state = decode_loop(stack, params, state, how, state.cache.size, mesh=mesh)
    new = state.drawn & (jnp.arange(state.tokens.shape[1])[None] >= at)
    ratio = jnp.sum(jnp.where(new, state.logprobs - state.sample_logprobs, 0.0), axis=1)
    return state, state.cache.length - before, ratio


def _round(stack, params, state, how, mesh):
    """:func:`_advance` with every row held to its own limit ``how.max_length``, and the decode steps
    it ran. When a whole rollout's slots might not fit after those used, the cache is compacted
    first (freeing the slots rows left idle while others finished a step; :func:`slots`), so a step
    never runs out of room and a row's steps do not depend on the batch."""
    crowded = state.cache.index + how.max_length > state.cache.size
    state = jax.lax.cond(crowded, DecodeState.compacted, lambda s: s, state)
    at = state.cache.index
    state, drawn, ratio = _advance(stack, params, state, how, mesh)
    return state, drawn, ratio, state.cache.index - at


def _select(rule: Rule, state, scores, drawn, ratio, log, t, keys, max_steps: int):
    """Choose and gather the next step's rows (a prompt with no live row keeps its rows, and so does
    every prompt after the last step); record the step in ``log``."""
    g, n = state.shape
    live = ~state.done.reshape(g, n)
    go = (t + 1 < max_steps) & jnp.any(live, axis=1)
    step_keys = jax.vmap(jax.random.fold_in)(keys, jnp.full(keys.shape, t, jnp.uint32))
    parents, (logw, before), again, size = choose(rule, scores, live, (log["logw"], log["before"], ratio.reshape(g, n)),
                                                  step_keys, go)
    log = dict(log, logw=logw, before=before, generated=log["generated"] + drawn,
               parents=log["parents"].at[t].set(parents), scores=log["scores"].at[t].set(scores),
               resampled=log["resampled"].at[t].set(again), ess=log["ess"].at[t].set(size),
               steps=log["steps"] + go)
    return engine.select(state, parents, rekey=True), log


_round_jit = jax.jit(_round, static_argnums=(0, 4), donate_argnums=(2,))
_select_jit = jax.jit(_select, static_argnums=(0, 8), donate_argnums=(1,))


@partial(jax.jit, static_argnames=("stack", "rule", "max_steps", "mesh"), donate_argnums=(2,))
def _search(stack, params, state, how, keys, log, *, rule: Rule, max_steps: int, mesh=None):
    """The whole search with a reward-model track, in one compiled program."""
    def body(c):
        t, state, log = c
        state, drawn, ratio, calls = _round(stack, params, state, how, mesh)
        log = dict(log, calls=log["calls"] + calls)
        scores = jax.nn.sigmoid(engine.track_scores(state, TRACK))
        state, log = _select(rule, state, scores, drawn, ratio, log, t, keys, max_steps)
        return t + 1, state, log

    cond = lambda c: (c[0] < max_steps) & jnp.any(~c[1].done)
    return jax.lax.while_loop(cond, body, (jnp.int32(0), state, log))


def checked(model, prompts, *, scorer, n: int, max_steps: int, max_new_tokens: int, sampler, references,
            budget, final: str, step_tokens, stop_tokens):
    """The checks every step-level search makes before any work (``n`` rollouts of up to ``max_new_tokens``
    tokens per prompt at a time, checked against the budget). Returns ``(budget, sampler broadcast to
    [G, n], start time, the tracks: {TRACK: scorer} for a reward model, else {}, token ids)``."""
    budget, sampler, t0 = setup(prompts, n, references, budget, sampler)
    check_int("max_steps", max_steps, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    if final not in FINAL:
        raise ValueError(f"final must be one of {FINAL}, got {final!r}")
    track = bool(getattr(getattr(scorer, "config", None), "score_head", False))
    if not track and not callable(scorer):
        raise ValueError("scorer must be a reward model (a model with config.score_head, e.g. tiny-arith-prm), "
                         f"which rides along as a track, or a callable process scorer; got {type(scorer).__name__}")
    if not track:
        check_scorer(scorer, prompts, references)
    ids = check_prompts(model, list(prompts), max_new_tokens, "max_new_tokens")
    step_ids(model, step_tokens), stop_ids(model.config, stop_tokens)          # checked before any work
    if budget.affordable(len(ids) * n, max_new_tokens) < len(ids) * n:
        raise ValueError(f"{len(ids)} prompts x {n} rollouts x {max_new_tokens} tokens (the most it could draw) "
                         f"do not fit in the budget ({budget.max_generated - budget.generated} tokens left)")
    return budget, sampler, t0, {TRACK: scorer} if track else {}, ids


def search(model, prompts, *, rule: Rule, scorer, n: int, max_steps: int, max_new_tokens: int, sampler=None,
           seed: int = 0, budget=None, references=None, answer=None, final: str = "best", step_tokens="\n",
           stop_tokens=None, mesh=None, method: str = "search") -> Result:
    """Run the step-level search ``rule`` (see the module docstring; the public functions below name
    the rules). Returns every prompt's ``n`` final rollouts with their last scores, the one chosen
    (``final="best"``: the highest-scoring rollout with an answer; ``"vote"``: the answer with the
    largest total score) and the budget."""
    budget, sampler, t0, tracks, ids = checked(model, prompts, scorer=scorer, n=n, max_steps=max_steps,
                                               max_new_tokens=max_new_tokens, sampler=sampler, references=references,
                                               budget=budget, final=final, step_tokens=step_tokens,
                                               stop_tokens=stop_tokens)
    model = place_model(model, mesh)
    state = engine.start(model, ids, capacity=max_new_tokens, slots=slots(max_new_tokens), n=n, seed=seed,
                         tracks=tracks, mesh=mesh)
    how = decoding(model, state, sampler=sampler, stop_tokens=stop_tokens, step_tokens=step_tokens, mesh=mesh,
                   max_length=max_new_tokens)
    stack, params = model_stack(model, tracks)
    g = len(ids)
    keys = jax.vmap(jax.random.fold_in)(state.keys[::n], jnp.full((g,), SALT, jnp.uint32))
    log = {"logw": jnp.zeros((g, n)), "before": jnp.zeros((g, n)), "generated": jnp.zeros((g * n,), jnp.int32),
           "calls": jnp.int32(1),                        # policy forwards: the prefill, then one per decode step
           "parents": jnp.zeros((max_steps, g, n), jnp.int32), "scores": jnp.zeros((max_steps, g, n)),
           "resampled": jnp.zeros((max_steps, g), bool), "ess": jnp.zeros((max_steps, g)),
           "steps": jnp.ones((g,), jnp.int32)}          # a prompt's own steps: 1 + the steps after which it went on
    if tracks:
        steps, state, log = _search(stack, params, state, how, keys, log, rule=rule, max_steps=max_steps, mesh=mesh)
        scores = np.asarray(jax.nn.sigmoid(engine.track_scores(state, TRACK)), np.float64)
    else:
        steps = 0
        while steps < max_steps and bool(jnp.any(~state.done)):
            state, drawn, ratio, calls = _round_jit(stack, params, state, how, mesh)
            log = dict(log, calls=log["calls"] + calls)
            scores = np.asarray(score(scorer, prompts, _texts(model, state), references, budget))
            if rule.kind == "smc" and ((scores < 0) | (scores > 1)).any():
                raise ValueError("particle_filter needs scores in [0, 1] (probabilities) from its scorer")
            state, log = _select_jit(rule, state, jnp.asarray(scores, jnp.float32), drawn, ratio, log, steps, keys,
                                     max_steps)
            steps += 1
    return _result(method, rule, model, tracks.get(TRACK), prompts, ids, state, int(steps), log, scores,
                   answer, final, budget, t0)


def _texts(model, state) -> list:
    """Each rollout's text so far [G][N] (token ids joined by spaces for a model without a tokenizer)."""
    return rollout_texts(engine.rollouts(state, model.tokenizer))


def spend(budget, model, track, ids, generated: int, calls: int):
    """Count a search's work in ``budget``: ``generated`` tokens drawn, each prompt prefilled once, ``calls``
    policy forwards (the prefill and every decode step); a reward-model ``track`` (else ``None``) reads
    every prompt and drawn token in the same calls."""
    prefilled = sum(map(len, ids))
    budget.generated += generated
    budget.prefilled += prefilled
    budget.policy_calls += calls
    budget.policy_flops += 2.0 * param_count(model.params) * (generated + prefilled)
    if track is not None:
        budget.scorer_calls += calls
        budget.scorer_tokens += generated + prefilled
        budget.scorer_flops += 2.0 * param_count(track.params) * (generated + prefilled)


def pick(answers, scores, final: str):
    """Each prompt's ``(answer, chosen rollout, votes)`` from its rollouts' answers and scores (lists per
    prompt): ``final="best"`` the highest-scoring rollout with an answer (ties: the lower rollout),
    ``"vote"`` the answer with the largest total score (:func:`meta.vote.winner`)."""
    out = []
    for a, s in zip(answers, scores):
        if final == "vote":
            answer, first, tally = winner(a, s)
            out.append((answer, first, tally))
        else:
            have = [r for r in range(len(a)) if a[r] is not None]
            best = max(have, key=lambda r: (s[r], -r)) if have else None
            out.append((None if best is None else a[best], best, []))
    return out


def _result(method, rule, model, track, prompts, ids, state, steps, log, scores, answer, final, budget, t0) -> Result:
    """The Result of a finished search, its budget counted (see :class:`meta.Budget`)."""
    texts, lengths = _texts(model, state), np.asarray(state.cache.length).reshape(state.shape)
    answers, scores = extract(answer, texts), np.asarray(scores, np.float64)
    spend(budget, model, track, ids, int(np.sum(log["generated"])), int(log["calls"]))
    picks = pick(answers, scores.tolist(), final)
    keys = ("parents", "scores") + (("resampled", "ess") if rule.kind == "smc" else ())
    own = np.minimum(np.asarray(log["steps"]), steps)        # the steps a prompt took, whatever else is in the batch
    info = [{"steps": int(own[i]), "tree": {k: np.asarray(log[k])[:own[i], i].tolist() for k in keys}}
            for i in range(len(prompts))]
    return Result(method=method, prompts=list(prompts), answers=[p[0] for p in picks], chosen=[p[1] for p in picks],
                  texts=texts, lengths=lengths.tolist(), extracted=answers, scores=scores.tolist(),
                  votes=[p[2] for p in picks], budget=finish(budget, t0), info=info)


def _width(n: int, beam_width: int) -> int:
    check_int("beam_width", beam_width, 1)
    if n % beam_width:
        raise ValueError(f"beam_width must divide n: n={n}, beam_width={beam_width}")
    return beam_width


def step_beam_search(model, prompts, *, scorer, n: int, beam_width: int = 4, max_steps: int, max_new_tokens: int,
                     **kwargs) -> Result:
    """PRM-guided step-level beam search (Snell et al. 2024; search-and-learn): after every step the best
    ``n / beam_width`` live rollouts are kept and each continues as ``beam_width`` children.
    ``kwargs``: those of :func:`search` (``sampler``, ``seed``, ``budget``, ``references``, ``answer``,
    ``final``, ``step_tokens``, ``stop_tokens``, ``mesh``)."""
    rule = Rule("beam", width=_width(n, beam_width))
    return search(model, prompts, rule=rule, scorer=scorer, n=n, max_steps=max_steps, max_new_tokens=max_new_tokens,
                  method="step_beam_search", **kwargs)


def dvts(model, prompts, *, scorer, n: int, beam_width: int = 4, max_steps: int, max_new_tokens: int,
         final: str = "best", **kwargs) -> Result:
    """Diverse verifier tree search (search-and-learn): ``n / beam_width`` independent subtrees of
    ``beam_width`` rows; in each, after every step the best live rollout continues as all of the
    subtree's live rows. The final pick is over every subtree's rollouts (``final``: ``"best"`` or
    ``"vote"``, a vote weighted by score)."""
    rule = Rule("dvts", width=_width(n, beam_width))
    return search(model, prompts, rule=rule, scorer=scorer, n=n, max_steps=max_steps, max_new_tokens=max_new_tokens,
                  final=final, method="dvts", **kwargs)


def rebase(model, prompts, *, scorer, n: int, temperature: float = 0.2, max_steps: int, max_new_tokens: int,
           **kwargs) -> Result:
    """REBASE (Wu et al. 2024): after every step the live rollouts share the slots of the next in
    proportion to ``softmax(score / temperature)`` (rounded down; the slots left go to the largest
    remainders), so better partial solutions get more children."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return search(model, prompts, rule=Rule("rebase", temperature=float(temperature)), scorer=scorer, n=n,
                  max_steps=max_steps, max_new_tokens=max_new_tokens, method="rebase", **kwargs)


def particle_filter(model, prompts, *, scorer, n: int, ess_threshold: float = 0.5, resampling: str = "systematic",
                    max_steps: int, max_new_tokens: int, **kwargs) -> Result:
    """Particle filtering (sequential Monte Carlo; its_hub, Puri et al. 2025) with the scorer's probability
    of each partial rollout as the potential: after every step a particle's weight is multiplied by
    ``score_t / score_{t-1}`` and by the importance ratio ``p_model / q_proposal`` of the step's tokens
    (1 when the sampler draws from the model itself; a tempered or filtered sampler is a proposal);
    when the effective sample size falls below ``ess_threshold * n`` the particles are resampled
    (``"systematic"`` or ``"multinomial"``) and their weights reset. Scores must be in [0, 1]."""
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)) or not 0 < ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold!r}")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    rule = Rule("smc", threshold=float(ess_threshold), resampling=resampling)
    return search(model, prompts, rule=rule, scorer=scorer, n=n, max_steps=max_steps, max_new_tokens=max_new_tokens,
                  method="particle_filter", **kwargs)
