"""Checks of the values a user hands the engine, made once where they enter (the public verbs).

The jitted cores (``_start``, ``_step``, ``decode_loop``, ``_append``, ...) trust what these return.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

import sharding
from engine.state import DecodeState
from models import memory
from sampling import Sampler


def traced(state: DecodeState) -> bool:
    """Whether ``state`` is being traced (a verb called inside ``jax.jit`` / ``lax.while_loop``): then
    only its static parts (shapes, settings) can be checked, and values are trusted."""
    return isinstance(state.done, jax.core.Tracer)


def check_state(state) -> None:
    """A ``ValueError`` unless ``state`` is a :class:`DecodeState` whose buffers still exist: ``decode``,
    ``append`` and ``rewind`` donate theirs (the KV cache is updated in place), so a state passed to one
    of them is used up; to continue one state twice, copy it first (``engine.select``)."""
    if not isinstance(state, DecodeState):
        raise ValueError(f"expected a DecodeState (from engine.start), got {type(state).__name__}")
    if traced(state):
        return
    if any(x.is_deleted() for x in jax.tree.leaves(state) if isinstance(x, jax.Array)):
        raise ValueError("this DecodeState was used up by an earlier engine.decode / engine.append (they donate "
                         "its buffers); continue from what that call returned, or copy it first with "
                         "engine.select(state, indices) to branch")


def check_copies(state: DecodeState, rows: int) -> None:
    """A ``ValueError`` unless a copy of ``state`` with ``rows`` rollouts (``select`` / ``fork``) fits in
    the memory the process may still use (every rollout-axis array grows in proportion)."""
    per_row = sum(x.nbytes for x, axes in zip(jax.tree.leaves(state), jax.tree.leaves(
        state.axes(), is_leaf=lambda a: isinstance(a, tuple))) if "rollouts" in axes) // state.done.shape[0]
    need, have = per_row * rows, memory_bytes()
    if need > have:
        raise ValueError(f"{rows} rollouts of this state need {need / 2**30:.1f} GiB (KV cache, logits, tokens); "
                         f"the memory left is {have / 2**30:.1f} GiB")


def check_finite(state: DecodeState, mesh=None) -> None:
    """A ``ValueError`` naming the rollouts whose model logits held NaN or +inf (``state.failed``): they
    ended there, without a token (a broken checkpoint or a numeric overflow, not a sampling result)."""
    if not bool(jnp.any(state.failed)):             # one replicated scalar: readable on every host
        return
    failed = np.flatnonzero(np.asarray(state.failed if mesh is None else sharding.replicate(state.failed, mesh)))
    if failed.size:
        n = state.shape[1]
        rows = ", ".join(f"(prompt {i // n}, rollout {i % n})" for i in failed[:5])
        raise ValueError(f"the model gave NaN or infinite logits for {failed.size} of {state.done.shape[0]} rollouts "
                         f"({rows}{', ...' if failed.size > 5 else ''}); check its weights and dtype")


def check_bool(name: str, x) -> None:
    """A ``ValueError`` naming ``name`` unless ``x`` is True or False."""
    if not isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {x!r}")


def check_int(name: str, x, low: int | None = None) -> None:
    """A ``ValueError`` naming ``name`` unless ``x`` is a Python or NumPy integer (not a bool) >= ``low``."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or (low is not None and x < low):
        raise ValueError(f"{name} must be an integer{'' if low is None else f' >= {low}'}, got {x!r}")


def token_ids(what: str, x) -> list[int]:
    """``x`` (a token-id list or array) as a flat list of ints, or a ``ValueError`` naming ``what``
    when it holds anything but integers (a cast would silently truncate floats)."""
    try:
        ids = np.asarray(x)
    except ValueError:                     # ragged nesting
        ids = np.asarray(None)
    if ids.ndim != 1 or ids.dtype == object:
        raise ValueError(f"{what} must be a flat list of token ids, got {str(x)[:60]}")
    ids = ids.reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must hold integer token ids, got {ids.dtype} values {ids[:5].tolist()}")
    return ids.tolist()


