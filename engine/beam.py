"""Token-level beam search and diverse (group) beam search, as transformers defines them.

The ``M = num_beams`` beams of each of ``G`` prompts are rollouts of that prompt: they are
folded into the batch (beam ``m`` of prompt ``g`` is row ``g*M + m``), the prompt is prefilled
once into the prefix block of a :class:`~engine.cache.KVCache`, and each step reorders the
beams with one gather over the rollout block (the prefix is never copied). Prefill and the
whole search are one jitted program around one ``jax.lax.while_loop``; the best finished
hypotheses are kept on device in a fixed-size buffer per prompt (per group).

Semantics follow ``transformers`` ``generate(num_beams=..., do_sample=False)`` (its vectorised
``_beam_search``): at each step the top ``max(2, 1 + stop tokens) * M`` continuations of all
beams are taken, those among the first ``M`` that end in a stop token (or reach
``max_new_tokens``) enter the finished buffer with score ``sum_logprobs / length **
length_penalty`` (``length`` counts generated tokens, the stop token included), the best
``M`` that did not stop keep running; ``early_stopping`` True / False / ``"never"`` decides
when a prompt stops looking for better hypotheses.

Diverse beam search (Vijayakumar et al. 2016; ``num_beam_groups``, ``diversity_penalty``)
splits the beams into groups of ``M / num_beam_groups`` searched one after another within a
step; group ``c`` subtracts ``diversity_penalty * (times the token was chosen by groups < c
at this step)`` from its log-probs (transformers' Hamming diversity), so its beam scores
include the penalties. Each group keeps its own finished buffer and stopping state (the
rules above with ``M`` replaced by the group size); the groups' hypotheses are merged at
the end. ``num_beam_groups=1`` is plain beam search.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from engine.cache import KVCache, PrefillCache, take_rollouts
from engine.checks import check_int, check_prompts, memory_bytes, state_bytes, stop_ids
from engine.decode import bucket, left_pad
from models.tokenizer import CONTEXT, continuation

F32 = jnp.float32
NEG = -1.0e9          # transformers' score for an impossible beam / empty buffer slot


@dataclasses.dataclass
class BeamResult:
    """The best finished hypotheses of each prompt, best first."""
    sequences: np.ndarray   # int32 [G, R, T] generated tokens (prompt excluded), pad id after `lengths`
    lengths: np.ndarray     # int32 [G, R]    generated tokens, a final stop token included
    scores: np.ndarray      # f32 [G, R]      sum of log-probs (minus diversity penalties) / lengths ** length_penalty
    steps: int              # decode steps the search ran (<= max_new_tokens)
    text: list[list[str]] | None = None   # decoded hypotheses without a final stop token (with a tokenizer)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BeamState:
    step: jax.Array         # int32 []        tokens generated so far by every running beam
    logits: jax.Array       # f32 [B, V]      next-token logits of each running beam (B = G*M)
    cache: KVCache          # prefix block [.., G, P, ..]; rollout block [.., B, S, ..], row g*M + m
    alive: jax.Array        # int32 [G, M, S] running beams' tokens (S = max_new_tokens)
    alive_score: jax.Array  # f32 [G, M]      running beams' summed log-probs (diversity penalties included)
    done: jax.Array         # int32 [G, M, S] finished buffer: each group's best M/C hypotheses, best first
    done_score: jax.Array   # f32 [G, M]      their scores (NEG in an empty slot)
    done_len: jax.Array     # int32 [G, M]    their lengths
    finished: jax.Array     # bool [G, M]     buffer slot holds a finished hypothesis
    improvable: jax.Array   # bool [G, C]     early-stop heuristic not yet satisfied (C groups)
    active: jax.Array       # bool [G, C]     group still searching (adds to its buffer)


def _take(x, idx):
    """``x[g, idx[g, j], ...]`` for x [G, N, ...], idx [G, J]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _group_step(logprobs, alive, alive_score, done, done_score, done_len, finished, improvable, active, t,
                stops, norm, es_true, es_never_long, *, k: int, max_new: int):
    """One step of one group for every prompt: transformers' top-k continuations, running and finished beams.

    logprobs f32 [G, W, V] (penalised); alive* / done* the group's [G, W, ...] slices; improvable,
    active bool [G]. Returns the updated slices, the parent beam [G, W] and token [G, W] of each
    new running beam, and ``hits`` bool [G, K].
    """
    g, w, v = logprobs.shape
    top, idx = jax.lax.top_k((logprobs + alive_score[:, :, None]).reshape(g, w * v), k)   # [G, K]
    parent, tok = idx // v, idx % v
    seqs = jax.lax.dynamic_update_slice_in_dim(_take(alive, parent), tok[:, :, None], t, axis=2)   # [G, K, S]
    hits = jnp.isin(tok, stops) | (t + 1 >= max_new)
    # running beams: the best W continuations that did not stop
    run_score, keep = jax.lax.top_k(top + hits.astype(F32) * NEG, w)
    # finished buffer: merge the stopped ones among the top W (length-normalised) with the kept ones
    cand = top / norm[t + 1]
    cand += (jnp.all(finished, axis=1, keepdims=True) & es_true).astype(F32) * NEG
    cand += (~(improvable & active))[:, None].astype(F32) * NEG
    just = hits & (jnp.arange(k) < w)[None, :]
    cand += (~just).astype(F32) * NEG
    merged = jnp.concatenate([done_score, cand], axis=1)
    done_score, pick = jax.lax.top_k(merged, w)
    done = _take(jnp.concatenate([done, seqs], axis=1), pick)
    done_len = _take(jnp.concatenate([done_len, jnp.full((g, k), t + 1, jnp.int32)], axis=1), pick)
    finished = _take(jnp.concatenate([finished, just], axis=1), pick)
    # transformers' early-stop heuristic: can the best running beam still beat the worst finished one?
    best = run_score[:, 0] / norm[jnp.where(es_never_long, max_new, t + 1)]
    worst = jnp.where(finished, jnp.min(done_score, axis=1, keepdims=True), NEG)
    improvable = improvable & jnp.any(best[:, None] > worst, axis=1)
    active = active & improvable & ~(jnp.all(finished, axis=1) & es_true) & ~jnp.all(hits, axis=1)
    return (_take(seqs, keep), run_score, done, done_score, done_len, finished, improvable, active,
            _take(parent, keep), _take(tok, keep))


