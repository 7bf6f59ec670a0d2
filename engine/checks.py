"""Checks of the values a user hands the engine, made once where they enter (the public verbs).

The jitted cores (``_start``, ``_step``, ``decode_loop``, ``_append``, ...) trust what these return.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.state import DecodeState
from models import memory
from sampling import Sampler


def check_state(state) -> None:
    """A ``ValueError`` unless ``state`` is a :class:`DecodeState` whose buffers still exist: ``decode``
    and ``append`` donate theirs (the KV cache is updated in place), so a state passed to one of them
    is used up; to continue one state twice, copy it first (``engine.select``)."""
    if not isinstance(state, DecodeState):
        raise ValueError(f"expected a DecodeState (from engine.start), got {type(state).__name__}")
    if any(x.is_deleted() for x in jax.tree.leaves(state) if isinstance(x, jax.Array)):
        raise ValueError("this DecodeState was used up by an earlier engine.decode / engine.append (they donate "
                         "its buffers); continue from what that call returned, or copy it first with "
                         "engine.select(state, indices) to branch")


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
    """Token-id lists of ``prompts`` (strings are encoded), or a ``ValueError`` naming the problem;
    ``max_new_tokens`` (the argument ``name``) more tokens must fit in the model's length."""
    config = model.config
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists or strings")
    check_int(name, max_new_tokens, 1)
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if model.tokenizer is None:
                raise ValueError("string prompts need a model with a tokenizer; pass token ids")
            p = model.tokenizer.encode(p)
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
    """Bytes of a :class:`DecodeState`: the KV cache (prefix ``groups x prefix`` slots, rollouts
    ``rows x capacity``), the per-row logits and token counts [rows, V] and the per-slot arrays."""
    kv = config.layers * 2 * config.kv_heads * config.head_dim * np.dtype(config.dtype).itemsize
    return kv * (groups * prefix + rows * capacity) + rows * config.vocab_size * 8 + rows * capacity * 13


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
    return jnp.asarray(sorted(set(config.eos_ids) | set(extra.tolist())) or [-1], jnp.int32)


def check_sampler(sampler) -> Sampler:
    """``sampler``, greedy for None, or a ``ValueError`` for anything that is not a :class:`Sampler`."""
    if sampler is None:
        return Sampler.greedy()
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a sampling.Sampler (e.g. Sampler(temperature=0.8)), got "
                         f"{type(sampler).__name__}")
    return sampler