def check_prompts(model, prompts, max_new_tokens: int, name: str = "max_new_tokens") -> list[list[int]]:
    """Token-id lists of ``prompts`` (strings are encoded; a chat, a list of ``{"role", "content"}``
    messages, is formatted by the tokenizer's chat template with the cue for the assistant's turn,
    ``apply_chat_template(chat, add_generation_prompt=True)``), or a ``ValueError`` naming the problem;
    ``max_new_tokens`` (the argument ``name``) more tokens must fit in the model's length."""
    config = model.config
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists, strings or chats")
    check_int(name, max_new_tokens, 1)
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, Mapping):
            raise ValueError(f"prompt {i} is one chat message; a chat prompt is a list of messages: [{str(p)[:40]}]")
        chat = isinstance(p, (list, tuple)) and p and isinstance(p[0], Mapping)
        if (isinstance(p, str) or chat) and model.tokenizer is None:
            raise ValueError("string and chat prompts need a model with a tokenizer; pass token ids")
        if isinstance(p, str):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            p = model.tokenizer.encode(p)
        elif chat:                                     # ends with the cue for the assistant's turn
            try:
                p = model.tokenizer.apply_chat_template(p, add_generation_prompt=True)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        elif not hasattr(p, "__len__") or getattr(p, "ndim", 1) == 0:
            raise ValueError(f"prompt {i} is a single value ({p!r}); prompts is a list of prompts, each a token-id "
                             f"list or a string (one prompt of ids: [[2, 3]], not [2, 3])")
        p = token_ids(f"prompt {i}", p)
        if not p:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in p if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {config.vocab_size}): {bad[:5]}")
        if len(p) + max_new_tokens > config.max_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens; with {max_new_tokens} new tokens ({name}) that "
                             f"exceeds the model's maximum length {config.max_len}")
        ids.append(p)
    return ids


def state_bytes(config, groups: int, prefix: int, rows: int, capacity: int) -> int:
    """Bytes of a :class:`DecodeState` (or of one track's part of it): the KV cache (prefix ``groups x
    prefix`` slots, rollouts ``rows x capacity``), the logits [rows + groups, V] and the per-slot arrays
    (token, two log-probs, automaton state: 4 bytes each; valid and drawn flags)."""
    kv = config.layers * 2 * config.kv_heads * config.head_dim * np.dtype(config.dtype).itemsize
    return kv * (groups * prefix + rows * capacity) + (rows + groups) * config.vocab_size * 4 + rows * capacity * 18


# what a state may use: device limits, or on CPU the least of RAM, rlimits and cgroup limits, less what is in use
memory_bytes = memory.memory_bytes


def stop_ids(config, stop_tokens=None) -> jax.Array:
    """The config's EOS ids and ``stop_tokens`` as one int32 array (``[-1]`` when there are none)."""
    try:
        extra = np.asarray([] if stop_tokens is None else stop_tokens).reshape(-1)
    except ValueError:                                  # ragged nesting
        extra = np.asarray([None])
    if extra.size and (not np.issubdtype(extra.dtype, np.integer) or extra.min() < 0
                       or extra.max() >= config.vocab_size):
        raise ValueError(f"stop_tokens must be token ids in [0, {config.vocab_size}), got {str(stop_tokens)[:60]}")
    return np.asarray(sorted(set(config.eos_ids) | set(extra.tolist())) or [-1], np.int32)