def _step(forward, config, params, s: BeamState, stops, norm, es_true, es_never_long, penalty, *,
          groups: int, k: int, max_new: int) -> BeamState:
    g, m, _ = s.alive.shape
    w = m // groups
    v = s.logits.shape[-1]
    logprobs = jax.nn.log_softmax(s.logits.astype(F32), axis=-1).reshape(g, m, v)
    counts = jnp.zeros((g, v), F32)       # tokens chosen at this step by earlier (active) groups
    parts = []
    for c in range(groups):
        sl = slice(c * w, (c + 1) * w)
        lp = logprobs[:, sl] if c == 0 else logprobs[:, sl] - penalty * counts[:, None, :]
        out = _group_step(lp, s.alive[:, sl], s.alive_score[:, sl], s.done[:, sl], s.done_score[:, sl],
                          s.done_len[:, sl], s.finished[:, sl], s.improvable[:, c], s.active[:, c], s.step,
                          stops, norm, es_true, es_never_long, k=k, max_new=max_new)
        counts += jax.nn.one_hot(out[-1], v, dtype=F32).sum(axis=1) * s.active[:, c, None]
        parts.append(out)
    cat = lambda i: jnp.concatenate([p[i] for p in parts], axis=1)
    stack = lambda i: jnp.stack([p[i] for p in parts], axis=1)
    parent = cat(8) + (jnp.arange(groups) * w).repeat(w)[None, :]          # beam index within the prompt
    rows = (jnp.arange(g)[:, None] * m + parent).reshape(-1)
    tokens = cat(9).reshape(-1, 1)
    logits, cache = forward(config, params, tokens, None, take_rollouts(s.cache, rows), last_only=True)
    return BeamState(step=s.step + 1, logits=logits, cache=cache, alive=cat(0), alive_score=cat(1), done=cat(2),
                     done_score=cat(3), done_len=cat(4), finished=cat(5), improvable=stack(6), active=stack(7))


