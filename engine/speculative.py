"""Speculative decoding: a draft proposes tokens, the policy checks a block of them in one forward.

Each iteration of :func:`speculate_loop` (one ``lax.while_loop``, like ``decode_loop``) fills a
*block* of ``K = k + 1`` rollout slots per row. Its first token is the row's *pending* token —
the one the last iteration drew, not yet fed to any model — and the draft proposes the other
``k`` (on the first iteration, with nothing pending, all ``K``). The draft is a language-model
track (``K`` one-token steps of its own cache, slot-aligned with the policy's) or prompt lookup
(the token that followed the latest earlier occurrence of the row's last 1-3 tokens, in its
prompt or its own text; no model). The policy runs the block in one forward of ``K`` tokens,
which gives its logits before every drafted token and after the last. Then, per row, position by
position (Leviathan et al. 2023; Chen et al. 2023):

- the row's sampler filters both distributions (its processors and warpers, with the history,
  counts, constraint state and Mirostat estimate each position would have: earlier drafted
  tokens included): target ``p``, draft ``q`` (prompt lookup: a one-hot ``q``);
- a sampled row accepts the drafted ``d`` with probability ``min(1, p(d) / q(d))``; at the first
  rejection it draws from ``norm(max(p - q, 0))``, and with every proposal accepted it draws a
  bonus token from ``p`` after the block: each token is distributed exactly as plain decoding's;
- a greedy row accepts while the drafted token is the argmax of the policy's processed logits,
  then takes that argmax: exactly plain greedy decoding.

The accepted tokens are kept in their slots; the rest of the block becomes *holes*
(``cache.keep``: ``cache.valid`` False, not counted in positions), and the newly drawn token is
the next pending one. Stop tokens, stop strings, step delimiters, a dead or broken row and the
call's token budget end a row at the token where plain decoding would end it; later tokens of
the block are discarded. When the loop ends the pending tokens are fed to every model, so the
state is again what ``decode`` returns (every token fed, ``logits`` after the last).

Static shapes, holes: every row writes ``K`` slots per iteration and keeps a prefix of them, so
rows accept different counts without per-row write offsets (one ``dynamic_update_slice`` at the
shared slot counter, as a plain step). The price is slots: a call that makes up to ``m`` tokens
per row may use ``K * m + 1`` slots (every proposal rejected), which ``decode`` checks. (Per-row
write positions would keep the block dense but turn every KV write into a scatter.)

Randomness: a row's draws at its ``c``-th token use ``fold_in(key, c)`` — the draw of a
correction or bonus token, as in plain decoding — and ``fold_in(fold_in(key, c), 1)`` /
``fold_in(fold_in(key, c), 2)`` for the draft's proposal and the acceptance test: the result of a
row depends only on its key, never on the batch. Recorded per token: ``logprobs``, the policy's
log-probability before filters (as plain decoding), and ``sample_logprobs``, the log-probability
under the filtered target distribution — which speculation samples exactly, so it is what plain
decoding's proposal would give the token (0 for greedy rows).
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

import sharding
from engine.state import DecodeState
from engine.step import Decoding, ends_step, feed, resume, write
from engine.stops import last_tokens, matches
from sampling.sampler import after, argmax, draw

PROMPT_LOOKUP = "prompt_lookup"
DRAFT_SALT, ACCEPT_SALT = 1, 2
NGRAMS = (3, 2, 1)          # prompt lookup: the longest of these suffixes that occurred before


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pending:
    """Each row's last drawn token, not yet fed to the models: the first slot of its next block."""
    token: jax.Array           # int32 [B]
    has: jax.Array             # bool [B]  the row has one
    logprob: jax.Array         # f32 [B]   the policy's log-prob of it, before filters
    sample_logprob: jax.Array  # f32 [B]   its log-prob under the filtered target (0 for greedy rows)
    fsm: jax.Array             # int32 [B] constraint automaton state after it


def _at(state: DecodeState, block, j: int, mu, fsm) -> DecodeState:
    """The state as position ``j`` of ``block`` int32 [B, K] (slots ``cache.index ..``) sees it: the block's
    first ``j`` tokens count as drawn tokens of each row; ``mu`` / ``fsm`` [B] the sampler's memory there."""
    first = jnp.broadcast_to(jnp.arange(block.shape[1]) < j, block.shape)
    put = lambda x, y: jax.lax.dynamic_update_slice(x, y, (0, state.cache.index))
    return dataclasses.replace(state, tokens=put(state.tokens, block), drawn=put(state.drawn, first), mu=mu, fsm=fsm,
                               cache=dataclasses.replace(state.cache, valid=put(state.cache.valid, first)))


