"""Reading GGUF files (llama.cpp's format) with the ``gguf`` package, as ``transformers`` reads them.

A GGUF file holds the config and the tokenizer as metadata under llama.cpp's key names, and the
weights under llama.cpp's tensor names, some quantized. :func:`read` turns one into what a Hugging
Face directory holds (a ``config.json`` dict, float32 tensors under HF names, a tokenizer), so
``models.load`` builds the model by the same code as for a directory. The reference is
``transformers``' ``from_pretrained(..., gguf_file=...)`` (``modeling_gguf_pytorch_utils.py`` for the
config keys and the Llama q/k permutation, ``integrations/gguf`` for the tokenizer).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.tokenizer import HFTokenizer, _bytes_to_unicode

# llama.cpp architecture -> HF model_type; GGUF metadata key (after "<arch>.") -> config.json key
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text"}
CONFIG_KEYS = {"context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
               "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
               "rope.freq_base": "rope_theta", "attention.head_count": "num_attention_heads",
               "attention.head_count_kv": "num_key_value_heads",
               "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size"}
# qwen2: hidden // heads. qwen3: transformers reads no head_dim (its default, 128, that of every Qwen3), llama.cpp
# writes it as the key length
HEAD_DIM_KEY = {"llama": "rope.dimension_count", "qwen3": "attention.key_length", "gemma2": "attention.key_length",
                "gemma3": "attention.key_length"}
CONTROL, USER_DEFINED = 3, 4               # llama.cpp's token types
# the post-processor transformers' rebuilt tokenizers start with: no special tokens (unless add_bos / add_eos say)
PLAIN = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {}}


def read(path) -> tuple[dict, dict[str, np.ndarray], HFTokenizer | None]:
    """(``config.json`` dict, {HF tensor name: float32 array}, tokenizer or None) of the GGUF file ``path``.

    Raises ``ValueError`` for a file ``gguf`` cannot read, an architecture rollax does not read
    (:data:`ARCHITECTURES`), metadata without the model's shape, a tensor type ``gguf`` cannot
    dequantize (naming the tensor and its type), or RoPE scaling."""
    import gguf
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct.error, IndexError ...
        raise ValueError(f"cannot read the GGUF file {path}: {type(e).__name__}: {e}") from None
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not one rollax reads ({', '.join(ARCHITECTURES)})")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    names = {t.name for t in reader.tensors}
    if scaling != "none" or "rope_freqs.weight" in names:
        raise ValueError(f"{path}: RoPE scaling ({'rope_freqs.weight' if scaling == 'none' else scaling}) in a GGUF "
                         "file is not read by rollax (transformers ignores it and so computes another RoPE than "
                         "llama.cpp); load the model's Hugging Face directory instead")
    needed = [f"{arch}.{k}" for k in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
              if not isinstance(meta.get(f"{arch}.{k}"), int)]
    if needed:
        raise ValueError(f"{path}: the GGUF metadata lacks {', '.join(needed)} (integers), which give the model's shape")
    config = _config(meta, arch, names)
    tensors, hf_names = {}, _gguf_to_hf(arch, config["num_hidden_layers"])
    for t in reader.tensors:
        try:
            x = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which the gguf package cannot "
                             f"dequantize (rollax reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the "
                             f"K-quants)") from None
        if arch == "llama" and t.name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = config["num_attention_heads"] if ".attn_q." in t.name else config.get(
                "num_key_value_heads", config["num_attention_heads"])
            x = _unpermute(x, heads)
        if arch.startswith("gemma") and t.name.endswith("norm.weight"):
            x = x - 1                                # llama.cpp stores Gemma's (1 + w) norms as 1 + w
        base, _, suffix = t.name.rpartition(".")       # a name with no HF counterpart is kept: the model
        tensors[f"{hf_names[base]}.{suffix}" if base in hf_names else t.name] = np.asarray(x, np.float32)  # builder names it
    return config, tensors, _tokenizer(meta)


def _config(meta: dict, arch: str, tensor_names: set[str]) -> dict:
    """The ``config.json`` dict ``transformers`` builds from the metadata; BOS / EOS from the tokenizer's."""
    config = {"model_type": ARCHITECTURES[arch], "tie_word_embeddings": "output.weight" not in tensor_names}
    keys = {**CONFIG_KEYS, **({HEAD_DIM_KEY[arch]: "head_dim"} if arch in HEAD_DIM_KEY else {})}
    if arch.startswith("gemma"):      # llama.cpp's soft caps, which transformers leaves at its defaults (the same)
        keys |= {"attention.sliding_window": "sliding_window", "attn_logit_softcapping": "attn_logit_softcapping",
                 "final_logit_softcapping": "final_logit_softcapping"}
    config |= {hf: meta[f"{arch}.{key}"] for key, hf in keys.items() if f"{arch}.{key}" in meta}
    config.setdefault("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("padding_token_id", "pad_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            config[hf] = meta[f"tokenizer.ggml.{key}"]
    return config


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a Llama q/k projection's rows ([heads * head_dim, hidden]): it
    stores each head's two rotated halves interleaved, as transformers' ``LlamaTensorProcessor`` undoes."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _gguf_to_hf(arch: str, layers: int) -> dict[str, str]:
    """GGUF tensor base name -> HF base name (``blk.0.attn_q`` -> ``model.layers.0.self_attn.q_proj``), by
    ``gguf``'s own table of llama.cpp's names (as ``transformers``' ``get_gguf_hf_weights_map``)."""
    import gguf
    layout = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], layers)
    parts = ["model.embed_tokens", "model.norm", "lm_head"] + [
        f"model.layers.{i}.{p}" for i in range(layers) for p in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
            "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
            "pre_feedforward_layernorm", "post_feedforward_layernorm")]
    out = {}
    for hf in parts:                                  # the first HF name of a GGUF name: Llama's ffn_norm is
        if (g := layout.get_name(hf)) is not None:    # post_attention_layernorm
            out.setdefault(g, hf)
    return out


