"""Constrained decoding: a regular expression or a list of choices as a dense token automaton.

``compile_regex(pattern, tokenizer)`` and ``compile_choices(choices, tokenizer)`` run once, on
the host, and return a :class:`Constraint` whose ``table`` (int32 [states, V]) gives the next
state after each token from each state, -1 where the token is not allowed. Pass it as
``Sampler(constraint=c)``: the engine carries each rollout's state and masks its logits, so every
finished output (the text up to EOS) fully matches the pattern.

How it is built:

1. The pattern becomes a *character* DFA. Regexes are parsed by `interegular
   <https://pypi.org/project/interegular/>`_ — the small, pure-Python regex -> FSM library that
   outlines and lm-format-enforcer use for the same job; it reads Python ``re`` syntax and
   compresses the alphabet into character classes, which keeps the walk below cheap. A choice
   list becomes a trie (no regex escaping involved).
2. Every token's text (as it reads after other text — see :func:`token_strings`) is walked
   through the character DFA from every state at once (numpy, one pass per character
   position), giving the token-level table.
3. EOS is allowed exactly in accepting states and leads to an absorbing state that allows only
   EOS, so a row that stops stays consistent.
4. States that cannot reach acceptance through this vocabulary are removed (so no state is a
   dead end); if the start state is among them the pattern is unsatisfiable: ``ValueError``.

Supported regex syntax (interegular's): literals and escapes, ``.`` (not newline), classes
``[a-z0-9]`` and negated classes, ``\\d \\w \\s`` and their negations (ASCII, a subset of
Python's Unicode classes, so outputs always ``re.fullmatch``), ``* + ? {m} {m,} {m,n}``, ``|``,
groups ``( )`` ``(?: )``, lookaheads and inline flags like ``(?i)``. Not supported (a
``ValueError``): anchors ``^ $ \\b``, back-references, lookbehinds, Unicode properties. The
pattern always has to match the whole output (``re.fullmatch`` semantics).

Tokens that have no text of their own (control tokens, BOS, pad, unknown) or whose text is not
whole characters (a byte-fallback or byte-level token holding part of a multi-byte UTF-8
character) are never allowed inside the pattern.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

DEAD = -1


@dataclasses.dataclass(frozen=True)
class CharDFA:
    """A deterministic automaton over characters, the alphabet compressed into classes."""
    classes: dict          # str -> class id; any other character is class `other`
    other: int             # class of every character not in `classes`
    table: np.ndarray      # int32 [states, classes] next state, -1 = dead
    accepting: np.ndarray  # bool [states]
    initial: int


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A token automaton: state 0 is the start, ``table[s, t]`` the state after token ``t`` (-1: not allowed).

    ``accepting[s]``: the text so far is a full match (EOS is allowed there). ``final`` is the
    absorbing state reached by EOS.
    """
    table: np.ndarray      # int32 [states, V]
    accepting: np.ndarray  # bool [states]
    final: int             # the state after EOS (allows only EOS)
    eos_ids: tuple         # the token ids that end a match
    source: str            # the pattern (or the choices) it was compiled from

    @property
    def states(self) -> int:
        return self.table.shape[0]

    def walk(self, ids) -> int:
        """The state after token ids ``ids`` from the start (-1 once a token is not allowed)."""
        state = 0
        for t in ids:
            state = int(self.table[state, int(t)])
            if state < 0:
                return DEAD
        return state


# ---------------------------------------------------------------------------- character automata

