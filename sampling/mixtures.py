"""Logit mixtures: pure ``(logits_list, params) -> logits`` combinations of several models' next-token logits.

Each function takes a list of fp32 logits ``[..., V]`` (one per model, in the order named in its
docstring) and a dict of parameters (numbers, or arrays with one value per row [...], traced so
new values need no recompilation) and returns logits ``[..., V]`` for a sampler. Models'
logits are first normalised to log-probabilities, so each model's arbitrary per-row offset
cancels. They know nothing of models; ``engine.mix_generate`` runs the models inside one loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sampling import checks
from sampling.sampler import fit_rows

IMPLAUSIBLE = 1e4   # contrastive decoding's penalty below the plausibility cut (see `contrastive`)


def _param(params, name):
    return jnp.asarray(params[name], jnp.float32)[..., None]        # one value per row -> [..., 1]


def contrastive(logits_list, params):
    """Contrastive decoding (Li et al. 2023): ``[expert, amateur]`` ->
    ``log p_expert - log p_amateur`` on the tokens with ``p_expert >= alpha * max p_expert``.

    The other tokens get that score minus :data:`IMPLAUSIBLE` (1e4): probability exactly 0 in
    fp32 and never a greedy pick while a plausible token is available — the same as -inf —
    but when a later mask (a constraint, an allow-list) removes every plausible token, the
    draw falls back on the allowed tokens' contrastive scores instead of an all -inf row.
    ``params``: ``alpha`` (the plausibility cut, 0.1 in the paper) and optionally
    ``amateur_temperature`` (the amateur's logits are divided by it first; 1 by default).
    """
    expert, amateur = logits_list
    lp_e = jax.nn.log_softmax(expert, axis=-1)
    tau = _param(params, "amateur_temperature") if "amateur_temperature" in params else 1.0
    lp_a = jax.nn.log_softmax(amateur / tau, axis=-1)
    plausible = lp_e >= jnp.max(lp_e, axis=-1, keepdims=True) + jnp.log(_param(params, "alpha"))
    score = lp_e - lp_a
    return jnp.where(plausible, score, score - IMPLAUSIBLE)


def proxy_tuning(logits_list, params):
    """Proxy tuning (Liu et al. 2024) / DExperts (Liu et al. 2021): ``[base, expert, anti_expert]`` ->
    ``log p_base + alpha * (log p_expert - log p_anti_expert)``. ``params``: ``alpha`` (1 = proxy tuning)."""
    base, expert, anti = (jax.nn.log_softmax(x, axis=-1) for x in logits_list)
    return base + _param(params, "alpha") * (expert - anti)


def cfg(logits_list, params):
    """Classifier-free guidance (Sanchez et al. 2023): ``[conditional, unconditional]`` ->
    ``log p_uncond + scale * (log p_cond - log p_uncond)`` (``transformers``' CFG processor).

    ``params``: ``scale`` (1 = the conditional model alone). Usually the same model twice, the
    unconditional one given an empty or a negative prompt.
    """
    cond, uncond = (jax.nn.log_softmax(x, axis=-1) for x in logits_list)
    return uncond + _param(params, "scale") * (cond - uncond)


# name: (function, number of models, default params, the models' roles)
MIXTURES = {
    "contrastive": (contrastive, 2, {"alpha": 0.1}, ("expert", "amateur")),
    "proxy_tuning": (proxy_tuning, 3, {"alpha": 1.0}, ("base", "expert", "anti_expert")),
    "dexperts": (proxy_tuning, 3, {"alpha": 1.0}, ("base", "expert", "anti_expert")),
    "cfg": (cfg, 2, {"scale": 1.5}, ("conditional", "unconditional")),
}


def resolve(combine, count: int, params=None):
    """``(function, params)`` for a mixture name (checked against ``count`` models; its params checked,
    defaults filled in, each a float32 array) or a callable (its params as given)."""
    if callable(combine):
        return combine, dict(params or {})
    params = checks.mixture_params(combine, count, dict(params or {}), MIXTURES)
    return MIXTURES[combine][0], params


def rows(params: dict, shape) -> dict:
    """Named mixtures' ``params`` (numbers, or arrays per prompt [G] / per rollout [G, N]) as one
    value per row [G*N], or a ``ValueError`` for an array that does not fit ``shape`` (G, N)."""
    return {name: fit_rows(x, shape, f"mixture parameter {name}").reshape(-1) for name, x in params.items()}
