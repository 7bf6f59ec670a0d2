"""Numerical parity with PyTorch ``transformers`` on random tiny checkpoints (fp32, and bf16)."""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import engine
import models
from engine.decode import left_pad
from tests.conftest import REWARD_CASES, write_hf


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_match_transformers(hf_checkpoint, tmp_path, seed):
    case, _, _ = hf_checkpoint
    ref = write_hf(tmp_path, case, seed=seed)
    model = models.load(tmp_path)
    tokens = np.random.default_rng(seed).integers(0, 97, size=(2, 40))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got, _ = models.forward(model.config, model.params, jnp.asarray(tokens))
    assert rel_err(got, want) < 1e-5


def test_explicit_positions_match_transformers(hf_checkpoint):
    """Positions given by the caller, with gaps (rotary angles from them, not from a table of 0..T-1)."""
    _, path, ref = hf_checkpoint
    model = models.load(path)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 97, size=(2, 12))
    positions = np.cumsum(rng.integers(1, 5, size=(2, 12)), axis=1) + np.array([[5], [300]])
    with torch.no_grad():
        want = ref(torch.tensor(tokens), position_ids=torch.tensor(positions)).logits.numpy()
    got, _ = models.forward(model.config, model.params, jnp.asarray(tokens), jnp.asarray(positions))
    assert rel_err(got, want) < 1e-5


def test_prefill_then_decode_matches_transformers(hf_checkpoint):
    """Left-padded prompts prefilled into the prefix block, then decode steps and a multi-token write
    into the rollout blocks: each position's logits are transformers' over the unpadded row (the
    sliding windows, 8 or 16 positions here, reach across both blocks)."""
    _, path, ref = hf_checkpoint
    model = models.load(path)
    config, params = model.config, model.params
    rng = np.random.default_rng(5)
    lengths, extra = [13, 4], 24
    full = [rng.integers(3, 97, size=n + extra).tolist() for n in lengths]
    tokens, start = left_pad([f[:n] for f, n in zip(full, lengths)], config.pad_id, 16)
    step = jax.jit(lambda *a: models.forward(config, params, *a))
    logits, prefix = step(jnp.asarray(tokens), None, engine.PrefillCache.create(config, 2, 16, start))
    cache = engine.KVCache.from_prefill(prefix, 1, extra)
    got, at = [logits[:, -1:]], 0
    for t in [1] * 10 + [6] + [1] * 7:
        logits, cache = step(jnp.asarray([f[n + at:n + at + t] for f, n in zip(full, lengths)]), None, cache)
        got.append(logits)
        at += t
    got = np.concatenate(got, axis=1)
    for row, (f, n) in enumerate(zip(full, lengths)):
        with torch.no_grad():
            want = ref(torch.tensor([f])).logits[0, n - 1:n + at].numpy()
        assert rel_err(got[row], want) < 1e-5


def _logits_both(path, ref, length=40):
    """(rollax's, transformers') logits of one random batch through the checkpoint in ``path``."""
    model = models.load(path)
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, length))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    return models.forward(model.config, model.params, jnp.asarray(tokens))[0], want


@pytest.mark.parametrize("case, overrides, window", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0), 8),  # every layer
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=2), None),  # no layer of 2
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1), 8),  # layer 1 only
    ("qwen3", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1), 8),
    ("qwen3", dict(use_sliding_window=True, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
     8),
    ("qwen3", dict(use_sliding_window=False, sliding_window=8, max_window_layers=0), None),  # off: no layer
    ("gemma2", dict(layer_types=["full_attention", "sliding_attention", "full_attention"]), 8),
    ("gemma2", dict(layer_types=["full_attention"] * 3), None),
    ("gemma3", dict(layer_types=["sliding_attention"] * 3), 8),     # every layer local: the local RoPE only
    ("gemma3", dict(sliding_window_pattern=1), None),                # every layer global
    ("llama-gqa", dict(sliding_window=8), None),  # transformers' Llama has no window, whatever config.json says
])
def test_sliding_window_settings_match_transformers(tmp_path, case, overrides, window):
    ref = write_hf(tmp_path, case, **overrides)
    assert models.load(tmp_path).config.sliding_window == window
    got, want = _logits_both(tmp_path, ref)
    assert rel_err(got, want) < 1e-5


