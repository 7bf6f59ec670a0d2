"""Checks of the sampling values a user hands in, made once on the host where they enter:
``Sampler(...)`` (:func:`sampler_values`), :meth:`Sampler.check_vocab` (:func:`check_vocab`) and
:func:`sampling.mixtures.resolve` (:func:`mixture_params`).

Each returns the values normalised (NumPy arrays of one dtype) or raises a ``ValueError`` naming
the value; the filters, the sampler and the mixtures trust what they return.
"""
from __future__ import annotations

import jax
import numpy as np

from sampling import filters
from sampling.constraints import closure

F32, I32 = np.float32, np.int32
LARGEST = 1e30     # no float value may be larger in magnitude: the filters' products with it stay finite in fp32
# setting: (check, what the check requires); each setting's dtype and off value: sampling.sampler.SETTINGS
RANGES = {
    # penalties bounded so that penalised logits stay finite in fp32 (1e-39 once made them inf: NaN draws)
    "repetition_penalty": (lambda x: (x >= 1e-30) & (x <= 1e30), "must be in [1e-30, 1e30]"),
    "presence_penalty": (lambda x: np.abs(x) <= 1e30, "must be in [-1e30, 1e30]"),
    "frequency_penalty": (lambda x: np.abs(x) <= 1e30, "must be in [-1e30, 1e30]"),
    "no_repeat_ngram": (lambda x: (x >= 0) & (x <= filters.MAX_NGRAM), f"must be in [0, {filters.MAX_NGRAM}]"),
    "min_new_tokens": (lambda x: x >= 0, "must be >= 0"),
    "temperature": (lambda x: (x >= 0) & np.isfinite(x), "must be >= 0"),
    "top_k": (lambda x: x >= 0, "must be >= 0"),
    "top_p": (lambda x: (x > 0) & (x <= 1), "must be in (0, 1]"),
    "min_p": (lambda x: (x >= 0) & (x <= 1), "must be in [0, 1]"),
    "typical": (lambda x: (x > 0) & (x <= 1), "must be in (0, 1]"),
    "epsilon": (lambda x: (x >= 0) & (x < 1), "must be in [0, 1)"),
    "eta": (lambda x: (x >= 0) & (x < 1), "must be in [0, 1)"),
    "mirostat": (lambda x: x >= 0, "(the target surprise tau) must be >= 0"),
    "mirostat_lr": (lambda x: x > 0, "must be > 0"),
    "min_keep": (lambda x: x >= 1, "must be >= 1"),
}
# (mixture, parameter): its checks in order, (check, what it requires); every other parameter must be a
# finite number; and none may be larger in magnitude than LARGEST (cfg scale 3e38: inf logits, NaN draws)
MIXTURE_RULES = {
    ("contrastive", "alpha"): ((lambda a: (a > 0) & (a <= 1), "in (0, 1]"),),
    ("contrastive", "amateur_temperature"): (
        (lambda t: np.isfinite(t) & (t > 0), "a finite number > 0"),
        # below, the amateur is a point mass anyway; at 1e-9 its log-probs reached -1e9 and less, where
        # XLA's two roundings of the division (in two fusions) overflowed the log-softmax: NaN
        # log-probs and token ids past the vocabulary
        (lambda t: t >= 1e-3, "at least 0.001")),
}


