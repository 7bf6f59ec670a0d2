"""The decoder-only transformer (Llama / Mistral / Qwen2 / Qwen3 / Gemma 2 / Gemma 3) as pure functions.

The families differ by config switches (``models.config.Config``): q/k norms, Gemma's (1 + w)
norms around attention and the MLP, GeGLU, scaled embeddings, soft-capped logits, per-layer
sliding windows and a second RoPE base for the sliding layers.

Parameters are a dict pytree; ``params["layers"]`` is a list with one dict of weights per layer,
and the forward pass is a Python loop over it (unrolled in the compiled program). With
``config.scan_layers`` it is one dict of weights stacked on a leading ``layers`` axis, and the
layers run under a ``lax.scan``, the KV cache's layers stacked alike: XLA compiles one layer
instead of all of them, but on CPU it copies a layer's slice of a stacked weight or KV cache
before its matmul (docs/perf.md). :func:`with_layout` converts between the two;
:func:`param_axes` gives every weight its logical axis names.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models.config import Config

F32 = jnp.float32


def param_axes(config: Config) -> dict:
    """Logical axis names of every weight, as a pytree shaped like the params."""
    layer = {
        "attn_norm": ("embed",),
        "wq": ("embed", "heads", "head_dim"),
        "wk": ("embed", "kv_heads", "head_dim"),
        "wv": ("embed", "kv_heads", "head_dim"),
        "wo": ("heads", "head_dim", "embed"),
        "mlp_norm": ("embed",),
        "w_gate": ("embed", "mlp"),
        "w_up": ("embed", "mlp"),
        "w_down": ("mlp", "embed"),
    }
    if config.qk_norm:
        layer |= {"q_norm": ("head_dim",), "k_norm": ("head_dim",)}
    if config.sandwich_norms:
        layer |= {"attn_out_norm": ("embed",), "mlp_out_norm": ("embed",)}
    if config.qkv_bias:
        layer |= {"bq": ("heads", "head_dim"), "bk": ("kv_heads", "head_dim"), "bv": ("kv_heads", "head_dim")}
    layers = {k: ("layers", *a) for k, a in layer.items()} if config.scan_layers else [layer] * config.layers
    axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("embed",)}
    if not config.tie_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    if config.score_head:
        axes["score"] = ("embed",)
    return axes


def param_shapes(config: Config) -> dict:
    """Shape of every weight, as a pytree shaped like the params."""
    size = {"embed": config.hidden, "heads": config.heads,
            "kv_heads": config.kv_heads, "head_dim": config.head_dim,
            "mlp": config.intermediate, "vocab": config.vocab_size, "layers": config.layers}
    return jax.tree.map(lambda names: tuple(size[a] for a in names), param_axes(config),
                        is_leaf=lambda x: isinstance(x, tuple))


def init_params(config: Config, key: jax.Array, std: float = 0.02) -> dict:
    """Random parameters (normal(0, std) matrices, unit norm scales, zero biases; Gemma's (1 + w)
    norm weights zero).

    Each weight is drawn for all layers at once (one key per weight name, the layers along a
    leading axis) and then split, so a config's random weights do not depend on the layout.
    """
    shapes = param_shapes(dataclasses.replace(config, scan_layers=False))
    stacked = {k: (config.layers, *s) for k, s in shapes["layers"][0].items()}
    names = [n for top in sorted(shapes) for n in (sorted(stacked) if top == "layers" else [top])]
    dtype = jnp.dtype(config.dtype)
    out = {}
    for i, name in enumerate(names):
        shape = stacked.get(name) or shapes[name]
        if "norm" in name:
            out[name] = (jnp.zeros if config.norm_plus_one else jnp.ones)(shape, dtype)
        elif name.startswith("b"):
            out[name] = jnp.zeros(shape, dtype)
        else:
            out[name] = (std * jax.random.normal(jax.random.fold_in(key, i), shape, F32)).astype(dtype)
    stacked = {k: out.pop(k) for k in stacked}
    if config.scan_layers:
        return {**out, "layers": stacked}
    return {**out, "layers": [{k: w[i] for k, w in stacked.items()} for i in range(config.layers)]}


def with_layout(config: Config, params: dict, scan_layers: bool) -> tuple[Config, dict]:
    """``(config, params)`` in the other layer layout if ``scan_layers`` differs from the config's: the
    layers' weights stacked on a leading axis (``scan_layers=True``) or one dict per layer."""
    if config.scan_layers == scan_layers:
        return config, params
    layers = params["layers"]
    if scan_layers:
        layers = {k: jnp.stack([lp[k] for lp in layers]) for k in layers[0]}
    else:
        layers = [{k: w[i] for k, w in layers.items()} for i in range(config.layers)]
    return dataclasses.replace(config, scan_layers=scan_layers), {**params, "layers": layers}


