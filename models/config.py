"""Model configurations: one frozen, keyword-only dataclass per family, and named presets.

Configs are hashable so they can be static arguments of ``jax.jit``. Variants are made with
``dataclasses.replace(preset("tiny"), layers=4)``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


def float_dtype(dtype) -> str:
    """The name of a floating-point dtype (``"bfloat16"`` for ``jnp.bfloat16``), or a ``ValueError``."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name is None or not jnp.issubdtype(name, jnp.floating):
        raise ValueError(f"dtype must be a floating-point type (float32, bfloat16, float16), got {dtype!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs jax_enable_x64 (without it jax computes in float32)")
    return name


@dataclass(frozen=True, kw_only=True)
class Config:
    """Decoder-only transformer shape (Llama architecture and its relatives)."""
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int = 0                      # 0 -> hidden // heads
    rope_theta: float = 10000.0
    # Llama-3.1 scaling: (factor, low_freq_factor, high_freq_factor, original_max_position)
    rope_scaling: tuple[float, float, float, int] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    sliding_window: int | None = None      # attend to the last `sliding_window` positions only
    max_len: int = 2048                    # longest prompt + generation the model accepts
    bos_id: int | None = 1
    eos_ids: tuple[int, ...] = (2,)
    pad_id: int = 0
    dtype: str = "float32"                 # parameter / activation dtype
    score_head: bool = False               # a scalar (reward) head beside the LM head: models.rewards
    # family switches (Qwen3, Gemma 2 / 3); the defaults are Llama's
    sliding_layers: tuple[bool, ...] | None = None  # which layers use sliding_window (None: every layer)
    qk_norm: bool = False                  # RMSNorm on each head of q and k, before RoPE (Qwen3, Gemma 3)
    norm_plus_one: bool = False            # RMSNorm scales by (1 + weight), in fp32 (Gemma)
    sandwich_norms: bool = False           # norms after attention and after the MLP too (Gemma)
    activation: str = "silu"               # the MLP gate's: "silu" or "gelu_tanh" (GeGLU, Gemma)
    embed_scale: bool = False              # embeddings times sqrt(hidden), in the params' dtype (Gemma)
    attn_scale: float | None = None        # attention logits' scale (None: head_dim ** -0.5)
    attn_softcap: float | None = None      # attention logits -> softcap * tanh(logits / softcap)
    final_softcap: float | None = None     # output logits, likewise
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (None: rope_theta; Gemma 3)
    rope_linear: float = 1.0               # linear RoPE scaling of the other layers: positions / factor
    # layout, not shape: the layers' weights and KV caches stacked on a leading axis, run by a lax.scan
    # (compiles one layer instead of all of them; models.load picks it per backend, docs/perf.md)
    scan_layers: bool = False

    family = "llama"

    def __post_init__(self):
        if not isinstance(self.eos_ids, (tuple, list)):
            raise ValueError(f"eos_ids must be a list of token ids, got {self.eos_ids!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, (tuple, list)):
            raise ValueError(f"rope_scaling must be None or (factor, low, high, original_max_position), got "
                             f"{self.rope_scaling!r}")
        for k in ("tie_embeddings", "qkv_bias", "score_head", "qk_norm", "norm_plus_one", "sandwich_norms",
                  "embed_scale", "scan_layers"):
            if not isinstance(getattr(self, k), (bool, np.bool_)):
                raise ValueError(f"{k} must be True or False, got {getattr(self, k)!r}")
        count = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
        real = lambda x: isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)
        bad = [f"{k}={getattr(self, k)!r}" for k in ("vocab_size", "hidden", "layers", "heads", "kv_heads",
                                                     "intermediate", "max_len") if not count(getattr(self, k))
               or getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)!r}" for k in ("rope_theta", "norm_eps")
                if not real(getattr(self, k)) or getattr(self, k) <= 0]
        bad += [f"{k}={getattr(self, k)!r}" for k in ("attn_scale", "attn_softcap", "final_softcap",
                                                     "rope_local_theta", "rope_linear")
                if getattr(self, k) is not None and (not real(getattr(self, k)) or getattr(self, k) <= 0)]
        if self.activation not in ("silu", "gelu_tanh"):
            bad.append(f"activation={self.activation!r} (silu or gelu_tanh)")
        if self.sliding_layers is not None and (
                not isinstance(self.sliding_layers, (tuple, list)) or len(self.sliding_layers) != self.layers
                or not all(isinstance(x, (bool, np.bool_)) for x in self.sliding_layers)):
            bad.append(f"sliding_layers={self.sliding_layers!r} (one True/False per layer)")
        if not count(self.head_dim) or self.head_dim < 0:
            bad.append(f"head_dim={self.head_dim!r}")
        if self.sliding_window is not None and (not count(self.sliding_window) or self.sliding_window < 1):
            bad.append(f"sliding_window={self.sliding_window!r}")
        if bad:
            raise ValueError(f"config fields out of range: {', '.join(bad)} (sizes must be integers >= 1, "
                             "rope_theta, norm_eps, scales and soft caps finite numbers > 0)")
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        float_dtype(self.dtype)
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even: RoPE rotates pairs of dimensions")
        if self.rope_scaling is not None:
            scaling = tuple(self.rope_scaling)
            if (len(scaling) != 4 or not all(map(real, scaling)) or not 0 < scaling[1] < scaling[2]
                    or scaling[0] <= 0 or scaling[3] <= 0):
                raise ValueError("rope_scaling must be (factor > 0, low_freq_factor, high_freq_factor, "
                                 f"original_max_position > 0) with 0 < low < high, got {self.rope_scaling!r}")
        ids = {"eos_ids": list(self.eos_ids), "bos_id": [] if self.bos_id is None else [self.bos_id],
               "pad_id": [self.pad_id]}
        for name, values in ids.items():
            if not all(count(t) and 0 <= t < self.vocab_size for t in values):
                raise ValueError(f"{name} must be token ids in [0, {self.vocab_size}), got "
                                 f"{getattr(self, name)!r}")
        python = lambda x: x.item() if isinstance(x, np.generic) else x    # numpy scalars: hashable, JSON
        for f in dataclasses.fields(self):
            x = getattr(self, f.name)
            object.__setattr__(self, f.name, tuple(map(python, x)) if isinstance(x, (tuple, list)) else python(x))

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, f, l = self.hidden, self.intermediate, self.layers
        qkv = d * self.head_dim * (self.heads + 2 * self.kv_heads)
        attn = qkv + self.heads * self.head_dim * d
        if self.qkv_bias:
            attn += self.head_dim * (self.heads + 2 * self.kv_heads)
        norms = (4 if self.sandwich_norms else 2) * d + (2 * self.head_dim if self.qk_norm else 0)
        per_layer = attn + 3 * d * f + norms
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + l * per_layer + d + head + (d if self.score_head else 0)

    def window(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding window (None: it attends to every earlier position)."""
        slides = self.sliding_layers is None or self.sliding_layers[layer]
        return self.sliding_window if slides else None

    def local_rope(self, layer: int) -> bool:
        """Whether layer ``layer`` rotates by the sliding layers' RoPE (``rope_local_theta``)."""
        return self.rope_local_theta is not None and self.window(layer) is not None

    def inv_freq(self, local: bool = False) -> np.ndarray:
        """RoPE inverse frequencies [head_dim // 2], with Llama-3.1 or linear scaling when configured;
        ``local``: the sliding layers' (``rope_local_theta``, unscaled)."""
        theta = self.rope_local_theta if local else self.rope_theta
        inv = 1.0 / theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        if not local:
            inv = inv / self.rope_linear
        if self.rope_scaling is not None and not local:
            factor, low, high, orig = self.rope_scaling
            wavelen = 2 * math.pi / inv
            low_wavelen, high_wavelen = orig / low, orig / high
            smooth = (orig / wavelen - low) / (high - low)
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
            inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
        return inv.astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(Config):
    """Llama 2 / 3 / 3.1 / 3.2."""
    family = "llama"


@dataclass(frozen=True, kw_only=True)
class MistralConfig(Config):
    """Mistral: Llama with an optional sliding attention window."""
    family = "mistral"


@dataclass(frozen=True, kw_only=True)
class Qwen2Config(Config):
    """Qwen2: Llama with biases on the q/k/v projections."""
    qkv_bias: bool = True
    family = "qwen2"


@dataclass(frozen=True, kw_only=True)
class Qwen3Config(Config):
    """Qwen3: Llama with RMSNorm on each q and k head (no biases)."""
    qk_norm: bool = True
    family = "qwen3"


@dataclass(frozen=True, kw_only=True)
class Gemma2Config(Config):
    """Gemma 2: (1 + w) norms around attention and MLP, GeGLU, scaled embeddings, soft-capped logits,
    sliding and global layers alternating."""
    norm_plus_one: bool = True
    sandwich_norms: bool = True
    activation: str = "gelu_tanh"
    embed_scale: bool = True
    tie_embeddings: bool = True
    family = "gemma2"


@dataclass(frozen=True, kw_only=True)
class Gemma3TextConfig(Gemma2Config):
    """Gemma 3 (text): Gemma 2 with q/k norms and another RoPE base on the sliding layers."""
    qk_norm: bool = True
    family = "gemma3_text"


FAMILIES = {c.family: c for c in (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, Gemma2Config,
                                  Gemma3TextConfig)}

PRESETS: dict[str, Config] = {
    "tiny": LlamaConfig(vocab_size=256, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                        max_len=512),
    "bench-1b": LlamaConfig(vocab_size=32000, hidden=2048, layers=16, heads=32, kv_heads=8,
                            intermediate=8192, max_len=4096, dtype="bfloat16"),
    "llama-3-8b": LlamaConfig(vocab_size=128256, hidden=4096, layers=32, heads=32, kv_heads=8,
                              intermediate=14336, rope_theta=500000.0, max_len=8192,
                              bos_id=128000, eos_ids=(128001, 128009), dtype="bfloat16"),
    "llama-3.2-1b": LlamaConfig(vocab_size=128256, hidden=2048, layers=16, heads=32, kv_heads=8,
                                intermediate=8192, head_dim=64, rope_theta=500000.0,
                                rope_scaling=(32.0, 1.0, 4.0, 8192), tie_embeddings=True,
                                max_len=131072, bos_id=128000, eos_ids=(128001, 128008, 128009),
                                dtype="bfloat16"),
    "mistral-7b": MistralConfig(vocab_size=32000, hidden=4096, layers=32, heads=32, kv_heads=8,
                                intermediate=14336, max_len=32768, rope_theta=1000000.0,
                                dtype="bfloat16"),
    "qwen2-0.5b": Qwen2Config(vocab_size=151936, hidden=896, layers=24, heads=14, kv_heads=2,
                              intermediate=4864, rope_theta=1000000.0, norm_eps=1e-6,
                              tie_embeddings=True, max_len=32768, bos_id=None,
                              eos_ids=(151643,), pad_id=151643, dtype="bfloat16"),
}


def preset(name: str, **overrides) -> Config:
    """A named preset, optionally with fields replaced: ``preset("tiny", layers=4)``.

    Changing ``hidden`` or ``heads`` re-derives ``head_dim`` (``hidden // heads``) unless it is
    given too. (With ``dataclasses.replace`` directly, pass ``head_dim=0`` to re-derive it.)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ValueError(f"unknown config fields {unknown}")
    if ("hidden" in overrides or "heads" in overrides) and "head_dim" not in overrides:
        overrides["head_dim"] = 0
    return dataclasses.replace(PRESETS[name], **overrides)


# transformers' defaults for keys a config.json may leave out (checked against transformers in the tests)
HF_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {"max_position_embeddings": 131072, "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 4096,
                "num_key_value_heads": 8},
    "qwen2": {"max_position_embeddings": 32768, "sliding_window": 4096, "max_window_layers": 28},
    "qwen3": {"max_position_embeddings": 32768, "sliding_window": 4096, "max_window_layers": 28, "head_dim": 128},
    "gemma2": {"max_position_embeddings": 8192, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
               "sliding_window": 4096, "head_dim": 256, "tie_word_embeddings": True, "query_pre_attn_scalar": 256,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "hidden_activation": "gelu_pytorch_tanh"},
    "gemma3_text": {"max_position_embeddings": 131072, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                    "sliding_window": 4096, "head_dim": 256, "tie_word_embeddings": True,
                    "query_pre_attn_scalar": 256, "final_logit_softcapping": None, "attn_logit_softcapping": None,
                    "hidden_activation": "gelu_pytorch_tanh"},
}
GEMMA = ("gemma2", "gemma3_text")
NUMBER = (int, float)
HF_TYPES = {"rope_scaling": dict, "rope_parameters": dict, "architectures": list, "id2label": dict,
            "max_window_layers": int, "num_labels": int, "layer_types": list, "use_sliding_window": bool,
            "tie_word_embeddings": bool, "sliding_window": int, "max_position_embeddings": int,
            "num_key_value_heads": int, "head_dim": int, "rms_norm_eps": NUMBER, "rope_theta": NUMBER,
            "query_pre_attn_scalar": NUMBER, "final_logit_softcapping": NUMBER, "attn_logit_softcapping": NUMBER,
            "rope_local_base_freq": NUMBER, "sliding_window_pattern": int, "attention_bias": bool,
            "use_bidirectional_attention": bool, "hidden_act": str, "hidden_activation": str}
LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope(rope: dict, theta: float, kinds: tuple[str, ...], legacy: dict | None = None
          ) -> tuple[float, tuple | None, float]:
    """(theta, Llama-3.1 scaling or None, linear factor) of RoPE parameters ``rope``, refusing a type
    not in ``kinds``; the type of ``legacy`` (transformers < 5's rope_scaling, merged into ``rope``) wins."""
    legacy = legacy or {}
    kind = (legacy.get("rope_type") or legacy.get("type") or rope.get("rope_type") or rope.get("type")
            or "default")
    if kind not in kinds:
        raise ValueError(f"unsupported rope type {kind!r} (rollax implements {' and '.join(kinds)} here)")
    theta = rope.get("rope_theta", theta)
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor {rope['partial_rotary_factor']!r} (rollax rotates "
                         "every dimension of a head)")
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if any(k not in rope for k in keys):
            raise ValueError(f"llama3 rope scaling needs {', '.join(keys)}; config.json gives {sorted(rope)}")
        return theta, tuple(rope[k] for k in keys), 1.0
    if kind == "linear":
        if not isinstance(rope.get("factor"), NUMBER) or isinstance(rope.get("factor"), bool):
            raise ValueError(f"linear rope scaling needs a number factor; config.json gives {rope.get('factor')!r}")
        return theta, None, rope["factor"]
    return theta, None, 1.0


def _layer_types(hf: dict, kind: str, window: int | None) -> list[str]:
    """Each layer's attention type, as transformers decides it for the family."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        if kind in ("qwen2", "qwen3"):     # the layers from max_window_layers on slide
            types = ["sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28)
                     else "full_attention" for i in range(n)]
        else:                              # Gemma: every pattern-th layer is global
            pattern = 2 if kind == "gemma2" else hf.get("sliding_window_pattern", 6)
            if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
                raise ValueError(f"config.json: sliding_window_pattern must be an integer >= 1, got {pattern!r}")
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(LAYER_TYPES):
        raise ValueError(f"config.json: layer_types must give each of the {n} layers one of {', '.join(LAYER_TYPES)}; "
                         f"got {types!r}")
    return types


def from_hf(hf: dict) -> Config:
    """Translate a Hugging Face ``config.json`` dict into a rollax config (keys it leaves out take
    ``transformers``' defaults for the family)."""
    if not isinstance(hf, dict):
        raise ValueError(f"config.json must hold a JSON object, got {type(hf).__name__}")
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"unsupported model_type {kind!r}; rollax reads {', '.join(FAMILIES)}")
    hf = {**HF_DEFAULTS[kind], **hf}
    for key, types in HF_TYPES.items():
        value = hf.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) and types is not bool):
            raise ValueError(f"config.json: {key} has the wrong type ({type(value).__name__}): {value!r}")
    for flag in ("attention_bias", "mlp_bias"):   # Qwen3 and Gemma put attention_bias on o_proj too
        if hf.get(flag) and kind in ("llama", "qwen3", *GEMMA):
            raise ValueError(f"config.json sets {flag}=true, which rollax does not support")
    if hf.get("use_bidirectional_attention"):
        raise ValueError("config.json sets use_bidirectional_attention=true, which rollax does not support "
                         "(it decodes causally)")
    act_key, act = ("hidden_activation", "gelu_pytorch_tanh") if kind in GEMMA else ("hidden_act", "silu")
    if hf.get(act_key, act) != act:
        raise ValueError(f"unsupported {act_key} {hf[act_key]!r} (rollax implements {act} for {kind})")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if not isinstance(hf.get(k), int) or hf[k] < 1]
    if missing:
        raise ValueError(f"config.json needs positive integers {', '.join(missing)}; got "
                         f"{', '.join(f'{k}={hf.get(k)!r}' for k in missing)}")
    local_theta = None
    if kind == "gemma3_text":   # one RoPE per layer type; rope_scaling and rope_theta are the global layers'
        per_type = hf.get("rope_parameters") or {}
        if not set(per_type) <= set(LAYER_TYPES) or not all(isinstance(v, dict | None) for v in per_type.values()):
            raise ValueError(f"config.json: gemma3_text rope_parameters must map {' and '.join(LAYER_TYPES)} to "
                             f"RoPE parameters; got {per_type!r}")
        legacy = hf.get("rope_scaling") or {}
        full = {**(per_type.get("full_attention") or {}), **legacy}
        theta, scaling, linear = _rope(full, hf.get("rope_theta", 1e6), ("default", "linear"), legacy)
        local_theta, _, _ = _rope(per_type.get("sliding_attention") or {}, hf.get("rope_local_base_freq", 1e4),
                                  ("default",))
        if hf.get("attn_logit_softcapping") is not None:
            raise ValueError("config.json sets attn_logit_softcapping for gemma3_text, which transformers' Gemma 3 "
                             "does not apply; rollax refuses it rather than guess")
    else:
        legacy = hf.get("rope_scaling") or {}                   # transformers < 5; wins as there
        rope = {**(hf.get("rope_parameters") or {}), **legacy}   # transformers >= 5
        theta, scaling, linear = _rope(rope, hf.get("rope_theta", 10000.0), ("default", "llama3"), legacy)
    eos = hf.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
    window = None if kind == "llama" else hf.get("sliding_window")  # transformers' Llama has no window
    slides = None                                                    # Mistral: every layer
    if kind in ("qwen2", "qwen3"):
        window = window if hf.get("use_sliding_window", False) else None
    if kind not in ("llama", "mistral"):                             # per layer, from layer_types
        slides = [t == "sliding_attention" for t in _layer_types(hf, kind, window)]
        if window is None and kind in GEMMA and any(slides):          # transformers fails on it
            raise ValueError("config.json gives sliding_attention layers but no sliding_window")
        if window is None or not any(slides):                        # (Qwen: no window, no sliding layer)
            window, slides = None, None
        elif all(slides):
            slides = None
    heads, pad = hf["num_attention_heads"], hf.get("pad_token_id")  # pad: a filler; an unusable one is replaced
    reward = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or ())
    labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
    if reward and labels != 1:
        raise ValueError(f"a sequence-classification checkpoint with {labels} labels; rollax reads reward "
                         "models with one (num_labels=1)")
    gemma = {}
    if kind in GEMMA:
        scalar = hf.get("query_pre_attn_scalar")
        gemma = dict(attn_scale=None if scalar is None else scalar ** -0.5, attn_softcap=hf.get("attn_logit_softcapping"),
                     final_softcap=hf.get("final_logit_softcapping"),
                     rope_local_theta=local_theta if window is not None else None, rope_linear=linear)
    elif linear != 1.0:
        raise ValueError("linear rope scaling is implemented for gemma3_text only")
    return FAMILIES[kind](
        vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
        heads=heads, kv_heads=hf.get("num_key_value_heads") or heads,
        intermediate=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=theta, rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
        # a reward model has a scalar head and no LM head: its embedding stands in for one
        tie_embeddings=reward or bool(hf.get("tie_word_embeddings", False)), score_head=reward,
        sliding_window=window, sliding_layers=None if slides is None else tuple(slides),
        max_len=hf["max_position_embeddings"] or HF_DEFAULTS[kind]["max_position_embeddings"],
        bos_id=hf.get("bos_token_id"), eos_ids=eos,
        pad_id=pad if isinstance(pad, int) and 0 <= pad < hf["vocab_size"] else (eos[0] if eos else 0),
        **gemma,
    )