def regex_dfa(pattern: str) -> CharDFA:
    """The character DFA of ``pattern`` (full-match semantics), or a ``ValueError`` for unsupported syntax."""
    import interegular
    from interegular.fsm import anything_else
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {type(pattern).__name__}")
    try:                                  # interegular accepts some patterns Python's re refuses ("a**")
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regex {pattern!r}: {err}") from None
    if re.search(r"(?<!\\)(\\\\)*\[\^?\]", pattern):   # "[]a]", "[^]a]": interegular reads them otherwise
        raise ValueError(f"a ']' first in a class is not supported in {pattern!r}: escape it as \\]")
    try:
        fsm = interegular.parse_pattern(pattern).to_fsm()
    except interegular.patterns.Unsupported as err:
        raise ValueError(f"unsupported regex syntax in {pattern!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - interegular raises plain exceptions for malformed patterns
        raise ValueError(f"invalid regex {pattern!r}: {type(err).__name__} {err}".rstrip()) from None
    mapping = dict(fsm.alphabet.items())
    n_classes = max(mapping.values(), default=-1) + 2          # one spare class: characters never seen
    other = mapping.pop(anything_else, n_classes - 1)
    states = sorted(fsm.states)
    index = {s: i for i, s in enumerate(states)}
    table = np.full((len(states), n_classes), DEAD, np.int32)
    for s, moves in fsm.map.items():
        for cls, nxt in moves.items():
            table[index[s], cls] = index[nxt]
    accepting = np.array([s in fsm.finals for s in states], bool)
    return CharDFA(classes={c: k for c, k in mapping.items()}, other=other, table=table, accepting=accepting,
                   initial=index[fsm.initial])


def choices_dfa(choices: Sequence[str]) -> CharDFA:
    """A trie of ``choices`` as a character DFA: exactly one of the strings, nothing else."""
    if isinstance(choices, str) or not isinstance(choices, (list, tuple, set, frozenset)) or not choices \
            or not all(isinstance(c, str) for c in choices):
        raise ValueError("choices must be a non-empty list of strings")
    chars = sorted({ch for c in choices for ch in c})
    classes = {ch: i for i, ch in enumerate(chars)}
    trie, accepting = [{}], [False]
    for c in choices:
        node = 0
        for ch in c:
            if ch not in trie[node]:
                trie[node][ch] = len(trie)
                trie.append({})
                accepting.append(False)
            node = trie[node][ch]
        accepting[node] = True
    table = np.full((len(trie), len(chars) + 1), DEAD, np.int32)
    for s, moves in enumerate(trie):
        for ch, nxt in moves.items():
            table[s, classes[ch]] = nxt
    return CharDFA(classes=classes, other=len(chars), table=table, accepting=np.array(accepting), initial=0)


# ---------------------------------------------------------------------------- tokens

def token_strings(tokenizer) -> list[str | None]:
    """Each token's text as it reads after other text, or None for tokens never allowed in a match.

    ``tokenizer`` is a rollax tokenizer (``decode``, ``vocab_size``, ``eos_id`` ...) or already a
    list of strings (token ``i``'s text; None or "" for tokens without text). A token's text is
    ``decode([a, t])`` minus ``decode([a])`` for an ordinary anchor token ``a``: this keeps the
    leading space of a sentencepiece "▁word" piece (which ``decode`` drops at the very start of
    a text). Tokens whose text is empty or holds U+FFFD (part of a UTF-8 character) map to None,
    and so do special tokens (BOS, pad, EOS, sentencepiece control/unknown, HF special tokens).
    """
    if isinstance(tokenizer, (list, tuple)):
        return [s if isinstance(s, str) and s else None for s in tokenizer]
    if not all(hasattr(tokenizer, a) for a in ("vocab_size", "decode")):
        raise ValueError(f"tokenizer must be a rollax tokenizer or a list of token strings, got {tokenizer!r:.60}")
    vocab = int(tokenizer.vocab_size)
    special = {getattr(tokenizer, name, None) for name in ("bos_id", "eos_id", "pad_id")} - {None}
    if hasattr(tokenizer, "sp"):
        sp = tokenizer.sp
        special |= {i for i in range(vocab) if sp.is_control(i) or sp.is_unknown(i)}
    if hasattr(tokenizer, "tok"):
        special |= {i for i, t in tokenizer.tok.get_added_tokens_decoder().items() if t.special}
    anchor, head = _anchor(tokenizer, vocab, special)
    out = []
    for t in range(vocab):
        text = None if t in special else tokenizer.decode([anchor, t])
        ok = text is not None and text.startswith(head) and len(text) > len(head) and "\ufffd" not in text
        out.append(text[len(head):] if ok else None)
    return out


def _anchor(tokenizer, vocab: int, special: set) -> tuple[int, str]:
    """An ordinary token with whole-character text (``a`` if the tokenizer has one) and that text."""
    first = [a for a in tokenizer.encode("a", bos=False) if a not in special][:1]
    for a in first + [i for i in range(vocab) if i not in special]:
        text = tokenizer.decode([a])
        if text.strip() and "\ufffd" not in text and tokenizer.decode([a, a]).startswith(text):
            return a, text
    raise ValueError("the tokenizer has no ordinary token with text (needed to read token texts)")


def token_table(dfa: CharDFA, strings: list[str | None]) -> np.ndarray:
    """int32 [dfa states, V]: the DFA state after walking each token's text from each state (-1: dead).

    The first character is looked up for every (state, token) pair at once; later characters
    only for the pairs still alive, which are few.
    """
    v, s = len(strings), dfa.table.shape[0]
    lengths = np.array([len(x) if x else 0 for x in strings], np.int64)
    width = int(lengths.max(initial=0))
    chars = np.full((v, max(width, 1)), dfa.other, np.int32)
    for i, x in enumerate(strings):
        if x:
            chars[i, :len(x)] = [dfa.classes.get(ch, dfa.other) for ch in x]
    out = np.full((s, v), DEAD, np.int32)
    first = dfa.table[:, chars[:, 0]]                                     # [S, V]
    first[:, lengths == 0] = DEAD
    out[:, lengths == 1] = first[:, lengths == 1]
    src, tok = np.nonzero((first >= 0) & (lengths > 1)[None, :])
    cur = first[src, tok]
    for pos in range(1, width):
        cur = dfa.table[cur, chars[tok, pos]]
        alive = cur >= 0
        src, tok, cur = src[alive], tok[alive], cur[alive]
        end = lengths[tok] == pos + 1
        out[src[end], tok[end]] = cur[end]
        src, tok, cur = src[~end], tok[~end], cur[~end]
    return out


def _eos_ids(tokenizer, eos_id) -> tuple:
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS id: pass eos_id= (the model's stop token)")
    try:
        arr = np.asarray(eos_id).reshape(-1)
    except ValueError:                                   # ragged nesting
        arr = np.asarray([None])
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"eos_id must be a token id or a list of them, got {eos_id!r}")
    ids = tuple(arr.tolist())
    if not ids:
        raise ValueError("eos_id is empty: a constrained output must be able to end")
    return ids


def build(dfa: CharDFA, tokenizer, *, eos_id=None, vocab_size: int | None = None, source: str = "") -> Constraint:
    """The token automaton of a character DFA for ``tokenizer`` (see the module docstring)."""
    eos = _eos_ids(tokenizer, eos_id)
    strings = token_strings(tokenizer)
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or vocab_size < 1):
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    v = len(strings) if vocab_size is None else int(vocab_size)
    if v < len(strings):
        raise ValueError(f"vocab_size {v} is smaller than the tokenizer's {len(strings)} tokens")
    if any(not 0 <= e < v for e in eos):
        raise ValueError(f"eos ids {list(eos)} are outside the vocabulary [0, {v})")
    strings = list(strings) + [None] * (v - len(strings))
    for e in eos:
        strings[e] = None                                                 # EOS only ends a match
    walk = token_table(dfa, strings)                                      # [S, V]
    s = walk.shape[0]
    final = s                                                             # the state after EOS
    table = np.concatenate([walk, np.full((1, v), DEAD, np.int32)])
    accepting = np.concatenate([dfa.accepting, [False]])
    for e in eos:
        table[np.flatnonzero(accepting), e] = final
        table[final, e] = final
    # keep the states reachable from the start that can still reach EOS
    reach = closure([dfa.initial], table, forward=True)
    alive = closure(np.flatnonzero(accepting), table, forward=False) | {final}
    if dfa.initial not in alive:
        raise ValueError(f"unsatisfiable constraint {source!r}: no sequence of this vocabulary's tokens matches it "
                         f"(or the pattern matches nothing)")
    keep = [dfa.initial] + sorted((reach & alive) - {dfa.initial})
    renumber = np.full(table.shape[0] + 1, DEAD, np.int32)               # index -1 (dead) stays dead
    renumber[keep] = np.arange(len(keep), dtype=np.int32)
    out = renumber[table[keep]]
    return Constraint(table=out, accepting=accepting[keep], final=int(renumber[final]), eos_ids=eos, source=source)