def stop_strings(model, stop=None):
    """The :class:`~engine.stops.StopStrings` tables of ``stop`` (a list of non-empty strings) over
    ``model``'s vocabulary, or None for none; a ``ValueError`` for anything else, for a model without a
    tokenizer, or for strings no token of the vocabulary can end."""
    if stop is None:
        return None
    if not isinstance(stop, (list, tuple)) or not stop or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a non-empty list of non-empty strings (stop=[\"</answer>\"]), got {stop!r:.60}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("stop strings need a model with a tokenizer (to read its tokens' text); use stop_tokens")
    for s in stop:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"stop string {s!r:.40} is not valid Unicode ({e.reason})") from None
    from engine.stops import tables
    return tables(model.tokenizer, tuple(stop), model.config.vocab_size)


def check_sampler(sampler) -> Sampler:
    """``sampler``, greedy for None, or a ``ValueError`` for anything that is not a :class:`Sampler`."""
    if sampler is None:
        return Sampler.greedy()
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a sampling.Sampler (e.g. Sampler(temperature=0.8)), got "
                         f"{type(sampler).__name__}")
    return sampler


def check_models(model, tracks, state: DecodeState) -> dict:
    """``tracks`` as a dict, or a ``ValueError`` unless ``model`` and ``tracks`` are the models ``state``
    was started with: the same vocabulary, and one model of the same kind per track name."""
    vocab = state.logits.shape[-1]
    if getattr(getattr(model, "config", None), "vocab_size", None) != vocab:
        raise ValueError(f"this state was started with a {vocab}-token model; got "
                         f"{getattr(getattr(model, 'config', None), 'vocab_size', type(model).__name__)!r} instead")
    tracks = {} if tracks is None else tracks
    if not isinstance(tracks, dict) or set(tracks) != set(state.tracks):
        raise ValueError(f"this state has tracks {sorted(state.tracks) or 'none'}: pass tracks={{name: model}} with "
                         f"those models, got {sorted(tracks) if isinstance(tracks, dict) else tracks!r:.60}")
    for name, track in tracks.items():
        reward = state.tracks[name].out.ndim == 1
        if getattr(getattr(track, "config", None), "vocab_size", None) != vocab or track.config.score_head != reward:
            raise ValueError(f"track {name!r} was started with a {'reward' if reward else 'language'} model of "
                             f"{vocab} tokens; got {type(track).__name__} with another vocabulary or kind")
    return tracks


def step_ids(model, step_tokens) -> jax.Array:
    """Step delimiters int32 [D, L], each right-aligned with -1 before a shorter one (``[0, 1]``: none).

    ``step_tokens``: token ids (each a one-token delimiter), a string (one delimiter: its tokens, encoded
    without BOS), or a list mixing ids, strings and token-id lists (multi-token delimiters).
    """
    if step_tokens is None:
        return np.zeros((0, 1), np.int32)
    items = [step_tokens] if isinstance(step_tokens, str) else step_tokens
    if not isinstance(items, (list, tuple, np.ndarray)) or len(items) == 0:
        raise ValueError(f"step_tokens must be token ids, a string or a list of them, got {step_tokens!r:.60}")
    seqs = []
    for item in items:
        if isinstance(item, str):
            if model.tokenizer is None:
                raise ValueError("string step_tokens need a model with a tokenizer; pass token ids")
            item = model.tokenizer.encode(item, bos=False)
        seq = token_ids("a step delimiter", [item] if np.ndim(item) == 0 else item)
        vocab = model.config.vocab_size
        if not seq or not all(0 <= t < vocab for t in seq):
            raise ValueError(f"step_tokens must be non-empty token ids in [0, {vocab}), got {item!r:.60}")
        seqs.append(seq)
    width = max(map(len, seqs))
    return np.asarray([[-1] * (width - len(s)) + s for s in seqs], np.int32)


def check_tracks(model, tracks, track_prompts, n_prompts: int) -> dict:
    """``{name: model}`` from ``tracks`` (a dict, or None), each sharing the policy's vocabulary, and
    ``track_prompts`` naming only tracks, each with one prompt per policy prompt; or a ``ValueError``."""
    tracks = {} if tracks is None else tracks
    if not isinstance(tracks, dict):
        raise ValueError(f"tracks must be a dict {{name: model}}, got {type(tracks).__name__}")
    vocab = model.config.vocab_size
    for name, track in tracks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"track names must be non-empty strings, got {name!r}")
        config = getattr(track, "config", None)
        if getattr(config, "vocab_size", None) != vocab:
            raise ValueError(f"track {name!r} has a vocabulary of {getattr(config, 'vocab_size', None)} tokens; the "
                             f"policy's has {vocab}: a track must share the policy's tokenizer")
        if config.score_head and not hasattr(track, "score"):
            raise ValueError(f"track {name!r} has a score head but no .score step (use a models.Model)")
    track_prompts = {} if track_prompts is None else track_prompts
    if not isinstance(track_prompts, dict) or set(track_prompts) - set(tracks):
        raise ValueError(f"track_prompts must be a dict whose keys are track names ({sorted(tracks)}), got "
                         f"{track_prompts!r:.80}")
    for name, prompts in track_prompts.items():
        if not isinstance(prompts, (list, tuple)) or len(prompts) != n_prompts:
            raise ValueError(f"track_prompts[{name!r}] must hold one prompt per prompt ({n_prompts})")
    return tracks


