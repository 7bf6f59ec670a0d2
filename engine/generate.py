"""``generate``: prefill + one jitted ``while_loop`` of decode steps; ``stream`` for interactive use."""
from __future__ import annotations

import dataclasses

import numpy as np

import sharding
from engine.checks import check_bool, check_draft, check_finite, check_int, check_sampler, check_state, stop_strings
from engine.stops import cut
from engine.decode import decode, decoding, model_stack, place_model, start
from engine.state import DecodeState
from engine.step import decode_step
from models.tokenizer import CONTEXT, continuation
from sampling import Sampler


@dataclasses.dataclass
class Rollouts:
    """Continuations of G prompts, N rollouts each (generated and appended tokens, left-aligned),
    as host (numpy) arrays."""
    tokens: np.ndarray           # int32 [G, N, T] (padded with the model's pad id after `lengths`)
    lengths: np.ndarray          # int32 [G, N]
    logprobs: np.ndarray         # f32 [G, N, T] model log-probs, before filters (0 for appended tokens)
    sample_logprobs: np.ndarray  # f32 [G, N, T] proposal log-probs, after filters
    text: list[list[str]] | None = None
    cache_bytes: int = 0         # bytes of the KV cache the rollouts were decoded with
    cache_slots: int = 0         # its token slots: G*P (prefix, once per prompt) + G*N*S (rollouts)