def sampler_values(settings: dict, table: dict, order) -> tuple[dict, np.ndarray | None]:
    """The values of ``Sampler(**settings)`` and its constraint's full-match states (None where it
    has none), or a ``ValueError``. ``table``: :data:`sampling.sampler.SETTINGS` (name: (dtype, off
    value)); ``order``: every known name, in the chain's order.

    Per-row settings become NumPy arrays of their dtype (traced ones, inside jit, stay as they are:
    only their dtype can be checked); ``logit_bias`` becomes (ids, biases) and the token lists
    int32 ids; an empty ``logit_bias`` or ``banned_tokens`` is left out (it filters nothing).
    """
    unknown = sorted(set(settings) - set(table) - set(order))
    if unknown:
        raise ValueError(f"unknown sampler settings {unknown}; known: {', '.join(dict.fromkeys([*order, *table]))}")
    values = {name: _setting(name, value, table[name][0]) for name, value in settings.items() if name in table}
    values |= _token_lists(settings)
    least = values.get("min_new_tokens", 0)       # a traced value may be anything: refused too
    if "constraint" in values and (isinstance(least, jax.core.Tracer) or np.any(np.asarray(least))):
        raise ValueError("min_new_tokens cannot be combined with a constraint: where the constraint allows "
                         "only a stop token, no token could be drawn")
    if any(isinstance(values.get(k), jax.core.Tracer) for k in ("top_k", "min_keep")):
        raise ValueError("top_k and min_keep cannot be traced (inside jit): they set static shapes; pass "
                         "concrete values")
    return values, _accepting(settings.get("constraint"), values.get("constraint"))


def _setting(name, value, dtype):
    """A per-row setting as a checked NumPy array of ``dtype`` (a traced one as it is, if not bools)."""
    if isinstance(value, jax.core.Tracer):
        _no_bools(name, value)
        return value
    arr = _numbers(name, value, dtype)
    if arr.size == 0:
        raise ValueError(f"{name} is an empty array; give a number or one per prompt / rollout")
    ok, why = RANGES[name]
    if not np.all(ok(arr)):
        raise ValueError(f"{name} {why}, got {np.asarray(value).tolist()}")
    if np.any(np.abs(arr) > LARGEST):          # mirostat_lr 3e38: its estimate overflowed, inf - inf = NaN
        raise ValueError(f"{name} must be at most 1e30 in magnitude, got {np.asarray(value).tolist()}")
    return arr


def _numbers(name, value, dtype) -> np.ndarray:
    """``value`` as a NumPy array of ``dtype``, or a ``ValueError``: not numbers, bools (NumPy would
    read them as 0 and 1), traced (inside jit), or numbers a cast would change: outside the range
    of ``dtype``, or (for an integer ``dtype``) not whole, which a cast would silently truncate."""
    _no_bools(name, value)
    try:
        raw = np.asarray(value)
    except ValueError:                                  # ragged nested lists
        raw = np.asarray(None)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(f"{name} cannot be traced (inside jit): it is checked on the host; pass concrete "
                         f"values") from None
    if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
        raise ValueError(f"{name} must be a number or an array of (real) numbers, got {value!r}")
    if np.issubdtype(dtype, np.integer) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise ValueError(f"{name} must be a whole number, got {raw.tolist()}")
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    if np.any(np.isfinite(raw) & ((raw < info.min) | (raw > info.max))):   # a cast would wrap or overflow
        raise ValueError(f"{name} is outside the range of {np.dtype(dtype).name}, got {raw.tolist()}")
    return raw.astype(dtype)


def _no_bools(name, value) -> None:
    """A ``ValueError`` naming ``name`` where ``value`` holds a bool: NumPy would read it as 0 or 1."""
    if _bools(value):
        raise ValueError(f"{name} must be a number or an array of numbers, not bools, got {value!r}")


def _bools(value) -> bool:
    """Whether ``value`` is, or holds in nested lists and tuples, a bool."""
    if isinstance(value, (list, tuple)):
        return any(_bools(v) for v in value)
    return isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == bool