def _filtered(logits, how: Decoding, view: DecodeState):
    """(processed logits [B, V], log-probs [B, V] of the filtered distribution): what ``sample`` draws from."""
    ctx = view.context(how.stops)
    processed = how.sampler.process(logits, ctx)
    lp = jax.nn.log_softmax(how.sampler.warp(processed, ctx.mu), axis=-1)
    return processed, jnp.where(jnp.isnan(lp), -jnp.inf, lp)


def _keys(state: DecodeState, j: int, salt: int | None = None):
    """Each row's key for its token at block position ``j`` (its ``length + j``-th), salted."""
    keys = jax.vmap(jax.random.fold_in)(state.keys, state.cache.length + j)
    return keys if salt is None else jax.vmap(jax.random.fold_in)(keys, jnp.full(keys.shape, salt, jnp.uint32))


def _pick(x, tokens):
    """x [B, V] at ``tokens`` [B]."""
    return jnp.take_along_axis(x, tokens[:, None], axis=1)[:, 0]


def _lookup(history, length, pad_id: int):
    """The token after the latest earlier occurrence of the last 3 (else 2, 1) tokens of each row's
    ``history`` int32 [B, L] (its first ``length`` [B] entries); the last token where there is none."""
    b, size = history.shape
    slot = jnp.arange(size)[None, :]
    real = jnp.where(slot < length[:, None], history, -1)
    best = jnp.full((b,), -1)
    for n in NGRAMS:
        match = (slot <= length[:, None] - 2) & (length[:, None] > n)            # ends before the last n tokens
        for i in range(n):                                                       # token i of the n-gram
            want = jnp.take_along_axis(real, jnp.maximum(length - n + i, 0)[:, None], axis=1)   # [B, 1]
            shifted = jnp.pad(real, ((0, 0), (n - 1 - i, 0)), constant_values=-1)[:, :size]
            match &= (shifted == want) & (want >= 0)
        found = jnp.max(jnp.where(match, slot, -1), axis=1)
        best = jnp.where(best < 0, found, best)
    at = jnp.where(best >= 0, best + 1, length - 1)
    return jnp.where(length > 0, jnp.take_along_axis(real, jnp.maximum(at, 0)[:, None], axis=1)[:, 0], pad_id)


def _packed_history(state: DecodeState):
    """(each row's prompt + rollout tokens moved to the front [B, P + S], their count [B])."""
    history, valid = state.history()
    order = jnp.argsort(~valid, axis=1, stable=True)
    return jnp.take_along_axis(history, order, axis=1), jnp.sum(valid, axis=1, dtype=jnp.int32)


def _propose(stack, params, state: DecodeState, pending: Pending, how: Decoding, live, k: int, draft: str):
    """The block int32 [B, K] (the pending token first where there is one), the draft's filtered log-probs
    [B, K, V] at each drafted position, its outputs [B, K+1, V] before / after each block token (a
    model draft) and its cache after the block."""
    b, v = state.logits.shape
    pad, greedy = stack[0][2].pad_id, jnp.asarray(how.sampler.temperature) == 0
    block = jnp.full((b, k + 1), pad, jnp.int32)
    logq, outs, cache = [], None, None
    mu, fsm = state.mu, state.fsm
    if draft == PROMPT_LOOKUP:
        history, length = _packed_history(state)
        history = jnp.pad(history, ((0, 0), (0, k + 1)), constant_values=pad)
    else:
        at = [name for name, _, _ in stack].index(draft)
        (_, step, config), p = stack[at], params[at]
        track = state.tracks[draft]
        outs, cache = [track.out], track.cache
    for j in range(k + 1):
        if draft == PROMPT_LOOKUP:
            t = _lookup(history, length, pad)
            lq = jnp.where(jnp.arange(v)[None, :] == t[:, None], 0.0, -jnp.inf)
        else:
            processed, lq = _filtered(outs[-1], how, _at(state, block, j, mu, fsm))
            t = jnp.where(greedy, argmax(processed), draw(_keys(state, j, DRAFT_SALT), lq))
            t = jnp.clip(t, 0, v - 1).astype(jnp.int32)
        forced = pending.has if j == 0 else jnp.zeros_like(pending.has)
        t = jnp.where(forced, pending.token, jnp.where(live, t, pad))
        block = block.at[:, j].set(t)
        logq.append(lq)
        if draft == PROMPT_LOOKUP:
            history = history.at[jnp.arange(b), length].set(t)
            length = length + 1
        else:
            new_mu, new_fsm = after(how.sampler, t, jnp.where(greedy, 0.0, _pick(lq, t)), mu, fsm)
            mu, fsm = jnp.where(forced, mu, new_mu), jnp.where(forced, fsm, new_fsm)
            out, cache = step(config, p, t[:, None], None, cache, last_only=True)
            outs.append(out)
    return block, jnp.stack(logq, axis=1), None if outs is None else jnp.stack(outs, axis=1), cache