def rms_norm(x, weight, eps, plus_one=False):
    """RMSNorm over the last axis: Llama's ``weight * normed.astype(dtype)``, or with ``plus_one``
    Gemma's ``(normed * (1 + weight)).astype(dtype)`` in fp32."""
    x32 = x.astype(F32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:
        return (y * (1.0 + weight.astype(F32))).astype(x.dtype)
    return weight * y.astype(x.dtype)


def softcap(x, cap):
    """``cap * tanh(x / cap)`` (Gemma's soft-capping of logits); x itself for cap None."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def rope_angles(positions, inv_freq, dtype, bound=None):
    """Rotary embedding's (cos, sin) [B, T, 1, Dh] for positions int [B, T].

    With a static ``bound`` (every position below it) they are gathered from a table of
    positions ``0..bound-1``: inside a decode loop XLA computes that table once, before the
    loop. Computed from the positions, XLA fuses the cos and sin into every layer's q and k and
    evaluates them per head (1.5 ms of a 35 ms 25m batch-64 step on CPU, docs/perf.md).
    """
    def cos_sin(p):
        freqs = p.astype(F32)[..., None] * inv_freq                  # [..., Dh/2]
        angles = jnp.concatenate([freqs, freqs], -1)
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
    cos, sin = cos_sin(positions) if bound is None else (x[positions] for x in cos_sin(jnp.arange(bound)))
    return cos[:, :, None], sin[:, :, None]


def rope(x, cos, sin):
    """Rotary embedding, "rotate half" convention. x [B, T, H, Dh]; cos, sin from :func:`rope_angles`."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], -1) * sin


def einsum_f32(spec, a, b):
    """``jnp.einsum`` accumulating in fp32. XLA CPU has no bf16 x bf16 -> fp32 batched dot (it fails
    when run), so on CPU narrower operands are widened first: the same products, exact in fp32."""
    if jax.default_backend() == "cpu":
        a, b = a.astype(F32), b.astype(F32)
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


def attention(q, k, v, mask, scale=None, cap=None):
    """Masked grouped-query attention returning the output and its log-sum-exp.

    The logits are ``q.k * scale`` (default ``Dh ** -0.5``), soft-capped by ``cap`` if given.

    q [B, T, H, Dh]; k, v [B, K, S, Dh] (heads before positions: the KV cache's layout, which XLA
    reads without a transpose); mask bool [B, T, S]. Returns out [B, T, H, Dh] (q's dtype) and
    lse fp32 [B, T, H]. A query with no visible key gets out 0 and lse -inf, so
    partial attentions over disjoint key blocks merge exactly with :func:`merge_attention`.
    """
    b, t, h, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, t, kv, h // kv, d)
    s = softcap(einsum_f32("btkgd,bksd->bkgts", qg, k) * (d ** -0.5 if scale is None else scale), cap)
    s = jnp.where(mask[:, None, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = einsum_f32("bkgts,bksd->btkgd", p.astype(v.dtype), v)
    l_t = jnp.moveaxis(l[..., 0], -1, 1)[..., None]               # [B, T, K, G, 1]
    o = o / jnp.maximum(l_t, jnp.finfo(F32).tiny)
    lse = jnp.moveaxis((m + jnp.log(l))[..., 0], -1, 1)           # [B, T, K, G]
    return o.reshape(b, t, h, d).astype(q.dtype), lse.reshape(b, t, h)


def merge_attention(parts):
    """Merge partial attentions [(out, lse), ...] over disjoint key sets (fp32 log-sum-exp)."""
    lse = jax.nn.logsumexp(jnp.stack([l for _, l in parts]), axis=0)
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    out = sum(o.astype(F32) * jnp.exp(l - lse_safe)[..., None] for o, l in parts)
    return out.astype(parts[0][0].dtype), lse


def causal_mask(t: int, window):
    """Causal mask bool [1, T, T], limited to the last ``window`` positions (a static int, a traced
    int32 [], or None)."""
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    mask = k <= q
    if window is not None:
        mask &= q - k < window
    return mask[None]


def layer(config: Config, lp: dict, x, cos, sin, attend):
    """One transformer layer: x [B, T, D] -> (x [B, T, D], what ``attend`` returned beside its output).

    ``lp``: the layer's weights; ``cos, sin``: its rotary angles (:func:`rope_angles`); ``attend(q, k,
    v)`` with q [B, T, H, Dh], k, v [B, T, K, Dh] -> (out [B, T, H, Dh], a cache or None)."""
    norm = lambda x, w: rms_norm(x, w, config.norm_eps, config.norm_plus_one)
    act = jax.nn.silu if config.activation == "silu" else partial(jax.nn.gelu, approximate=True)
    h = norm(x, lp["attn_norm"])
    q = jnp.einsum("btd,dhk->bthk", h, lp["wq"])
    k = jnp.einsum("btd,dhk->bthk", h, lp["wk"])
    v = jnp.einsum("btd,dhk->bthk", h, lp["wv"])
    if config.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if config.qk_norm:
        q, k = norm(q, lp["q_norm"]), norm(k, lp["k_norm"])
    o, cache = attend(rope(q, cos, sin), rope(k, cos, sin), v)
    o = jnp.einsum("bthk,hkd->btd", o, lp["wo"])
    x = x + (norm(o, lp["attn_out_norm"]) if config.sandwich_norms else o)
    h = norm(x, lp["mlp_norm"])
    h = (act(h @ lp["w_gate"]) * (h @ lp["w_up"])) @ lp["w_down"]
    return x + (norm(h, lp["mlp_out_norm"]) if config.sandwich_norms else h), cache


def hidden_states(config: Config, params: dict, tokens, positions=None, cache=None, segments=None):
    """The trunk: ``tokens`` int [B, T] -> (final-normed hidden states [B, T, D], cache).

    Without a cache this is a plain causal forward (positions default to 0..T-1); ``segments``
    int [B, T] then keeps attention within equal ids (several examples packed into one training
    row, each with its own positions). With a cache
    (any object with ``positions(T)``, ``attend(layer, q, k, v, window)`` and ``advance(T)``,
    e.g. :class:`engine.KVCache`; ``attend`` also takes the keywords ``scale`` and ``cap`` of
    :func:`attention`), the new tokens' keys/values are written into it and attend
    to everything it holds. A cache may also give a static ``position_bound`` above every
    position it holds: the rotary angles then come from a table (:func:`rope_angles`).
    With ``config.scan_layers`` the cache also gives ``layer_fields()`` (its per-layer buffers,
    stacked on a leading layers axis) and ``with_layer_fields(fields)``; the scan attends one
    layer's slice of them as a one-layer cache (``attend(0, ...)``).
    """
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"tokens must be an int array [batch, time], got shape {jnp.shape(tokens)}")
    t, bound = tokens.shape[1], None
    if positions is None:
        positions = cache.positions(t) if cache is not None else jnp.broadcast_to(jnp.arange(t), tokens.shape)
        bound = getattr(cache, "position_bound", None) if cache is not None else t
    dtype = jnp.dtype(config.dtype)
    angles = {local: rope_angles(positions, jnp.asarray(config.inv_freq(local)), dtype, bound)
              for local in {config.local_rope(i) for i in range(config.layers)}}
    windows = {config.window(i) for i in range(config.layers)}
    masks = {w: causal_mask(t, w) for w in windows} if cache is None and not config.scan_layers else None
    if segments is not None and cache is not None:
        raise ValueError("segments (packed rows) are for a cache-free forward")
    same = True if segments is None else segments[:, :, None] == segments[:, None, :]
    opts = dict(scale=config.attn_scale, cap=config.attn_softcap)
    x = params["embed"][tokens]
    if config.embed_scale:
        x = x * jnp.asarray(config.hidden ** 0.5, dtype)

    def attend(i, window, layer_cache):
        """Layer ``i``'s attention (``window`` static or traced) against ``layer_cache`` (or causal)."""
        if layer_cache is None:
            mask = (causal_mask(t, window) if masks is None else masks[window]) & same
            return lambda q, k, v: (attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask, **opts)[0], None)
        return lambda q, k, v: layer_cache.attend(i, q, k, v, window, **opts)

    if config.scan_layers:
        x, cache = _scan_layers(config, params["layers"], x, angles, cache, attend)
    else:
        for i, lp in enumerate(params["layers"]):
            x, new = layer(config, lp, x, *angles[config.local_rope(i)], attend(i, config.window(i), cache))
            cache = cache if new is None else new
    x = rms_norm(x, params["final_norm"], config.norm_eps, config.norm_plus_one)
    return x, (cache.advance(t) if cache is not None else None)


def _scan_layers(config: Config, layers: dict, x, angles: dict, cache, attend):
    """The layers as one ``lax.scan`` over stacked weights ``layers`` (and the cache's stacked
    per-layer buffers): (x [B, T, D], cache). Layers that differ (a sliding window, its own RoPE)
    get their window and RoPE from per-layer arrays scanned alongside."""
    n = config.layers
    windows = [config.window(i) for i in range(n)]
    fixed = len(set(windows)) == 1              # static window; else traced, "none" as a bound never reached
    window = jnp.array([np.iinfo(np.int32).max if w is None else w for w in windows], jnp.int32)
    local = jnp.array([config.local_rope(i) for i in range(n)])
    if len(angles) == 1:
        pick = lambda is_local: next(iter(angles.values()))
    else:
        pick = lambda is_local: tuple(jnp.where(is_local, a, b) for a, b in zip(angles[True], angles[False]))

    def body(x, xs):
        lp, w, is_local, fields = xs
        one = None if cache is None else cache.with_layer_fields({f: [v] for f, v in fields.items()})
        x, one = layer(config, lp, x, *pick(is_local), attend(0, windows[0] if fixed else w, one))
        return x, (None if one is None else {f: v[0] for f, v in one.layer_fields().items()})

    fields = None if cache is None else cache.layer_fields()
    x, fields = jax.lax.scan(body, x, (layers, window, local, fields))
    return x, (None if cache is None else cache.with_layer_fields(fields))


def forward(config: Config, params: dict, tokens, positions=None, cache=None, *, last_only=False, segments=None):
    """One model step: ``tokens`` int [B, T] -> (logits fp32 [B, T, V], cache).

    ``cache``, ``positions`` and ``segments`` as in :func:`hidden_states`. ``last_only`` returns
    logits [B, V] of the last position only.
    """
    x, cache = hidden_states(config, params, tokens, positions, cache, segments)
    if last_only:
        x = x[:, -1]
    head = params["embed"].T if config.tie_embeddings else params["lm_head"]
    return softcap(jnp.matmul(x, head, preferred_element_type=F32), config.final_softcap), cache


def score(config: Config, params: dict, tokens, positions=None, cache=None, *, last_only=False):
    """The scalar head as a model step: ``tokens`` int [B, T] -> (fp32 scores [B, T], cache).

    ``cache``, ``positions`` and ``last_only`` (scores [B]) as in :func:`forward`: what a reward
    model riding along a decode (an ``engine`` track) runs on each new token.
    """
    x, cache = hidden_states(config, params, tokens, positions, cache)
    if last_only:
        x = x[:, -1]
    return jnp.einsum("...d,d->...", x, params["score"], preferred_element_type=F32), cache


def rewards(config: Config, params: dict, tokens, positions=None):
    """The scalar head at every position: ``tokens`` int [B, T] -> fp32 [B, T].

    Needs a config with ``score_head=True`` (a reward model, e.g. a Hugging Face
    ``*ForSequenceClassification`` checkpoint with one label). A sequence's reward is the value
    at its last token; earlier positions give the reward of each prefix (a value estimate).
    """
    if not config.score_head:
        raise ValueError("this model has no scalar head (config.score_head is False): it is not a reward model")
    return score(config, params, tokens, positions)[0]