@partial(jax.jit, static_argnames=("forward", "config", "beams", "groups", "k", "max_new"))
def _search(forward, config, params, tokens, first, stops, norm, es_true, es_never_long, penalty, *,
            beams: int, groups: int, k: int, max_new: int) -> BeamState:
    """Prefill the prompts once, then beam search in one ``while_loop``."""
    g, p = tokens.shape
    logits, prefix = forward(config, params, tokens, None, PrefillCache.create(config, g, p, first), last_only=True)
    w = beams // groups
    first_of_group = (jnp.arange(beams) % w == 0)[None, :]
    state = BeamState(
        step=jnp.zeros((), jnp.int32), logits=jnp.repeat(logits, beams, axis=0),
        cache=KVCache.from_prefill(prefix, beams, max_new),
        alive=jnp.full((g, beams, max_new), config.pad_id, jnp.int32),
        alive_score=jnp.broadcast_to(jnp.where(first_of_group, 0.0, NEG), (g, beams)).astype(F32),
        done=jnp.full((g, beams, max_new), config.pad_id, jnp.int32), done_score=jnp.full((g, beams), NEG, F32),
        done_len=jnp.zeros((g, beams), jnp.int32), finished=jnp.zeros((g, beams), bool),
        improvable=jnp.ones((g, groups), bool), active=jnp.ones((g, groups), bool))
    cond = lambda s: (s.step < max_new) & jnp.any(s.active)
    body = lambda s: _step(forward, config, params, s, stops, norm, es_true, es_never_long, penalty, groups=groups,
                           k=k, max_new=max_new)
    return jax.lax.while_loop(cond, body, state)