def _tokenizer(meta: dict) -> HFTokenizer | None:
    """The tokenizer ``transformers`` rebuilds from the metadata (``integrations/gguf``): sentencepiece
    ("llama": BPE with byte fallback, its merges from the scores) or byte-level BPE ("gpt2", with the
    pre-tokenizer's split), control tokens special; BOS / EOS added as ``add_bos_token`` /
    ``add_eos_token`` say (a sentencepiece vocabulary adds BOS unless told not to)."""
    kind, tokens = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    normalizer = None
    if kind == "llama" and meta["general.architecture"].startswith("gemma"):
        model, pre, decoder = _gemma(meta, tokens)
        normalizer = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    elif kind == "llama":
        model, pre, decoder = _sentencepiece(meta, tokens)
    elif kind == "gpt2":
        model, pre, decoder = _byte_level(meta, tokens)
    else:
        raise ValueError(f"GGUF tokenizer {kind!r} is not one rollax rebuilds (llama, gpt2)")
    types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
    named = {meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    spelled = set(_bytes_to_unicode().values()) if kind == "gpt2" else None   # a byte-level vocabulary's token
    whole = lambda t: spelled is None or set(t) <= spelled                    # in other letters is mislabelled
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": i in named or ttype == CONTROL} for i, (t, ttype) in enumerate(zip(tokens, types))
             if i in named or ttype in (CONTROL, USER_DEFINED) and whole(t)]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
            "pre_tokenizer": pre, "post_processor": PLAIN, "decoder": decoder, "model": model}
    from tokenizers import Tokenizer
    flags = {k: meta.get(f"tokenizer.ggml.add_{k}_token") for k in ("bos", "eos")}
    if kind == "llama" and flags["bos"] is None:
        flags["bos"] = True                     # llama.cpp's and transformers' default for sentencepiece
    flags = {k: bool(v) for k, v in flags.items()} if any(v is not None for v in flags.values()) else {}
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    tok = HFTokenizer(Tokenizer.from_str(json.dumps(spec)), ids["bos"], ids["eos"], ids["padding"],
                      flags.get("bos"), flags.get("eos"))
    tok.chat_template = meta.get("tokenizer.chat_template")
    tok.special_tokens = {f"{name}_token": tokens[i] for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"),
                                                                      ("unk", "unknown"))
                          if (i := ids[key]) is not None and 0 <= i < len(tokens)}
    return tok


def _sentencepiece(meta: dict, tokens: list[str]) -> tuple[dict, dict, dict]:
    """BPE model, pre-tokenizer and decoder of transformers' ``LlamaTokenizer`` for a sentencepiece vocabulary."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _listed_merges(meta) or _merges(vocab, dict(zip(tokens, meta["tokenizer.ggml.scores"])))
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": merges}
    pre = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    decoder = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                {"type": "ByteFallback"}, {"type": "Fuse"},
                                                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return model, pre, decoder


def _listed_merges(meta: dict) -> list[list[str]]:
    """The merges the file lists (none: an empty list)."""
    return [m.split(" ") for m in meta.get("tokenizer.ggml.merges") or ()]


def _merges(vocab: dict[str, int], scores: dict[str, float]) -> list[list[str]]:
    """The merges a vocabulary implies, best score first (transformers' ``generate_merges``)."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [[a, b] for a, b, _ in merges]


def _gemma(meta: dict, tokens: list[str]) -> tuple[dict, dict, dict]:
    """BPE model, pre-tokenizer and decoder of transformers' ``GemmaTokenizer`` for Gemma's sentencepiece
    vocabulary: tokens of spaces respelled with "▁", the merges rebuilt in the order of the tokens."""
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    model = {"type": "BPE", "dropout": None, "unk_token": tokens[unk] if unk is not None else "<unk>",
             "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
             "ignore_merges": False, "vocab": vocab,
             "merges": _listed_merges(meta) or _merges(vocab, {t: -i for i, t in enumerate(tokens)})}
    pre = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    decoder = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return model, pre, decoder


# the pre-tokenizer splits of byte-level vocabularies, by tokenizer.ggml.pre (transformers' GGUF_PRE_TOKENIZER_SPLITS)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLITS = {**dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3),
          **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2)}


def _byte_level(meta: dict, tokens: list[str]) -> tuple[dict, dict, dict]:
    """BPE model, pre-tokenizer and decoder of transformers' ``GPT2Tokenizer`` for a byte-level vocabulary,
    split as ``tokenizer.ggml.pre`` says."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = _listed_merges(meta)
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
             "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": vocab, "merges": merges}
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    split = SPLITS.get(meta.get("tokenizer.ggml.pre"))
    pre = level if split is None else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
        {**level, "use_regex": False}]}
    return model, pre, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
