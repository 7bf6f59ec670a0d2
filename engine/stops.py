"""Stop strings matched on the device, across token boundaries, as ``transformers``' ``StopStringCriteria``.

A rollout stops when the text of its last tokens holds one of the stop strings ending inside its
last token: ``["st", "op"]``, ``["stop"]``, ``["las", "topper"]`` all end ``"stop"``, while
``["stop", "at"]`` does not (the string must overlap the last token; a check after every token
misses none). Nothing is decoded on the device: :func:`tables` reads, once on the host, each
token's bytes (``Tokenizer.token_bytes``) and records for every stop string

- ``ends``: the lengths of the string's tail the token can end it with — a prefix of the token
  equal to a suffix of the string, or the whole string anywhere inside the token;
- ``positions``: where, counted from the string's end, the token can sit inside it (also running
  off its start: ``"las"`` fits ``"stop"`` at 3, as its ``"s"`` does);
- ``lengths``: the token's length in bytes.

:func:`matches` then walks a row's last ``window`` tokens backwards (the longest string's length
in bytes: one byte per token at most is needed), adding lengths while each token fits where the
string has been matched up to, until the whole string is covered. Matching is on UTF-8 bytes, so
a token holding part of a character (byte-level BPE, byte fallback) is matched like any other.
The tokens looked back at include the prompt's (as ``transformers``, which checks the whole
sequence): a string may begin in the prompt, but must end in a drawn token.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StopStrings:
    """The device tables of some stop strings over a vocabulary of V tokens (row V: no token)."""
    positions: jax.Array    # int32 [V+1, K, P]  where a token fits in string k, from its end (-1: padding)
    ends: jax.Array         # int32 [V+1, K, E]  how much of string k's tail a token can end it with (-1: padding)
    lengths: jax.Array      # int32 [V+1]        each token's length in bytes
    targets: jax.Array      # int32 [K]          each string's length in bytes
    window: int = dataclasses.field(metadata=dict(static=True))    # tokens looked at: the longest string's length


def _fits(token: bytes, string: bytes) -> tuple[list[int], list[int]]:
    """``(positions, ends)`` of ``token`` in ``string``, exactly as ``transformers`` computes them."""
    rs, rt = string[::-1], token[::-1]
    positions = []
    i = rs.find(rt[:1], 1)
    while 0 <= i < len(string):
        if rt.startswith(rs[i:i + len(token)]):
            positions.append(i)
        i = rs.find(rt[:1], i + 1)
    ends = []
    i = token.find(string[-1:])
    while i >= 0:
        overlap = min(i + 1, len(string))
        if token[i + 1 - overlap:i + 1] == string[-overlap:]:
            ends.append(overlap)
        i = token.find(string[-1:], i + 1)
    return positions, ends


@lru_cache(maxsize=8)
def _tables(pieces: tuple, strings: tuple) -> tuple:
    fits = [[_fits(p, s) if p is not None else ([], []) for s in strings] for p in pieces]
    width = lambda which: max([len(f[which]) for row in fits for f in row] + [1])
    v, k, p, e = len(pieces), len(strings), width(0), width(1)
    positions, ends = np.full((v + 1, k, p), -1, np.int32), np.full((v + 1, k, e), -1, np.int32)
    for t, row in enumerate(fits):
        for j, (pos, end) in enumerate(row):
            positions[t, j, :len(pos)], ends[t, j, :len(end)] = pos, end
    if not np.any(ends > 0):           # as transformers: an error only when none of them can ever match
        raise ValueError(f"no token of the vocabulary can end any of the stop strings "
                         f"{[s.decode('utf-8') for s in strings]!r:.80}")
    lengths = np.array([len(p) if p is not None else 0 for p in pieces] + [0], np.int32)
    return positions, ends, lengths, np.array([len(s) for s in strings], np.int32)


_PIECES: dict = {}     # id(tokenizer) -> (tokenizer, its token bytes): read once per tokenizer


def token_bytes(tokenizer, vocab_size: int) -> tuple:
    """Each id's bytes for ``vocab_size`` ids (None past the tokenizer's vocabulary: it matches nothing).
    A tokenizer without ``token_bytes`` (a test's fake) gives ``decode([id])``."""
    hit = _PIECES.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        if hasattr(tokenizer, "token_bytes"):
            pieces = list(tokenizer.token_bytes())
        else:
            size = getattr(tokenizer, "vocab_size", vocab_size)
            pieces = [tokenizer.decode([i]).encode("utf-8") for i in range(size)]
        hit = _PIECES[id(tokenizer)] = (tokenizer, tuple(pieces))
    pieces = hit[1][:vocab_size]
    return pieces + (None,) * (vocab_size - len(pieces))


def tables(tokenizer, strings, vocab_size: int) -> StopStrings:
    """The :class:`StopStrings` of ``strings`` (checked non-empty ``str``) over the model's vocabulary;
    a ``ValueError`` if no token can end any of them (characters outside the vocabulary)."""
    encoded = tuple(s.encode("utf-8") for s in strings)
    positions, ends, lengths, targets = _tables(token_bytes(tokenizer, vocab_size), encoded)
    return StopStrings(positions=positions, ends=ends, lengths=lengths, targets=targets,
                       window=int(targets.max()))


def matches(stops: StopStrings, ids) -> jax.Array:
    """bool [B]: the tokens ``ids`` int32 [B, W] — each row's last token first, then the ones before it
    (-1 where there are none; W may be less than ``stops.window``) — end one of the stop strings.
    The same computation as ``StopStringCriteria.__call__``."""
    v = stops.lengths.shape[0] - 1
    ids = jnp.where((ids < 0) | (ids >= v), v, ids)
    ends = stops.ends[ids[:, 0]]                                          # [B, K, E]
    positions = stops.positions[ids[:, 1:]]                               # [B, W-1, K, P]
    lengths = stops.lengths[ids[:, 1:]]                                   # [B, W-1]
    # matched bytes after each token, for each way the last token can end each string
    steps = jnp.broadcast_to(lengths[:, :, None, None], lengths.shape + ends.shape[1:])
    total = jnp.cumsum(jnp.concatenate([ends[:, None], steps], axis=1), axis=1)       # [B, W, K, E]
    later = jnp.any(total[:, :-1, :, :, None] == positions[:, :, :, None, :], axis=-1)  # token j fits there
    fit = jnp.concatenate([(ends > 0)[:, None], later], axis=1)
    alive = jnp.cumprod(fit, axis=1).astype(bool)                         # every token up to j fits
    covered = jnp.max(jnp.where(alive, total, 0), axis=(1, 3)) >= stops.targets[None, :]
    return jnp.any(covered, axis=-1)


def last_tokens(state, tok, window: int, prompt: bool = True) -> jax.Array:
    """int32 [B, window]: ``tok`` [B], then each row's ``window - 1`` tokens before it, latest first,
    reaching into its prompt unless ``prompt`` is False (-1 where the row has fewer)."""
    out, k = [tok], window - 1
    if k == 0:
        return tok[:, None]
    history, valid = state.history(tail=k) if prompt else (state.tokens, state.cache.valid)
    rank = jnp.sum(valid, axis=1, keepdims=True) - jnp.cumsum(valid, axis=1)              # 0 at the last real token
    for j in range(k):
        out.append(jnp.max(jnp.where(valid & (rank == j), history, -1), axis=1))
    return jnp.stack(out, axis=1)


def cut(tokenizer, context, ids, strings) -> tuple[str, str] | None:
    """Host side: where a rollout that ended with a stop string is cut. ``(text up to the end of the
    stop string, text before it)`` of the rollout ``ids`` as it reads after the prompt tokens
    ``context``, or None when no stop string ends in its last token's text. The string taken is the
    one that ends first in the last token's text (the longest of those ending there); text of that
    token after it is dropped either way, and a string begun in the prompt cuts the text to ``""``."""
    from models.tokenizer import continuation
    ids, context = [int(i) for i in ids], [int(i) for i in context]
    if not ids:
        return None
    head = tokenizer.decode(context) if context else ""
    text, before = continuation(tokenizer, context, ids), continuation(tokenizer, context, ids[:-1])
    common = next((i for i, (a, b) in enumerate(zip(text, before)) if a != b), min(len(text), len(before)))
    joined, boundary = head + text, len(head) + common          # the last token's text starts after `boundary`
    best = None
    for s in strings:
        i = joined.find(s, max(0, boundary - len(s) + 1))
        if i >= 0 and (best is None or (i + len(s), i) < best):
            best = (i + len(s), i)
    if best is None:
        return None
    end, start = best
    return text[:end - len(head)], text[:max(0, start - len(head))]