def _check(num_beams, max_new_tokens, length_penalty, early_stopping, num_return, num_beam_groups,
           diversity_penalty) -> None:
    check_int("num_beams", num_beams, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("num_return", num_return, 1)
    check_int("num_beam_groups", num_beam_groups, 1)
    if num_return > num_beams:
        raise ValueError(f"num_return={num_return} is more than num_beams={num_beams}; at most num_beams "
                         f"hypotheses are kept")
    if num_beams % num_beam_groups:
        raise ValueError(f"num_beam_groups={num_beam_groups} does not divide num_beams={num_beams}")
    if not (isinstance(early_stopping, (bool, np.bool_)) or (isinstance(early_stopping, str)
                                                          and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    real = lambda x: isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
    if not real(length_penalty) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not real(diversity_penalty) or not 0 <= diversity_penalty <= 1e30:   # 1e39 was inf in fp32: NaN scores
        raise ValueError(f"diversity_penalty must be a number in [0, 1e30], got {diversity_penalty!r}")
    if diversity_penalty > 0 and num_beam_groups == 1:
        raise ValueError("diversity_penalty only acts between beam groups; set num_beam_groups > 1")


def beam_search(model, prompts, *, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return: int = 1, num_beam_groups: int = 1,
                diversity_penalty: float = 0.0, stop_tokens=None) -> BeamResult:
    """Beam search (optionally diverse group beam search) for every prompt; the best ``num_return`` each.

    ``model`` has ``config``, ``params``, ``forward`` and ``tokenizer`` (a :class:`models.Model` or
    a fake with the same fields); ``prompts`` a list of token-id lists (any lengths) or of strings
    with a tokenizer. Equals ``transformers`` ``generate(num_beams=num_beams, do_sample=False,
    num_return_sequences=num_return, length_penalty=..., early_stopping=...)`` run on each prompt
    alone: the same hypotheses, the same ``sequences_scores``. A hypothesis ends at an EOS of
    the config or any of ``stop_tokens`` (kept as its last token) or after ``max_new_tokens``.

    ``early_stopping``: True stops a prompt as soon as ``num_beams`` hypotheses are finished;
    False (default) stops when transformers' heuristic says the best running beam, scored at its
    current length, cannot beat the worst finished one; ``"never"`` uses the most optimistic
    length (``max_new_tokens`` when ``length_penalty > 0``) — canonical beam search.

    ``num_beam_groups > 1`` is diverse beam search: ``num_beams / num_beam_groups`` beams per
    group, each group penalised by ``diversity_penalty`` per use of a token by earlier groups
    at the same step (scores include the penalties).
    """
    _check(num_beams, max_new_tokens, length_penalty, early_stopping, num_return, num_beam_groups,
           diversity_penalty)
    early_stopping = early_stopping if isinstance(early_stopping, str) else bool(early_stopping)  # np.True_ too
    ids = check_prompts(model, prompts, max_new_tokens)
    if len(ids) * num_beams >= 2 ** 31:
        raise ValueError(f"{len(ids)} prompts x num_beams={num_beams} is more rows than int32 indexing allows")
    need = state_bytes(model.config, len(ids), bucket(max(map(len, ids))), len(ids) * num_beams, max_new_tokens)
    if need > memory_bytes():
        raise ValueError(f"{len(ids)} prompts x num_beams={num_beams} of {max_new_tokens} slots need "
                         f"{need / 2**30:.1f} GiB of search state; the memory is {memory_bytes() / 2**30:.1f} GiB")
    # length ** length_penalty in double precision (as transformers), index = generated length
    try:
        with np.errstate(over="ignore"):
            norm = np.array([1.0] + [n ** float(length_penalty) for n in range(1, max_new_tokens + 1)]).astype(F32)
    except OverflowError:                                             # past even float64
        norm = np.array([np.inf])
    if not np.all(np.isfinite(norm) & (norm > 0)):
        raise ValueError(f"length_penalty={length_penalty} makes length ** length_penalty leave float32's range "
                         f"for lengths up to {max_new_tokens}")
    config = model.config
    stops = stop_ids(config, stop_tokens)
    n_stop = int(np.sum(np.asarray(stops) >= 0))
    width = num_beams // num_beam_groups
    factor = max(2, 1 + n_stop)
    if factor > config.vocab_size:
        raise ValueError(f"beam search keeps {factor} candidates per beam, more than the vocabulary "
                         f"({config.vocab_size}); use fewer stop tokens")
    tokens, first = left_pad(ids, config.pad_id, bucket(max(map(len, ids))))
    es_never_long = early_stopping == "never" and length_penalty > 0.0
    state = _search(model.forward, config, model.params, jnp.asarray(tokens), jnp.asarray(first), stops,
                    jnp.asarray(norm), jnp.asarray(early_stopping is True), jnp.asarray(es_never_long),
                    jnp.asarray(diversity_penalty, F32), beams=num_beams, groups=num_beam_groups,
                    k=factor * width, max_new=max_new_tokens)
    scores = np.asarray(state.done_score)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :num_return]   # merge the groups' buffers
    result = BeamResult(sequences=np.take_along_axis(np.asarray(state.done), order[:, :, None], axis=1),
                        lengths=np.take_along_axis(np.asarray(state.done_len), order, axis=1),
                        scores=np.take_along_axis(scores, order, axis=1), steps=int(state.step))
    if model.tokenizer is not None:
        stop_set = set(np.asarray(stops).tolist())
        def text(g, row, n):
            row = row[:n].tolist()
            return continuation(model.tokenizer, ids[g][-CONTEXT:], row[:-1] if row and row[-1] in stop_set else row)
        result.text = [[text(g, r, n) for r, n in zip(rs, ns)]
                       for g, (rs, ns) in enumerate(zip(result.sequences, result.lengths))]
    return result