def rollouts(state: DecodeState, tokenizer=None, shape=None, *, stop=None, keep_stop: bool = False) -> Rollouts:
    """The rollouts of ``state`` on the host side, each row's real tokens moved to the front.

    ``shape`` (G, N) regroups the rows (e.g. for the naive layout, where each group has one).
    With a ``tokenizer``, ``text`` holds each rollout decoded as it reads after its prompt
    (:func:`models.continuation`), without the stop token that finished it. A finished rollout
    whose last token completes one of the stop strings ``stop`` (those it was decoded with) keeps
    that token, and its text is cut just after the string (``keep_stop=True``) or just before it
    (the default); the tokens stay as drawn (:func:`engine.stops.cut`).
    """
    check_state(state)
    check_bool("keep_stop", keep_stop)
    if stop is not None and (not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) and x for x in stop)):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r:.60}")
    g, n = shape or state.shape
    rows = state.done.shape[0]
    if not (isinstance(g, (int, np.integer)) and isinstance(n, (int, np.integer)) and g >= 1 and n >= 1
            and g * n == rows):
        raise ValueError(f"shape must be (G, N) with G * N = {rows} rollouts, got {shape!r}")
    order = np.argsort(~np.asarray(state.cache.valid), axis=1, kind="stable")
    pick = lambda x: np.take_along_axis(np.asarray(x), order, axis=1).reshape(g, n, -1)
    out = Rollouts(tokens=pick(state.tokens), lengths=np.asarray(state.cache.length).reshape(g, n),
                   logprobs=pick(state.logprobs), sample_logprobs=pick(state.sample_logprobs),
                   cache_bytes=state.cache.nbytes(), cache_slots=state.cache.token_slots())
    if tokenizer is not None:
        per = state.shape[1]                             # rows per prefix group (1 in the naive layout)
        prompt, first = np.asarray(state.prompt), np.asarray(state.cache.pstart)
        contexts = [prompt[i // per, first[i // per]:][-CONTEXT:] for i in range(rows)]
        done = np.asarray(state.done).reshape(g, n)
        ends = {}
        if stop:                       # a stop string's search reaches as far into the prompt as it can
            reach = max(CONTEXT, max(len(x.encode("utf-8")) for x in stop))
            for i in np.flatnonzero(done.reshape(-1)):
                row = divmod(int(i), n)
                ends[row] = cut(tokenizer, prompt[i // per, first[i // per]:][-reach:],
                                out.tokens[row][:out.lengths[row]], stop)
        drop = done & ~np.array([[ends.get((a, b)) is not None for b in range(n)] for a in range(g)], bool)
        out.text = _texts(tokenizer, out, drop, [contexts[i * n:(i + 1) * n] for i in range(g)])
        for (a, b), at in ends.items():
            if at is not None:
                out.text[a][b] = at[0] if keep_stop else at[1]
    return out


def generate(model, prompts, *, max_new_tokens: int, sampler: Sampler | None = None, n: int = 1,
             seed: int = 0, stop_tokens=None, mesh=None, share_prefix: bool = True,
             first_rollout: int = 0, stop=None, keep_stop: bool = False, draft=None, lookahead: int = 4) -> Rollouts:
    """Generate ``n`` rollouts for each prompt.

    ``model`` has ``config``, ``params``, ``forward`` and ``tokenizer`` (a :class:`models.Model`
    or a fake with the same fields). ``prompts`` is a list of token-id lists (any lengths) or,
    when the model has a tokenizer, of strings and chats (``[{"role": "user", "content": "..."}]``,
    formatted by its chat template with the cue for the assistant's turn). Each prompt is prefilled once and its ``n``
    rollouts decode against that one copy of its KV (``share_prefix=False``: the naive layout,
    prompt replicated). Rows stop after an EOS or any of ``stop_tokens`` (kept as the row's last
    token). Rollout ``r`` of a prompt draws from
    ``fold_in(fold_in(fold_in(key(seed), prompt_id), r), step)``, so it is the same whatever
    else is in the batch. ``sampler`` defaults to greedy; its fields may be per prompt [G] or
    per rollout [G, N]. ``first_rollout`` numbers the rollouts from there (rounds of a larger draw).

    ``stop`` (a list of strings; needs a tokenizer) ends a rollout when its text ends with one, on
    the device, across token boundaries as ``transformers``' ``StopStringCriteria``
    (:mod:`engine.stops`). The tokens stay as drawn (the last one completes the string); ``text``
    is cut before the string, or after it with ``keep_stop=True``. A string that ends inside a
    token cuts the text there: the rest of that token's text is dropped either way.

    ``mesh`` (``sharding.make_mesh(...)``) shards the work: params by their logical axes
    (tensor parallel), rollouts and their cache over the ``data`` axis; results are the same
    tokens as on one device and come back replicated on every host. On several hosts every
    host calls ``generate`` with the same global prompts (``sharding.gather_prompts``).

    ``draft`` decodes speculatively, with the same result (exactly the same tokens for greedy rows,
    the same distribution for sampled ones): a smaller language model with the policy's tokenizer,
    or ``"prompt_lookup"``, proposes ``lookahead`` tokens that the policy checks in one forward
    (:func:`engine.decode`; the rollout block then has ``(lookahead + 1) * max_new_tokens + 1`` slots).
    """
    check_int("max_new_tokens", max_new_tokens, 1)
    check_bool("keep_stop", keep_stop)
    stop_strings(model, stop)                        # checked before any work (the tables are cached)
    tracks = {} if draft is None else check_draft(model, draft)
    slots = None
    if draft is not None:
        check_int("lookahead", lookahead, 1)
        slots = (lookahead + 1) * max_new_tokens + 1
    model = place_model(model, mesh)
    state = start(model, prompts, capacity=max_new_tokens, n=n, seed=seed, share_prefix=share_prefix, mesh=mesh,
                  first_rollout=first_rollout, tracks=tracks, slots=slots)
    g = len(prompts)
    if not share_prefix:                   # settings per prompt [G] must reach each copy of the prompt
        sampler = check_sampler(sampler).broadcast((g, n)).reshape(state.shape)
    state = decode(model, state, max_new_tokens=max_new_tokens, sampler=sampler, stop_tokens=stop_tokens, mesh=mesh,
                   stop=stop, tracks=tracks, draft=None if draft is None else "draft" if tracks else draft,
                   lookahead=lookahead)
    if mesh is not None:  # the results (not the KV cache), replicated so that every host can read them
        tokens, logprobs, sample_logprobs, valid, length, prompt, pstart, done = sharding.replicate(
            (state.tokens, state.logprobs, state.sample_logprobs, state.cache.valid, state.cache.length,
             state.prompt, state.cache.pstart, state.done), mesh)
        state = dataclasses.replace(state, tokens=tokens, logprobs=logprobs, sample_logprobs=sample_logprobs,
                                    prompt=prompt, done=done,
                                    cache=dataclasses.replace(state.cache, valid=valid, length=length, pstart=pstart))
    out = rollouts(state, model.tokenizer, shape=(g, n), stop=stop, keep_stop=keep_stop)
    if slots is not None:                  # the holes' slots are left at the end: trim to the tokens
        out.tokens, out.logprobs, out.sample_logprobs = (x[..., :max_new_tokens] for x in
                                                         (out.tokens, out.logprobs, out.sample_logprobs))
    return out


def decode_text(tokenizer, rollouts: Rollouts, stop_ids=(), contexts=None) -> list[list[str]]:
    """Decode each rollout's tokens up to its length, dropping a final stop token; with ``contexts``
    ([G][N] token ids, e.g. the prompts' last tokens) as the text reads after them."""
    tokens, lengths = np.asarray(rollouts.tokens), np.asarray(rollouts.lengths)
    last = np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[..., None], axis=-1)[..., 0]
    return _texts(tokenizer, rollouts, (lengths > 0) & np.isin(last, list(stop_ids)), contexts)


def _texts(tokenizer, rollouts: Rollouts, ends, contexts) -> list[list[str]]:
    """Each rollout's text, its last token left out where ``ends`` [G, N] (a stop token)."""
    tokens, lengths = np.asarray(rollouts.tokens), np.asarray(rollouts.lengths) - np.asarray(ends, int)
    return [[continuation(tokenizer, [] if contexts is None else contexts[g][r], tokens[g, r, :lengths[g, r]])
             for r in range(tokens.shape[1])] for g in range(tokens.shape[0])]


def stream(model, prompt, *, max_new_tokens: int, sampler: Sampler | None = None, seed: int = 0,
           stop_tokens=None, stop=None):
    """An iterator over the tokens of one rollout of one prompt as they are produced (same draws as
    ``generate``; ``stop`` strings end it too, their last token yielded). Bad arguments raise here,
    before the first token; the prompt is prefilled here too."""
    check_int("max_new_tokens", max_new_tokens, 1)
    stop_strings(model, stop)
    state = start(model, [prompt], capacity=max_new_tokens, seed=seed)
    how = decoding(model, state, sampler=sampler, stop_tokens=stop_tokens, stop=stop)

    def tokens(state):
        for slot in range(max_new_tokens):
            state = decode_step(*model_stack(model, {}), state, how)
            check_finite(state)
            yield int(state.tokens[0, slot])
            if bool(state.done[0]):
                return
    return tokens(state)