def _iteration(stack, params, carry, how: Decoding, budget, k: int, draft: str, mesh):
    """One block: propose, verify in one policy forward, keep each row's accepted prefix."""
    state, pending, made = carry
    b, v = state.logits.shape
    kk = k + 1
    pad, greedy = stack[0][2].pad_id, jnp.asarray(how.sampler.temperature) == 0
    live = state.live & (made < budget)
    block, logq, draft_outs, draft_cache = _propose(stack, params, state, pending, how, live, k, draft)
    (_, forward, config), p = stack[0], params[0]
    out, cache = forward(config, p, block, None, state.cache)                     # [B, K, V]
    logits = jnp.concatenate([state.logits[:, None], out], axis=1)                # [B, K+1, V] before position j

    # the target at every position, the sampler's memory carried along the drafted tokens
    mu, fsm = state.mu, state.fsm
    mus, fsms, lps, tops, halts, accepts, logprobs, slps = [mu], [fsm], [], [], [], [], [], []
    for j in range(kk + 1):
        view = _at(state, block, j, mu, fsm)
        processed, lp = _filtered(logits[:, j], how, view)
        top = jnp.max(processed, axis=-1)
        broken = jnp.any(jnp.isnan(logits[:, j]) | (logits[:, j] == jnp.inf), axis=-1)
        forced = pending.has if j == 0 else jnp.zeros_like(pending.has)
        lps.append(lp)
        tops.append(argmax(processed, top[:, None]))
        halts.append(jnp.where(forced, 0, jnp.where(broken, 2, (top == -jnp.inf).astype(jnp.int32))))
        if j == kk:
            break
        t = block[:, j]
        u = jax.vmap(jax.random.uniform)(_keys(state, j, ACCEPT_SALT))
        lq_t, lp_t = _pick(logq[:, j], t), _pick(lp, t)
        ok = jnp.where(greedy, t == tops[-1], (lq_t > -jnp.inf) & (jnp.log(u) + lq_t < lp_t))
        accepts.append(forced | ok)
        logprobs.append(jnp.where(forced, pending.logprob, _pick(jax.nn.log_softmax(logits[:, j], axis=-1), t)))
        slps.append(jnp.where(forced, pending.sample_logprob, jnp.where(greedy, 0.0, lp_t)))
        new_mu, new_fsm = after(how.sampler, t, slps[-1], mu, fsm)
        mu, fsm = jnp.where(forced, mu, new_mu), jnp.where(forced, fsm, new_fsm)
        mus.append(mu)
        fsms.append(fsm)
    accepts = jnp.stack(accepts + [jnp.zeros_like(accepts[0])], axis=1)          # [B, K+1]
    a = jnp.argmax(~accepts, axis=1)                                              # first rejection (K: none)
    lps, mus, fsms, halts = (jnp.stack(x, axis=1) for x in (lps, mus, fsms, halts))
    rows = jnp.arange(b)

    # the token at position a: the residual's draw after a rejection, the bonus token after the block
    lp_a = lps[rows, a]
    lq_a = jnp.where((a < kk)[:, None], logq[rows, jnp.minimum(a, kk - 1)], -jnp.inf)
    residual = jnp.maximum(jnp.exp(lp_a) - jnp.exp(lq_a), 0.0)
    log_r = jnp.where(jnp.any(residual > 0, axis=-1, keepdims=True), jnp.log(residual), lp_a)
    keys_a = jax.vmap(jax.random.fold_in)(state.keys, state.cache.length + a)
    y = jnp.where(greedy, jnp.stack(tops, axis=1)[rows, a], draw(keys_a, log_r)).astype(jnp.int32)
    y = jnp.clip(y, 0, v - 1)
    y_logprob = _pick(jax.nn.log_softmax(logits[rows, a], axis=-1), y)
    y_slp = jnp.where(greedy, 0.0, _pick(lp_a, y))
    y_mu, y_fsm = after(how.sampler, y, y_slp, mus[rows, a], fsms[rows, a])

    # where each row ends: a stop, a step delimiter, a dead / broken position, or its token budget
    position = jnp.arange(kk + 1)[None, :]
    tokens = jnp.where(position < a[:, None], jnp.pad(block, ((0, 0), (0, 1))), y[:, None])     # [B, K+1]
    stops, pauses = [], []
    for j in range(kk + 1):
        view, x = _at(state, block, j, mus[:, j], fsms[:, j]), tokens[:, j]
        stop = jnp.isin(x, how.stops)
        if how.strings is not None:
            stop |= matches(how.strings, last_tokens(view, x, how.strings.window))
        stops.append(stop)
        pauses.append(~stop & ends_step(view, x, how.steps) if how.steps.shape[0] else jnp.zeros_like(stop))
    stops, pauses = jnp.stack(stops, axis=1), jnp.stack(pauses, axis=1)
    first = pending.has.astype(jnp.int32)                                         # first position drawn here
    big = kk + 2
    firstof = lambda m: jnp.min(jnp.where(m, position, big), axis=1)
    end = firstof((stops | pauses) & (position >= first[:, None]) & (position <= a[:, None]))
    halt = firstof((halts > 0) & (position <= a[:, None]))
    last = jnp.minimum(jnp.minimum(a, end), jnp.minimum(first + budget - made - 1, halt - 1))
    last = jnp.where(live, last, first - 1)                                       # the last position taken
    take_y = live & (last == a)
    kept = jnp.where(take_y, a, last + 1)                                         # block slots kept
    keep = jnp.arange(kk)[None, :] < kept[:, None]
    halted = live & (halt == last + 1) & (end > last) & (last - first + 1 < budget - made)
    at_last = lambda x: jnp.take_along_axis(x, jnp.clip(last, 0, kk)[:, None], axis=1)[:, 0]
    stopped, paused = live & (end == last) & at_last(stops), live & (end == last) & at_last(pauses)
    after_last = lambda x: jnp.take_along_axis(x, jnp.clip(last + 1, 0, kk)[:, None], axis=1)[:, 0]

    index = state.cache.index
    state = write(state, pad, keep, at=index, tokens=block, drawn=keep, logprobs=jnp.stack(logprobs, axis=1),
                  sample_logprobs=jnp.stack(slps, axis=1), fsms=fsms[:, 1:])
    grab = lambda x: jnp.take_along_axis(x, kept[:, None, None], axis=1)[:, 0]   # after the last kept slot
    tracks = dict(state.tracks)
    if draft != PROMPT_LOOKUP:
        tracks[draft] = dataclasses.replace(tracks[draft], out=grab(draft_outs), cache=draft_cache.keep(keep))
    state = dataclasses.replace(
        state, logits=grab(logits), cache=cache.keep(keep), tracks=tracks,
        done=state.done | stopped | halted, paused=state.paused | paused,
        failed=state.failed | (halted & (jnp.take_along_axis(halts, jnp.clip(halt, 0, kk)[:, None], axis=1)[:, 0] == 2)),
        mu=jnp.where(take_y, y_mu, jnp.where(live, after_last(mus), state.mu)),
        fsm=jnp.where(take_y, y_fsm, jnp.where(live, after_last(fsms), state.fsm)))
    pending = Pending(token=y, has=take_y, logprob=y_logprob, sample_logprob=y_slp, fsm=y_fsm)
    made = made + jnp.where(live, jnp.maximum(last - first + 1, 0), 0)
    return sharding.constrain(state, state.axes(), mesh), pending, made


