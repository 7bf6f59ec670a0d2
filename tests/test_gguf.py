"""GGUF files: ``models.load("file.gguf")`` gives the logits, token ids and greedy tokens ``transformers``
gives for the same file (``from_pretrained(dir, gguf_file=...)``), for files written by ``gguf``'s own
writer from random tiny Llama and Qwen2 models: float (F32, F16, BF16), quantized (Q8_0, Q4_0, Q4_1 by
``gguf``'s quantizer; Q4_K, Q6_K as raw blocks, which it cannot quantize), tokenizers of both kinds."""
import functools
import json

import jax
import numpy as np
import pytest

import models
from tests.conftest import write_hf
from tests.test_tokenizers import QWEN_SPLIT, _byte_bpe, _sentencepiece

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")          # transformers loads GGUF files only with it
Q = gguf.GGMLQuantizationType

VOCAB = 384                    # the models' (the tokenizers have fewer): one compiled forward for both Llamas
TEXTS = ["hello world", "the cat sat on the mat, a dog ran in the park", " leading space", "Héllo wörld, café\n\nQ: 12+7=?", "日本語 🙂", "<|im_end|> after", "</s>after <s> x", ""]
TYPES = {  # which type each kind of weight is written in, per file (norms, biases: F32)
    "llama-f32": {},
    "llama-mixed": {"embed": Q.F16, "q": Q.BF16, "k": Q.Q8_0, "v": Q.Q4_0, "o": Q.Q4_1, "gate": Q.Q8_0,
                    "up": Q.Q4_0, "down": Q.Q6_K, "output": Q.Q4_K},
    "gemma2-f32": {},
    "gemma3-q8": {"embed": Q.Q8_0, "q": Q.Q8_0, "k": Q.Q8_0, "v": Q.Q8_0, "o": Q.Q8_0, "gate": Q.Q8_0,
                  "up": Q.Q8_0, "down": Q.Q8_0},
    "qwen2-q8": {"embed": Q.Q8_0, "q": Q.Q8_0, "k": Q.Q8_0, "v": Q.Q8_0, "o": Q.Q8_0, "gate": Q.Q8_0, "up": Q.Q8_0,
                 "down": Q.Q8_0},
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
KINDS = {"token_embd": "embed", "attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate",
         "ffn_up": "up", "ffn_down": "down", "output": "output"}


def _k_quant(x: np.ndarray, qtype, rng) -> np.ndarray:
    """Random K-quant blocks for a [rows, cols] weight (its values are not used): random bytes with
    small valid fp16 block scales, which ``gguf`` and ``transformers`` both dequantize."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (x.shape[0], x.shape[1] // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
    at = [size - 2] if qtype == Q.Q6_K else [0, 2]            # Q6_K: d last; Q4_K: d and dmin first
    for i in at:
        raw[..., i:i + 2] = scale
    return raw.reshape(x.shape[0], -1)


def _close(w):
    """Write out and close a ``gguf.GGUFWriter``."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _permute(w, heads):
    """llama.cpp's reordering of a Llama q/k projection (``convert_hf_to_gguf.py``'s ``permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch, model, tokenizer: dict, types: dict, seed=0):
    """``model`` (a transformers model) as llama.cpp's converter writes it, with ``tokenizer`` metadata."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    rope = cfg.rope_parameters
    w.add_rope_freq_base((rope.get("full_attention") or rope)["rope_theta"])     # Gemma 3: one per layer type
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if arch.startswith("gemma"):
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
    for key, value in tokenizer.items():
        getattr(w, "add_" + key)(value)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue                                  # llama.cpp writes no output.weight for a tied head
        base, suffix = name.rsplit(".", 1)
        g = names.get_name(base)
        x = t.numpy().astype(np.float32)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            x = x + 1                                 # llama.cpp stores Gemma's (1 + w) norms so
        if arch == "llama" and g.endswith(("attn_q", "attn_k")):
            x = _permute(x, cfg.num_attention_heads if g.endswith("q") else cfg.num_key_value_heads)
        qtype = types.get(KINDS.get(g.rsplit(".", 1)[-1]), Q.F32) if suffix == "weight" and x.ndim == 2 else Q.F32
        data = _k_quant(x, qtype, rng) if qtype in (Q.Q4_K, Q.Q6_K) else gguf.quants.quantize(x, qtype)
        w.add_tensor(f"{g}.{suffix}", data, raw_dtype=qtype)
    _close(w)


@functools.cache
def _byte_level_tokenizer(directory):
    tok = _byte_bpe(directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=QWEN_SPLIT)
    (directory / "tokenizer.json").unlink()
    return tok


def _byte_level_metadata(directory, pre):
    tok = _byte_level_tokenizer(directory.parent)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return dict(tokenizer_model="gpt2", tokenizer_pre=pre, token_list=tokens, token_merges=merges,
                token_types=[3 if t.startswith("<|") else 1 for t in tokens], eos_token_id=vocab["<|im_end|>"],
                bos_token_id=vocab["<|im_start|>"], **({"add_bos_token": True} if pre == "llama-bpe" else {}))


def _sentencepiece_metadata(directory, gemma=False):
    import sentencepiece as spm
    if gemma:
        _sentencepiece(directory, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                       bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False)
    else:
        _sentencepiece(directory, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    (directory / "tokenizer.model").unlink()
    n = sp.get_piece_size()
    kind = lambda i: 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1
    ids = dict(bos_token_id=2, eos_token_id=1, unk_token_id=3, pad_token_id=0) if gemma else \
        dict(bos_token_id=1, eos_token_id=2, unk_token_id=0)
    return dict(tokenizer_model="llama", token_list=[sp.id_to_piece(i) for i in range(n)],
                token_scores=[sp.get_score(i) for i in range(n)], token_types=[kind(i) for i in range(n)], **ids)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: (directory, file name)}: GGUF files, each alone in its directory (so transformers finds no
    other tokenizer there)."""
    root = tmp_path_factory.mktemp("gguf")
    made = {}
    for name, arch, tokenizer in (("llama-f32", "llama", lambda d: _byte_level_metadata(d, "llama-bpe")),
                                  ("llama-mixed", "llama", _sentencepiece_metadata),
                                  ("gemma2-f32", "gemma2", lambda d: _sentencepiece_metadata(d, gemma=True)),
                                  ("gemma3-q8", "gemma3", lambda d: _sentencepiece_metadata(d, gemma=True)),
                                  ("qwen2-q8", "qwen2", lambda d: {**_byte_level_metadata(d, "qwen2"),
                                                                   "chat_template": CHATML})):
        directory = root / name
        directory.mkdir()
        meta = tokenizer(directory)
        case = "llama-gqa" if arch == "llama" else arch
        model = write_hf(root / f"{name}-hf", case, vocab_size=VOCAB, hidden_size=256, intermediate_size=256,
                         head_dim=64, tie_word_embeddings=arch != "llama")
        write_gguf(directory / "model.gguf", arch, model, meta, TYPES[name])
        made[name] = directory
    return made


def _reference(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), gguf_file="model.gguf",
                                                              dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(directory), gguf_file="model.gguf")


@pytest.mark.parametrize("name", list(TYPES))
def test_gguf_matches_transformers(files, name):
    """Logits (fp32, relative error), token ids, decoded text and greedy tokens, as transformers reads the file.
    Greedy: rollax's argmax after each prefix of transformers' greedy continuation is its next token
    (so rollax's greedy decode is the same sequence), checked in the one forward pass of the logits."""
    ref, ref_tok = _reference(files[name])
    model = models.load(files[name] / "model.gguf")
    assert model.config.family == name.split("-")[0].replace("gemma3", "gemma3_text")
    assert model.config.tie_embeddings == (not name.startswith("llama"))
    for text in TEXTS:
        ids = ref_tok(text).input_ids
        assert model.tokenizer.encode(text) == ids, text
        assert model.tokenizer.decode(ids) == ref_tok.decode(ids)
        assert model.tokenizer.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids, skip_special_tokens=True)
    if name == "qwen2-q8":          # the file's chat template
        chat = [{"role": "user", "content": "Héllo, 12+7=?"}]
        want = ref_tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
        assert model.tokenizer.apply_chat_template(chat, add_generation_prompt=True) == want
    prompt = ref_tok("hello world").input_ids
    with torch.no_grad():
        greedy = ref.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0].numpy()
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, 24))     # one shape for every file
    tokens[0, :len(greedy)] = greedy
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got, _ = models.forward(model.config, model.params, tokens)
    assert np.abs(np.asarray(got) - want).max() / np.abs(want).max() < 1e-5
    np.testing.assert_array_equal(np.argmax(got[0, len(prompt) - 1:len(greedy) - 1], -1), greedy[len(prompt):])