def test_a_tied_config_with_a_different_saved_head_uses_the_head_like_transformers(tmp_path):
    write_hf(tmp_path, "llama-gqa")  # untied: lm_head.weight differs from the embedding
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not models.load(tmp_path).config.tie_embeddings
    got, want = _logits_both(tmp_path, ref)
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("extra, message", [
    # transformers < 5's rope_scaling wins over a default rope_parameters, as in transformers
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}, rope_scaling={"type": "linear", "factor": 2.0}),
     "unsupported rope type 'linear' (rollax implements default and llama3 here)"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}),
     "llama3 rope scaling needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=8, layer_types=["full_attention"]),
     "layer_types must give each of the 2 layers one of full_attention, sliding_attention"),
    (dict(model_type="gemma2", layer_types=["full_attention", "local"]), "layer_types must give each of the 2"),
    (dict(model_type="gemma2", sliding_window=None), "gives sliding_attention layers but no sliding_window"),
    (dict(model_type="gemma3_text", sliding_window_pattern=0), "sliding_window_pattern must be an integer >= 1"),
    (dict(model_type="qwen3", attention_bias=True), "attention_bias=true, which rollax does not support"),
    (dict(model_type="gemma2", attention_bias=True), "attention_bias=true, which rollax does not support"),
    (dict(model_type="gemma3_text", use_bidirectional_attention=True), "use_bidirectional_attention=true"),
    (dict(model_type="gemma2", hidden_activation="gelu"), "unsupported hidden_activation 'gelu' (rollax "
                                                          "implements gelu_pytorch_tanh for gemma2)"),
    (dict(model_type="qwen3", hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
    (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "attn_logit_softcapping for gemma3_text"),
    (dict(model_type="gemma3_text", rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
     "gemma3_text rope_parameters must map full_attention and sliding_attention"),
    (dict(model_type="gemma3_text", rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
     "unsupported rope type 'linear' (rollax implements default here)"),
    (dict(model_type="gemma3_text", rope_scaling={"rope_type": "yarn", "factor": 2.0}),
     "unsupported rope type 'yarn' (rollax implements default and linear here)"),
    (dict(model_type="gemma3_text", rope_scaling={"rope_type": "linear"}), "linear rope scaling needs a number"),
    (dict(model_type="qwen3", rope_parameters={"rope_type": "linear", "factor": 2.0}),
     "unsupported rope type 'linear' (rollax implements default and llama3 here)"),
    (dict(model_type="qwen3", rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}),
     "unsupported partial_rotary_factor 0.5"),
    (dict(model_type="gemma2", final_logit_softcapping="30"), "final_logit_softcapping has the wrong type (str)"),
    (dict(eos_token_id=500), "eos_ids must be token ids in [0, 97), got (500,)"),
    (dict(rms_norm_eps=-1), "norm_eps=-1"),
    # raw TypeErrors, or "1 labels; rollax reads reward models with one", before
    (dict(rope_scaling=[8.0, 1.0]), "config.json: rope_scaling has the wrong type (list)"),
    (dict(rope_parameters="llama3"), "config.json: rope_parameters has the wrong type (str)"),
    (dict(architectures=5), "config.json: architectures has the wrong type (int)"),
    (dict(num_labels="1"), "config.json: num_labels has the wrong type (str)"),
    (dict(model_type="qwen2", max_window_layers="1"), "config.json: max_window_layers has the wrong type (str)"),
])
def test_config_json_settings_rollax_cannot_follow_are_refused(extra, message):
    base = dict(model_type="llama", vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=112, eos_token_id=2)
    with pytest.raises(ValueError) as err:
        models.from_hf({**base, **extra})
    assert message in str(err.value)


@pytest.mark.parametrize("kind, cls", [("llama", "LlamaConfig"), ("mistral", "MistralConfig"),
                                       ("qwen2", "Qwen2Config"), ("qwen3", "Qwen3Config"),
                                       ("gemma2", "Gemma2Config"), ("gemma3_text", "Gemma3TextConfig")])
def test_keys_a_config_json_leaves_out_take_transformers_defaults(kind, cls):
    """A Mistral config.json without sliding_window loaded as full attention; transformers uses 4096."""
    qwen = dict(use_sliding_window=True, max_window_layers=0) if kind in ("qwen2", "qwen3") else {}  # all slide
    want = getattr(transformers, cls)(**qwen)
    defaults = getattr(transformers, cls)(**({"use_sliding_window": True} if qwen else {}))
    for key, value in models.config.HF_DEFAULTS[kind].items():
        assert getattr(defaults, key) == value, key
    base = dict(model_type=kind, vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                intermediate_size=112, **qwen)
    config = models.from_hf(base)
    assert config.max_len == want.max_position_embeddings
    assert config.sliding_window == (None if kind == "llama" else want.sliding_window)
    assert (config.bos_id, config.eos_ids) == (want.bos_token_id, () if want.eos_token_id is None
                                               else (want.eos_token_id,))
    assert (config.head_dim, config.tie_embeddings) == (want.head_dim if kind in ("qwen3", "gemma2", "gemma3_text")
                                                        else 64 // 8, want.tie_word_embeddings)


@pytest.mark.parametrize("hf", [
    dict(num_hidden_layers=7),     # transformers' defaults: every 6th layer global, RoPE bases 1e6 and 1e4
    # the keys of Gemma 3 config.json files written before transformers 5
    dict(num_hidden_layers=5, sliding_window_pattern=3, rope_theta=2e5, rope_local_base_freq=300.0,
         rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=100, sliding_window=512,
         final_logit_softcapping=20.0),
    dict(num_hidden_layers=4, rope_theta=2e5, rope_scaling={"type": "linear", "factor": 2.0}),
])
def test_gemma3_layers_and_ropes_are_transformers(hf):
    """Which layers slide, each layer's RoPE, the scale and the caps, as transformers reads the config."""
    base = dict(vocab_size=97, hidden_size=64, num_attention_heads=4, intermediate_size=112, **hf)
    want = transformers.Gemma3TextConfig(**base)
    config = models.from_hf({"model_type": "gemma3_text", **base})
    ropes = want.rope_parameters
    for i, kind in enumerate(want.layer_types):
        assert config.window(i) == (want.sliding_window if kind == "sliding_attention" else None)
        assert config.local_rope(i) == (kind == "sliding_attention")
        rope = ropes[kind]
        theta = config.rope_local_theta if config.local_rope(i) else config.rope_theta
        factor = 1.0 if config.local_rope(i) else config.rope_linear
        assert (theta, factor) == (rope["rope_theta"], rope.get("factor", 1.0))
    assert config.attn_scale == want.query_pre_attn_scalar ** -0.5
    assert (config.final_softcap, config.attn_softcap) == (want.final_logit_softcapping, None)


def test_a_tokenizer_json_adds_no_bos_that_is_also_an_eos(llama_dir_with_tokenizer):
    """Qwen2's config.json names <|endoftext|> as BOS and EOS; its tokenizer adds no BOS (nor does
    transformers): rollax prepended it to every string prompt."""
    path = llama_dir_with_tokenizer
    config = json.loads((path / "config.json").read_text())
    plain = models.load(path).tokenizer.encode("the cat", bos=False)
    assert models.load(path).tokenizer.encode("the cat") == [1] + plain
    (path / "config.json").write_text(json.dumps({**config, "bos_token_id": 2, "eos_token_id": 2}))
    assert models.load(path).tokenizer.encode("the cat") == plain
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert models.load(path).tokenizer.encode("the cat") == plain


@pytest.fixture
def llama_dir_with_tokenizer(tmp_path):
    from tests.test_checkpoint import _tokenizer_json
    write_hf(tmp_path, "llama-gqa", bos_token_id=1, eos_token_id=2)
    _tokenizer_json(tmp_path)
    return tmp_path


def test_bfloat16_is_as_close_to_fp32_as_transformers_bfloat16(hf_checkpoint):
    """bf16, the dtype of real checkpoints, on CPU (XLA CPU has no bf16 x bf16 -> fp32 batched dot):
    rollax's logits are as close to the fp32 reference as transformers' own bf16 logits, and the
    log-probs of a bf16 decode agree with a bf16 forward over the same tokens."""
    _, path, ref = hf_checkpoint
    tokens = np.random.default_rng(4).integers(0, 97, size=(2, 24))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
        theirs = copy.deepcopy(ref).to(torch.bfloat16)(torch.tensor(tokens)).logits.float().numpy()
    model = models.load(path, dtype=jnp.bfloat16)
    got, _ = models.forward(model.config, model.params, jnp.asarray(tokens))
    assert got.dtype == jnp.float32 and rel_err(got, want) < 1.25 * rel_err(theirs, want)

    out = engine.generate(model, [tokens[0, :5].tolist()], max_new_tokens=12)
    n = int(out.lengths[0, 0])
    seq = tokens[0, :5].tolist() + out.tokens[0, 0, :n].tolist()
    full, _ = models.forward(model.config, model.params, jnp.asarray([seq]))
    lp = jax.nn.log_softmax(full[0, 4:4 + n], axis=-1)[np.arange(n), out.tokens[0, 0, :n]]
    np.testing.assert_allclose(out.logprobs[0, 0, :n], lp, atol=1e-2)


def test_greedy_matches_transformers_generate(hf_checkpoint):
    case, path, ref = hf_checkpoint
    model = models.load(path)
    prompts = [[1, 5, 9, 33, 2 + 40], [1, 7], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]
    got = engine.generate(model, prompts, max_new_tokens=32)
    # transformers, one prompt at a time (no padding), EOS disabled so all 32 tokens come out
    for g, p in enumerate(prompts):
        with torch.no_grad():
            out = ref.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        want = out[0, len(p):].numpy()
        n = int(got.lengths[g, 0])
        np.testing.assert_array_equal(np.asarray(got.tokens[g, 0, :n]), want[:n])
        if n < 32:  # stopped early only because it produced EOS
            assert want[n - 1] == 2


@pytest.mark.parametrize("case", list(REWARD_CASES))
def test_reward_head_matches_transformers(tmp_path, case):
    """A ``*ForSequenceClassification`` checkpoint's score of right-padded sequences of different lengths."""
    ref = write_hf(tmp_path, case)
    model = models.load(tmp_path)
    assert model.config.score_head
    rng = np.random.default_rng(0)
    lengths = np.array([40, 17, 3])
    tokens = rng.integers(3, 97, size=(3, 40))
    tokens[np.arange(40) >= lengths[:, None]] = 0                     # pad id 0 after each sequence
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits[:, 0].numpy()       # HF pools the last non-pad token
    got = models.rewards(model.config, model.params, jnp.asarray(tokens))[np.arange(3), lengths - 1]
    assert rel_err(got, want) < 1e-5


def test_rewards_refuses_a_model_without_a_scalar_head():
    config = models.preset("tiny")
    with pytest.raises(ValueError, match="no scalar head"):
        models.rewards(config, models.init_params(config, jax.random.key(0)), jnp.zeros((1, 3), jnp.int32))


def test_a_config_json_without_the_model_shape_is_refused():
    with pytest.raises(ValueError, match="needs positive integers num_hidden_layers, intermediate_size; got "
                                         "num_hidden_layers=None, intermediate_size=0"):
        models.from_hf({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_attention_heads": 2,
                        "intermediate_size": 0})


@pytest.mark.parametrize("shape, message", [
    (dict(heads=4, kv_heads=0), "config fields out of range: kv_heads=0"),
    (dict(heads=4, kv_heads=3), "must be a multiple of kv_heads (3)"),
    (dict(norm_eps=-1.0), "norm_eps=-1.0"),
    (dict(rope_theta=0.0), "rope_theta=0.0"),
    (dict(norm_eps="1e-6"), "norm_eps='1e-6'"),
    (dict(layers=0, vocab_size=2.5), "vocab_size=2.5, layers=0"),
    (dict(sliding_window=0), "sliding_window=0"),
    (dict(rope_scaling=(0.0, 1.0, 4.0, 32)), "rope_scaling must be (factor > 0"),
    (dict(rope_scaling=(8.0, 4.0, 1.0, 32)), "with 0 < low < high"),
    (dict(eos_ids=(2, 256)), "eos_ids must be token ids in [0, 256), got (2, 256)"),
    (dict(pad_id=-1), "pad_id must be token ids in [0, 256)"),
    (dict(bogus=1), "unknown config fields ['bogus']"),
    (dict(hidden=60, heads=4), "head_dim (15) must be even"),
    (dict(dtype="int8"), "dtype must be a floating-point type (float32, bfloat16, float16), got 'int8'"),
    (dict(dtype="bogus"), "dtype must be a floating-point type"),
    (dict(dtype="float64"), "dtype float64 needs jax_enable_x64"),   # else the params would be float32
])
def test_impossible_shapes_are_refused(shape, message):
    with pytest.raises(ValueError) as err:
        models.preset("tiny", **shape)
    assert message in str(err.value)


def test_a_multi_label_classifier_is_refused():
    with pytest.raises(ValueError, match="3 labels"):
        models.from_hf({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"],
                        "id2label": {"0": "a", "1": "b", "2": "c"}, "vocab_size": 8, "hidden_size": 8,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8})