def check_track(state: DecodeState, name, reward: bool) -> None:
    """A ``ValueError`` unless ``state`` has a track ``name`` of the kind ``reward`` asks for."""
    if name not in state.tracks:
        raise ValueError(f"unknown track {name!r}; this state's tracks: {sorted(state.tracks) or 'none'}")
    if (state.tracks[name].out.ndim == 1) != reward:
        raise ValueError(f"track {name!r} is {'a language' if reward else 'a reward'} model; this needs "
                         f"{'a reward' if reward else 'a language'} model")


def check_rows(name: str, x, shape, low: int, high) -> np.ndarray | jax.Array:
    """``x`` as an int array of ``shape`` [G, M] with values in ``[low, high]`` (``high`` int or array
    of the shape), or a ``ValueError`` naming ``name``. A traced ``x`` is checked for shape alone."""
    if isinstance(x, jax.core.Tracer):
        if x.ndim != 2 or x.shape[0] != shape[0] or (shape[1] is not None and x.shape[1] != shape[1]):
            raise ValueError(f"{name} must have shape {_shape(shape)}, got {x.shape}")
        return x.astype(jnp.int32)
    try:
        arr = np.asarray(x)
    except ValueError:                                  # ragged rows
        arr = np.asarray(None)
    if arr.ndim != 2 or arr.shape[0] != shape[0] or arr.shape[1] < 1 or shape[1] not in (None, arr.shape[1]):
        raise ValueError(f"{name} must have shape {_shape(shape)}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or np.any(arr < low) or np.any(arr > high):
        lo, hi = (arr.min(), arr.max()) if arr.dtype != object else ("?", "?")
        raise ValueError(f"{name} must be integers in [{low}, {np.max(high) if np.ndim(high) else high}]"
                         f"{' (each within its rollout)' if np.ndim(high) else ''}, got values {lo}..{hi}")
    return arr.astype(np.int32)


def _shape(shape) -> str:
    return f"[G={shape[0]}, {'M>=1' if shape[1] is None else f'N={shape[1]}'}]"


def check_draft(model, draft) -> dict:
    """The tracks a ``generate(..., draft=...)`` starts with: ``{"draft": draft}`` for a language model sharing
    ``model``'s vocabulary and tokenizer, none for ``"prompt_lookup"``; a ``ValueError`` for anything else."""
    if isinstance(draft, str) and draft == "prompt_lookup":
        return {}
    config = getattr(draft, "config", None)
    if config is None or not hasattr(draft, "forward") or config.score_head:
        raise ValueError(f"draft must be a language model (models.Model) or 'prompt_lookup', got {draft!r:.60}")
    vocab = model.config.vocab_size
    if config.vocab_size != vocab:
        raise ValueError(f"the draft has a vocabulary of {config.vocab_size} tokens; the policy's has {vocab}: "
                         f"a draft must share the policy's tokenizer")
    ours, theirs = getattr(model, "tokenizer", None), getattr(draft, "tokenizer", None)
    if ours is not None and theirs is not None and ours is not theirs:
        from engine.stops import token_bytes
        if token_bytes(ours, vocab) != token_bytes(theirs, vocab):
            raise ValueError("the draft's tokenizer differs from the policy's (other token texts): a draft must "
                             "share the policy's tokenizer")
    return {"draft": draft}