def closure(seeds, table, *, forward: bool) -> set:
    """States reachable from ``seeds`` along ``table``'s edges (backwards when not ``forward``)."""
    n = table.shape[0]
    src, tok = np.nonzero(table >= 0)
    codes = np.unique(src.astype(np.int64) * n + table[src, tok])     # distinct state -> state edges
    edges = {}
    for a, b in zip((codes // n).tolist(), (codes % n).tolist()):
        x, y = (a, b) if forward else (b, a)
        edges.setdefault(x, []).append(y)
    seen, todo = set(int(x) for x in seeds), [int(x) for x in seeds]
    while todo:
        for y in edges.get(todo.pop(), ()):
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return seen


# ---------------------------------------------------------------------------- public

def compile_regex(pattern: str, tokenizer, *, eos_id=None, vocab_size: int | None = None) -> Constraint:
    """Compile ``pattern`` (full match) into a token automaton for ``tokenizer``.

    ``eos_id`` (default ``tokenizer.eos_id``; an int or several) ends a match and must be the
    model's stop token. ``vocab_size`` pads the table to the model's vocabulary when it is larger
    than the tokenizer's (the extra ids are never allowed). ``tokenizer`` may also be a list of
    token strings. Unsupported syntax, an invalid pattern or one that no token sequence of this
    vocabulary can match are ``ValueError``s.
    """
    return build(regex_dfa(pattern), tokenizer, eos_id=eos_id, vocab_size=vocab_size, source=pattern)


def compile_choices(choices: Sequence[str], tokenizer, *, eos_id=None, vocab_size: int | None = None) -> Constraint:
    """Compile a list of strings into a token automaton: the output is exactly one of them.

    Any tokenization of a choice is allowed (e.g. "yes" as one token or as "y" + "es"). Arguments
    as :func:`compile_regex`; a choice no token sequence can spell is dropped, and if none is
    left it is a ``ValueError``.
    """
    return build(choices_dfa(choices), tokenizer, eos_id=eos_id, vocab_size=vocab_size, source=repr(list(choices)))