def test_a_tensor_type_that_cannot_be_dequantized_is_named(files, tmp_path):
    """A file with a Q8_1 tensor (a type ``gguf`` does not dequantize) is refused by tensor and type."""
    reader = gguf.GGUFReader(files["llama-f32"] / "model.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "vocab_size"):
        w.add_uint32(f"llama.{key}", int(reader.fields[f"llama.{key}"].contents()))
    w.add_token_list(reader.fields["tokenizer.ggml.tokens"].contents())
    for t in reader.tensors:
        if t.name == "blk.1.ffn_up.weight":
            x = np.zeros((t.data.shape[0], t.data.shape[1] // 32 * 40), np.uint8)
            w.add_tensor(t.name, x, raw_dtype=Q.Q8_1)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    _close(w)
    with pytest.raises(ValueError) as e:
        models.load(tmp_path / "bad.gguf")
    assert "blk.1.ffn_up.weight" in str(e.value) and "Q8_1" in str(e.value) and "dequantize" in str(e.value)


@pytest.mark.parametrize("arch, keys, message", [
    ("mamba", {}, "GGUF architecture 'mamba' is not one rollax reads (llama, qwen2"),
    ("llama", {"block_count": 2}, "lacks llama.embedding_length, llama.feed_forward_length, llama.attention.head_count"),
])
def test_a_file_rollax_cannot_follow_is_refused(tmp_path, arch, keys, message):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch)
    for key, value in keys.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    _close(w)
    with pytest.raises(ValueError) as e:
        models.load(tmp_path / "m.gguf")
    assert message in str(e.value)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError) as e:
        models.load(tmp_path / "m.gguf")
    assert "cannot read the GGUF file" in str(e.value) and "m.gguf" in str(e.value)


def test_rope_scaling_factors_are_refused(files, tmp_path):
    """Llama 3.1's RoPE factors (``rope_freqs.weight``), which transformers ignores, are refused by name."""
    reader = gguf.GGUFReader(files["llama-f32"] / "model.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_block_count(2)
    w.add_tensor("rope_freqs.weight", np.ones(8, np.float32))
    w.add_tensor("token_embd.weight", np.array(reader.tensors[0].data))
    _close(w)
    with pytest.raises(ValueError) as e:
        models.load(tmp_path / "m.gguf")
    assert "rope_freqs.weight" in str(e.value) and "Hugging Face directory" in str(e.value)


def test_readme_example_runs(files, tmp_path, monkeypatch):
    """The README's hub and GGUF example, as written: its hub id cached (offline) with a tiny Qwen2, its
    GGUF file name that model's GGUF file."""
    from tests.test_docs import block
    from tests.test_hub import _cache
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    _cache(tmp_path / "hub", "Qwen/Qwen2.5-0.5B-Instruct", files["qwen2-q8"].parent / "qwen2-q8-hf")
    (tmp_path / "qwen2.5-0.5b-instruct-q8_0.gguf").symlink_to(files["qwen2-q8"] / "model.gguf")
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(block("README.md", 'models.load("qwen2.5-0.5b-instruct-q8_0.gguf")'), ns)
    assert ns["model"].config.family == ns["gguf_model"].config.family == "qwen2"
    assert ns["ids"] == ns["gguf_model"].tokenizer.encode("Hello") and len(ns["ids"]) >= 1


def test_a_gguf_file_loads_onto_a_mesh(files):
    """With a mesh, each weight is placed on its shards, equal to the unsharded load."""
    import sharding
    path = files["llama-mixed"] / "model.gguf"
    mesh = sharding.make_mesh(data=2, tensor=2, devices=jax.devices()[:4])
    placed, plain = models.load(path, mesh=mesh), models.load(path)
    assert placed.params["layers"][0]["wq"].sharding.mesh == mesh
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                            placed.params, plain.params)))


def test_a_model_read_from_gguf_saves_and_loads_back(files, tmp_path):
    """``Model.save`` writes the tokenizer rebuilt from the file; the checkpoint loads back the same."""
    model = models.load(files["qwen2-q8"] / "model.gguf")
    model.save(tmp_path / "saved")
    back = models.load(tmp_path / "saved")
    assert back.config == model.config
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, back.params, model.params)))
    for text in TEXTS:
        assert back.tokenizer.encode(text) == model.tokenizer.encode(text)
    chat = [{"role": "user", "content": "hi"}]
    assert back.tokenizer.apply_chat_template(chat) == model.tokenizer.apply_chat_template(chat)