def _token_lists(settings) -> dict:
    """``logit_bias`` as (ids, biases), the allowed / banned token ids and the constraint's table, as
    arrays, checked; an empty ``logit_bias`` or ``banned_tokens`` is left out."""
    out = {}
    if "logit_bias" in settings:
        out["logit_bias"] = _bias(settings["logit_bias"])
    for name in ("allowed_tokens", "banned_tokens"):
        if name in settings:
            out[name] = _numbers(name, settings[name], I32).reshape(-1)
    if "allowed_tokens" in out and out["allowed_tokens"].size == 0:
        raise ValueError("allowed_tokens is empty: no token could be drawn")
    ids = {name: value[0] if name == "logit_bias" else value for name, value in out.items()}
    for name, value in ids.items():
        if np.any(value < 0):
            raise ValueError(f"{name} token ids must be >= 0, got {value.tolist()}")
    out = {name: value for name, value in out.items() if ids[name].size}    # none: no filter (the filters need one)
    if "constraint" in settings:
        out["constraint"] = _table(getattr(settings["constraint"], "table", settings["constraint"]))
    return out


def _bias(value) -> tuple[np.ndarray, np.ndarray]:
    """``logit_bias`` ({token id: bias}) as (ids int32 [K], biases float32 [K]), checked."""
    try:
        bias = dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {value!r}") from None
    ids = _numbers("logit_bias token ids", list(bias), I32)
    biases = _numbers("logit_bias biases", list(bias.values()), F32)
    if ids.size != len(bias) or biases.size != len(bias):     # a key or a value that is not one number
        raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {value!r}")
    if np.any(np.isnan(biases) | (biases == np.inf)):
        raise ValueError(f"logit_bias biases must be finite or -inf (a ban), got {biases.tolist()}")
    if np.any(biases > 1e8):       # a repetition_penalty (>= 1e-30) divides positive logits: 1e10 became inf
        raise ValueError(f"logit_bias biases must be at most 1e8 (100 already makes a token certain), "
                         f"got {biases.tolist()}")
    return ids.reshape(-1), biases.reshape(-1)


def _table(table) -> np.ndarray:
    """A constraint's table: int32 [states, vocab] of next states (-1: not allowed), checked."""
    table = _numbers("constraint.table", table, I32)
    if table.ndim != 2 or table.shape[0] < 1 or np.any(table >= table.shape[0]) or np.any(table < -1):
        raise ValueError("constraint.table must be int [states, vocab] of next states (or -1 for not allowed)")
    if not np.all(np.any(table >= 0, axis=1)):
        raise ValueError("constraint.table has a state with no allowed token (a dead end)")
    return table


def _accepting(constraint, table) -> np.ndarray | None:
    """bool [states]: the constraint's full-match states (``constraint.accepting``), or None for a bare table."""
    if table is None or not hasattr(constraint, "accepting"):
        return None
    accepting = np.asarray(constraint.accepting)
    if accepting.shape != table.shape[:1] or accepting.dtype != bool:
        raise ValueError(f"constraint.accepting must be bool [states={table.shape[0]}], got {accepting.dtype} "
                         f"{accepting.shape}")
    return accepting


def check_vocab(values: dict, accepting, vocab: int, stop_ids=None) -> None:
    """A ``ValueError`` where a sampler's checked ``values`` (and its constraint's full-match states
    ``accepting``) cannot work with a ``vocab``-token model whose rows stop at ``stop_ids``: see
    :meth:`sampling.Sampler.check_vocab`."""
    for name in ("logit_bias", "allowed_tokens", "banned_tokens"):
        if name in values:
            ids = np.asarray(values[name][0] if name == "logit_bias" else values[name])
            if ids.max() >= vocab:
                raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab}): "
                                 f"{ids[ids >= vocab][:5].tolist()}")
    if "constraint" in values and np.shape(values["constraint"])[1] != vocab:
        raise ValueError(f"constraint.table has {np.shape(values['constraint'])[1]} columns; the model's "
                         f"vocabulary has {vocab} tokens")
    can = np.zeros(vocab, bool)        # what the token lists leave drawable
    can[values.get("allowed_tokens", slice(None))] = True
    can[values.get("banned_tokens", [])] = False
    if "logit_bias" in values:
        ids, bias = values["logit_bias"]
        can[np.asarray(ids)[np.asarray(bias) == -np.inf]] = False
    if not can.any():
        raise ValueError("no token could be drawn: allowed_tokens, banned_tokens and -inf logit_bias exclude "
                         "every token")
    stop = np.zeros(vocab, bool)
    if stop_ids is not None:
        ids = np.asarray(stop_ids).reshape(-1)
        stop[ids[(ids >= 0) & (ids < vocab)]] = True
    least = values.get("min_new_tokens", 0)
    if stop.any() and not (can & ~stop).any() and (isinstance(least, jax.core.Tracer) or np.any(np.asarray(least))):
        raise ValueError("min_new_tokens suppresses the stop tokens, and allowed_tokens, banned_tokens and -inf "
                         "logit_bias leave no other token: no token could be drawn")
    if "constraint" in values:
        _check_constraint(np.asarray(values["constraint"]), accepting, can, stop)


