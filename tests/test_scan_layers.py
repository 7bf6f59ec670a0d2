"""``Config.scan_layers``: the layers stacked under a ``lax.scan`` compute what the unrolled layers do."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import engine
import models
import sharding
from models.config import Gemma2Config, Gemma3TextConfig, Qwen2Config
from sampling import Sampler

SHAPE = dict(vocab_size=256, hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128, max_len=512, eos_ids=())
GEMMA = dict(head_dim=24, sliding_window=4, sliding_layers=(True, False, True), attn_scale=20 ** -0.5,
             final_softcap=5.0)
CONFIGS = {
    "llama": models.preset("tiny", **SHAPE),
    "qwen2": Qwen2Config(**SHAPE),
    # sliding, global, sliding: a window per layer under the scan; soft caps that bite on random weights
    "gemma2": Gemma2Config(**SHAPE, **GEMMA, attn_softcap=0.5),
    # ... and a RoPE per layer kind (q/k norms, linear scaling of the global one)
    "gemma3": Gemma3TextConfig(**SHAPE, **GEMMA, rope_theta=500.0, rope_local_theta=50.0, rope_linear=4.0),
}
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
SAMPLER = Sampler(temperature=1.0)


@functools.cache
def init(config):
    return models.init_params(config, jax.random.key(1), std=0.3)


def random_model(name):
    return models.Model(CONFIGS[name], init(CONFIGS[name]))


def rel(want, got):
    want, got = np.asarray(want), np.asarray(got)
    return float(np.max(np.abs(want - got)) / np.max(np.abs(want)))


def test_layouts_convert_both_ways():
    model = random_model("gemma3")
    scanned = model.with_layout(True)
    assert scanned.config.scan_layers and scanned.params["layers"]["wq"].shape == (3, 64, 4, 24)
    jax.tree.map(np.testing.assert_array_equal, scanned.with_layout(False).params, model.params)
    jax.tree.map(np.testing.assert_array_equal, init(scanned.config), scanned.params)  # the same draws, stacked
    with pytest.raises(ValueError) as e:
        model.with_layout(1)
    assert "scan_layers must be True or False, got 1" in str(e.value)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2"])      # gemma3: the decode test below
def test_scanned_logits_match_unrolled(name):
    model = random_model(name)
    scanned = model.with_layout(True)
    tokens = np.array([PROMPTS[1], PROMPTS[1][::-1]])
    forward = jax.jit(models.forward, static_argnums=0)
    assert rel(forward(model.config, model.params, tokens)[0], forward(scanned.config, scanned.params, tokens)[0]) < 1e-5


def test_scanned_decode_matches_unrolled():
    """Tokens and log-probabilities through a decode, a select (rollouts copied and re-keyed), a
    rewind, a packing of the slots (the cache reordered) and a second decode; and the prefill of the
    scanned layout on a mesh (data 2, tensor 2: the KV heads split)."""
    def run(m):
        state = engine.start(m, PROMPTS, capacity=24, n=2, seed=3)
        state = engine.decode(m, state, max_new_tokens=8, sampler=SAMPLER)
        state = engine.select(state, [[1, 1], [1, 0]], rekey=True)
        state = engine.rewind(m, state, [[3, 8], [0, 5]])
        return engine.decode(m, state.packed(), max_new_tokens=8, sampler=SAMPLER)

    model = random_model("gemma3")
    want, got = run(model), run(model.with_layout(True))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.cache.length, want.cache.length)
    assert rel(want.logprobs, got.logprobs) < 1e-5
    mesh = sharding.make_mesh(2, 2, devices=jax.devices()[:4])
    scanned = model.with_layout(True).shard(mesh)
    state = engine.start(scanned, PROMPTS, capacity=24, n=2, seed=3, mesh=mesh)
    assert rel(engine.start(model, PROMPTS, capacity=24, n=2, seed=3).logits, state.logits) < 1e-5
    assert scanned.params["layers"]["wq"].sharding.spec == P(None, None, "tensor")
    assert all(x.sharding.spec == P(None, "data", "tensor") for x in state.cache.k)


def test_load_picks_the_layout(tmp_path):
    model = random_model("llama")
    scanned = model.with_layout(True)
    assert scanned.fingerprint() == model.fingerprint()
    scanned.save(tmp_path / "m")                                    # saved one layer at a time
    assert "scan_layers" not in (tmp_path / "m" / "rollax.json").read_text()
    got = models.load(tmp_path / "m", scan_layers=False)
    assert not got.config.scan_layers
    jax.tree.map(np.testing.assert_array_equal, got.params, model.params)
    assert models.load(tmp_path / "m").config.scan_layers is models.checkpoint.default_scan_layers()
    with pytest.raises(ValueError) as e:
        models.load(tmp_path / "m", scan_layers="yes")
    assert "scan_layers must be True, False or None (the backend's default), got 'yes'" in str(e.value)
