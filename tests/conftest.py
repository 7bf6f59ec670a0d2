"""Shared fixtures: random tiny Hugging Face checkpoints written by ``transformers`` itself."""
import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ROLLAX_COMPILE_CACHE", "off")   # scripts run by the tests write no compile cache to ~

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program after each test module. XLA CPU maps memory for each one, and
    the whole suite in one process came near Linux's 65,530 mappings a process (vm.max_map_count),
    past which a compilation crashes with a segmentation fault."""
    yield
    jax.clear_caches()
    gc.collect()

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

HF_CASES = {
    "llama-gqa": ("LlamaForCausalLM", "LlamaConfig", dict(rope_theta=10000.0)),
    "llama31": ("LlamaForCausalLM", "LlamaConfig", dict(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=16)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(num_key_value_heads=4)),
    # head_dim unlike hidden / heads; q/k norms
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=24)),
    # sliding and global layers alternate; soft caps small enough to bite on random weights
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(
        num_hidden_layers=3, head_dim=24, query_pre_attn_scalar=20, sliding_window=8,
        attn_logit_softcapping=0.05, final_logit_softcapping=0.5)),
    # layers sliding, global, sliding, each kind with its own RoPE (the global one scaled linearly)
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(
        num_hidden_layers=3, head_dim=24, query_pre_attn_scalar=20, sliding_window=8, sliding_window_pattern=2,
        rope_theta=500.0, rope_local_base_freq=50.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
        final_logit_softcapping=0.5)),
}
REWARD_CASES = {  # reward models: a scalar head on the last token (*ForSequenceClassification, one label)
    "llama-reward": ("LlamaForSequenceClassification", "LlamaConfig", dict(num_labels=1)),
    "qwen2-reward": ("Qwen2ForSequenceClassification", "Qwen2Config", dict(num_labels=1)),
    "qwen3-reward": ("Qwen3ForSequenceClassification", "Qwen3Config", dict(num_labels=1)),
    "gemma2-reward": ("Gemma2ForSequenceClassification", "Gemma2Config", dict(num_labels=1, sliding_window=8)),
    "gemma3-reward": ("Gemma3TextForSequenceClassification", "Gemma3TextConfig", dict(
        num_labels=1, sliding_window=8, sliding_window_pattern=2)),
}


def write_hf(path, case: str, seed: int = 0, **overrides):
    """A random-weight HF checkpoint of ``case`` (config fields replaced by ``overrides``) in ``path``;
    returns the torch model (fp32, eval)."""
    import torch
    import transformers
    arch, cfg_cls, extra = {**HF_CASES, **REWARD_CASES}[case]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **extra, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                                            **overrides})
    model = getattr(transformers, arch)(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so their loading is checked
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="session", params=list(HF_CASES))
def hf_checkpoint(request, tmp_path_factory):
    """(case, directory, torch model) for each supported family."""
    path = tmp_path_factory.mktemp(request.param)
    return request.param, path, write_hf(path, request.param)


def chain_model(tokenizer, chain, vocab_size: int, hidden: int = 64):
    """A rollax model whose greedy next token after ``chain[i]`` is ``chain[i + 1]`` (its layers are
    zero, so the logits depend on the current token alone): a chosen output with a real tokenizer."""
    import jax.numpy as jnp
    import numpy as np

    import models
    config = models.preset("tiny", vocab_size=vocab_size, hidden=hidden, heads=4, kv_heads=2, layers=1,
                           bos_id=tokenizer.bos_id, eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    # norms 1, layers 0 (what init_params gives after zeroing its matrices, without compiling its initializers)
    params = jax.tree.map(lambda s: np.ones(s, np.float32) if len(s) == 1 else np.zeros(s, np.float32),
                          models.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    params = jax.tree.map(jnp.asarray, params)
    embed = np.random.default_rng(0).normal(size=(vocab_size, hidden)).astype(np.float32)
    head = np.zeros((hidden, vocab_size), np.float32)
    for a, b in zip(chain, chain[1:]):
        head[:, b] += 10 * embed[a] / np.linalg.norm(embed[a])
    params["embed"], params["lm_head"] = jnp.asarray(embed), jnp.asarray(head)
    return models.Model(config, params, tokenizer)