def _check_constraint(table, accepting, can, stop) -> None:
    """The constraint half of :func:`check_vocab`. Rows are followed from state 0 along drawable
    tokens other than stop tokens (a row is done after a stop token)."""
    known = accepting is not None and stop.any()               # else stop tokens are not checked
    moves = np.where((can & ~stop)[None, :] if known else can[None, :], table, -1)
    seen = np.array(sorted(closure([0], moves, forward=True)))
    if not (table[seen][:, can] >= 0).any(axis=1).all():
        raise ValueError("no token could be drawn in a state of the constraint: allowed_tokens, "
                         "banned_tokens and -inf logit_bias exclude every token it allows there")
    if not known:
        return
    stops = (table[:, can & stop] >= 0).any(axis=1)               # states where a row may stop
    early = seen[stops[seen] & ~accepting[seen]]
    if early.size:
        ids = np.flatnonzero(can & stop & (table[early] >= 0).any(axis=0))
        raise ValueError(f"stop tokens {ids[:5].tolist()} are allowed by the constraint before its text is a "
                         f"full match: a row stopping there would not match; leave them out of stop_tokens")
    ends = closure(np.flatnonzero(stops), moves, forward=False)
    if set(seen.tolist()) - ends:
        raise ValueError(f"from some state of the constraint no stop token (ids "
                         f"{np.flatnonzero(stop)[:5].tolist()}) can be drawn, so a row there would never end: "
                         f"compile the constraint with the model's EOS (eos_id=) and keep the token lists "
                         f"from removing it")


def mixture_params(combine: str, count: int, params: dict, mixtures: dict) -> dict:
    """The parameters of the named mixture ``combine`` of ``count`` models, its defaults filled in,
    each a float32 array, or a ``ValueError``. ``mixtures``: :data:`sampling.mixtures.MIXTURES`."""
    if combine not in mixtures:
        raise ValueError(f"unknown mixture {combine!r}; known: {', '.join(mixtures)} (or pass a function)")
    _, need, defaults, roles = mixtures[combine]
    if count != need:
        raise ValueError(f"{combine} mixes {need} models ({', '.join(roles)}), got {count}")
    known = set(defaults) | {name for mixture, name in MIXTURE_RULES if mixture == combine}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown {combine} parameters {unknown}; known: {', '.join(sorted(known))}")
    return {name: _mixture_param(combine, name, value) for name, value in (defaults | params).items()}


def _mixture_param(combine, name, value) -> np.ndarray:
    """One parameter of the mixture ``combine`` as a float32 array, checked (:data:`MIXTURE_RULES`)."""
    rules = MIXTURE_RULES.get((combine, name), ((np.isfinite, "a finite number"),))
    try:
        arr = np.asarray(value)
    except ValueError:                              # ragged nesting
        arr = np.asarray(None)
    real = not _bools(value) and np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)
    with np.errstate(over="ignore"):
        for ok, why in rules + ((lambda x: np.abs(x) <= LARGEST, "at most 1e30 in magnitude"),):
            if not real or arr.size == 0 or not np.all(ok(arr.astype(F32))):
                raise ValueError(f"{combine} {name} must be {why} (or an array of them), got {value!r}")
    return arr.astype(F32)