@partial(jax.jit, static_argnums=(0,), static_argnames=("k", "draft", "mesh"), donate_argnums=(2,))
def speculate_loop(stack, params, state: DecodeState, how: Decoding, limit, budget, *, k: int, draft: str,
                   mesh=None) -> DecodeState:
    """Resume every paused row and decode speculatively (``k`` drafted tokens a block, ``draft`` a track's
    name or ``"prompt_lookup"``) until every row is done, paused or has ``budget`` new tokens, or the
    next block would not fit below slot ``limit`` (a block takes ``k + 1`` slots and the last pending
    token one more); then feed the pending tokens."""
    state = resume(state, how)
    b = state.done.shape[0]
    zero = jnp.zeros((b,), jnp.float32)
    pending = Pending(token=jnp.zeros((b,), jnp.int32), has=jnp.zeros((b,), bool), logprob=zero,
                      sample_logprob=zero, fsm=state.fsm)
    cond = lambda c: (c[0].cache.index + k + 2 <= limit) & jnp.any(c[0].live & (c[2] < budget))
    body = lambda c: _iteration(stack, params, c, how, budget, k, draft, mesh)
    state, pending, _ = jax.lax.while_loop(cond, body, (state, pending, jnp.zeros((b,), jnp.int32)))

    def flush(state):
        column, has = (lambda x: x[:, None]), pending.has
        state = write(state, stack[0][2].pad_id, column(has), tokens=column(pending.token), drawn=column(has),
                      logprobs=column(pending.logprob), sample_logprobs=column(pending.sample_logprob),
                      fsms=column(pending.fsm))
        return feed(stack, params, state, column(pending.token), column(has))

    state = jax.lax.cond(jnp.any(pending.has), flush, lambda s: s, state)
    return sharding.constrain(state, state.axes(), mesh)
