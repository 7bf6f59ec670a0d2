"""Sharded generation on 8 emulated CPU devices: meshes, rules, placement, loading into shards."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import engine
from engine.decode import place_model, row_sampler
import models
import sharding
from models.placement import read_block
from sampling import Sampler
from tests.conftest import write_hf

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
CONFIG = models.preset("tiny")            # heads 4, kv_heads 2: replicated on tensor 4 and 8
PROMPTS = [[1, 5, 9, 33, 42], [1, 7, 8], [3, 4, 5, 6, 7, 8, 9], [1, 200]]
N = 4                                     # 4 prompts x 4 rollouts = 16 rows: splits over data 8
# per-row settings: rollouts 0-1 greedy, 2-3 sampled (two samplers), so one run checks both
TEMPERATURE = np.array([[0.0, 0.0, 1.0, 1.0]] * 2 + [[0.0, 0.0, 0.7, 0.7]] * 2, np.float32)
TOP_P = np.array([[1.0, 1.0, 1.0, 1.0]] * 2 + [[1.0, 1.0, 0.9, 0.9]] * 2, np.float32)


@pytest.fixture(scope="module")
def model():
    return models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(0), std=0.2))


def run(model, mesh=None):
    return engine.generate(model, PROMPTS, max_new_tokens=12, n=N, seed=7, mesh=mesh,
                           sampler=Sampler(temperature=TEMPERATURE, top_p=TOP_P))


@pytest.fixture(scope="module")
def reference(model):
    return run(model)


# --- meshes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data,tensor", MESHES)
def test_make_mesh_shapes(data, tensor):
    mesh = sharding.make_mesh(data=data, tensor=tensor)
    assert dict(mesh.shape) == {"data": data, "tensor": tensor}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_infers_one_axis():
    assert dict(sharding.make_mesh(tensor=2).shape) == {"data": 4, "tensor": 2}
    assert dict(sharding.make_mesh(data=2, tensor=-1).shape) == {"data": 2, "tensor": 4}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "tensor": 1}
    assert dict(sharding.make_mesh(devices=jax.devices()[:2]).shape) == {"data": 2, "tensor": 1}


@pytest.mark.parametrize("kwargs,message", [
    (dict(data=3, tensor=1), "mesh data=3 x tensor=1 needs 3 devices, but there are 8"),
    (dict(data=3, tensor=-1), "cannot infer mesh axis 'tensor': 8 devices are not divisible by the other axis size 3"),
    (dict(data=-1, tensor=-1), "at most one mesh axis may be -1"),
    (dict(data=0, tensor=8), "mesh axis 'data' must be a positive int or -1 (inferred), got 0"),
    (dict(data=2.0, tensor=4), "mesh axis 'data' must be a positive int or -1 (inferred), got 2.0"),
])
def test_make_mesh_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError) as err:
        sharding.make_mesh(**kwargs)
    assert message in str(err.value)


def test_parse_mesh():
    assert sharding.parse_mesh("data=4,tensor=2") == {"data": 4, "tensor": 2}
    assert sharding.parse_mesh(" tensor=-1 ") == {"tensor": -1}
    with pytest.raises(ValueError) as err:
        sharding.parse_mesh("data=4,model=2")
    assert "expected 'data=D,tensor=T'" in str(err.value) and "'model=2'" in str(err.value)
    with pytest.raises(ValueError) as err:
        sharding.parse_mesh("data=four")
    assert "size of 'data' is not an integer: 'four'" in str(err.value)
    with pytest.raises(ValueError, match="axis 'data' is given twice"):
        sharding.parse_mesh("data=4,data=2")
    with pytest.raises(ValueError, match="mesh spec must be a string"):
        sharding.parse_mesh(4)


def test_make_mesh_refuses_a_repeated_device():
    with pytest.raises(ValueError, match="got a device more than once"):
        sharding.make_mesh(2, 1, devices=[jax.devices()[0]] * 2)


# --- rules ----------------------------------------------------------------------------------

def test_param_shardings_follow_the_rules(model):
    wide = model.shard(sharding.make_mesh(2, 4)).params        # kv_heads 2 < tensor 4: replicated
    for layer in wide["layers"]:
        assert layer["wq"].sharding.spec == P(None, "tensor")
        assert layer["wk"].sharding.spec == P()
        assert layer["wv"].sharding.spec == P()
        assert layer["wo"].sharding.spec == P("tensor")
        assert layer["w_gate"].sharding.spec == P(None, "tensor")
        assert layer["w_down"].sharding.spec == P("tensor")
    assert wide["embed"].sharding.spec == P("tensor")
    assert wide["lm_head"].sharding.spec == P(None, "tensor")
    assert wide["final_norm"].sharding.spec == P()
    # each device holds a quarter of the heads
    assert wide["layers"][1]["wq"].addressable_shards[0].data.shape == (64, 1, 16)
    narrow = model.shard(sharding.make_mesh(4, 2)).params      # kv_heads 2 = tensor 2: split
    assert narrow["layers"][1]["wk"].sharding.spec == P(None, "tensor")
    for placed in (wide, narrow):
        for got, want in zip(jax.tree.leaves(placed), jax.tree.leaves(model.params)):
            np.testing.assert_array_equal(got, want)


def test_rules_and_specs_hash_the_same_twice():
    mesh = sharding.make_mesh(2, 4)
    again = sharding.Rules.of(sharding.RULES.as_dict())
    assert again == sharding.RULES and hash(again) == hash(sharding.RULES)
    specs = lambda: sharding.logical_to_sharding(models.param_axes(CONFIG), mesh, sharding.RULES,
                                                 models.param_shapes(CONFIG))
    first, second = jax.tree.leaves(specs()), jax.tree.leaves(specs())
    assert [hash(s) for s in first] == [hash(s) for s in second] and first == second
    assert hash(tuple(s.spec for s in first)) == hash(tuple(s.spec for s in second))
    assert sharding.RULES.replace(vocab=None) != sharding.RULES


def test_kv_heads_are_replicated_only_when_they_do_not_divide():
    axes = ("rollouts", "kv_heads", "seq", "head_dim")
    mesh = sharding.make_mesh(2, 4)
    assert sharding.logical_to_spec(axes, mesh, shape=(8, 2, 32, 16)) == P("data")
    assert sharding.logical_to_spec(axes, mesh, shape=(8, 8, 32, 16)) == P("data", "tensor")
    assert sharding.logical_to_spec(axes, mesh) == P("data", "tensor")   # no shape: as the rules say


@pytest.mark.parametrize("rules,axes,message", [
    (sharding.RULES.replace(embed="tensor"), ("embed", "heads", "head_dim"),
     "logical axes 'embed' and 'heads' of one array ('embed', 'heads', 'head_dim') both map to mesh axis 'tensor'"),
    (sharding.RULES, ("embed", "experts"), "logical axis 'experts' has no sharding rule"),
    (sharding.RULES.replace(heads="model"), ("heads",), "rule 'heads' -> 'model' names a mesh axis the mesh does not have"),
    (sharding.RULES, "heads", "logical axes must be a tuple of names"),
])
def test_bad_mappings_are_refused(rules, axes, message):
    with pytest.raises(ValueError) as err:
        sharding.logical_to_spec(axes, sharding.make_mesh(4, 2), rules)
    assert message in str(err.value)


def test_bad_rules_and_ranks_are_refused():
    with pytest.raises(ValueError) as err:
        sharding.Rules.of({"heads": 3})
    assert "rule for logical axis 'heads' must be a mesh axis name, a tuple of names or None, got 3" in str(err.value)
    with pytest.raises(ValueError) as err:
        sharding.logical_to_spec(("heads", "head_dim"), sharding.make_mesh(4, 2), shape=(4, 16, 2))
    assert "name 2 axes but the array has shape (4, 16, 2)" in str(err.value)


# --- generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("data,tensor", MESHES)
def test_generate_on_a_mesh_matches_one_device(model, reference, data, tensor):
    mesh = sharding.make_mesh(data, tensor)
    got = run(model, mesh)
    greedy, sampled = np.s_[:, :2], np.s_[:, 2:]
    np.testing.assert_array_equal(np.asarray(got.tokens)[greedy], np.asarray(reference.tokens)[greedy])
    np.testing.assert_array_equal(np.asarray(got.tokens)[sampled], np.asarray(reference.tokens)[sampled])
    np.testing.assert_array_equal(got.lengths, reference.lengths)
    np.testing.assert_allclose(got.logprobs, reference.logprobs, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(got.sample_logprobs, reference.sample_logprobs, rtol=1e-5, atol=2e-5)
    # the sampled rows really are samples: same settings, different rollout keys, different text
    tokens = np.asarray(reference.tokens)
    assert all(not np.array_equal(tokens[g, 2], tokens[g, 3]) for g in range(len(PROMPTS)))
    assert isinstance(got.tokens, np.ndarray)                 # results are host arrays, on every host


@pytest.mark.parametrize("data,tensor", [(1, 2), (1, 8), (4, 2)])
def test_top_k_on_a_vocabulary_split_over_tensor_matches_one_device(model, data, tensor):
    """On a tensor axis alone, XLA's TopkDecomposer aborted the process compiling top-k's barrier."""
    mesh = sharding.make_mesh(data, tensor, devices=jax.devices()[:data * tensor])
    kw = dict(max_new_tokens=6, n=2, seed=3, sampler=Sampler(top_k=20))
    np.testing.assert_array_equal(engine.generate(model, PROMPTS, mesh=mesh, **kw).tokens,
                                  engine.generate(model, PROMPTS, **kw).tokens)


def test_bf16_data_parallel_matches_one_device(model):
    """bf16: splitting the rollouts over devices changes no sum, so the tokens are identical (a
    tensor axis would round partial matmul sums to bf16: docs/sharding.md)."""
    params = jax.tree.map(lambda x: x.astype("bfloat16"), model.params)
    bf16 = models.Model(models.preset("tiny", dtype="bfloat16"), params)
    want, got = run(bf16), run(bf16, sharding.make_mesh(8, 1))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


@pytest.mark.parametrize("data,tensor", MESHES)
def test_sharded_logits_match_one_device(model, data, tensor):
    mesh = sharding.make_mesh(data, tensor)
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=(8, 24)).astype(np.int32)
    want, _ = jax.jit(models.forward, static_argnums=0)(CONFIG, model.params, tokens)
    params = model.shard(mesh).params
    placed = sharding.place(tokens, ("rollouts", None), mesh)
    got, _ = jax.jit(models.forward, static_argnums=0)(CONFIG, params, placed)
    assert got.sharding.mesh == mesh
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data,tensor,kv_spec", [(4, 2, P("data", "tensor")), (2, 4, P("data"))])
def test_cache_and_state_shardings_follow_the_rules(model, data, tensor, kv_spec):
    mesh = sharding.make_mesh(data, tensor)
    placed = place_model(model, mesh)
    state = engine.start(placed, PROMPTS, capacity=8, n=N, mesh=mesh)
    sampler = row_sampler(None, state, mesh)
    cache_axes = state.cache.axes()
    for got, axes in zip(jax.tree.leaves(state.cache), jax.tree.leaves(cache_axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert got.sharding.spec == sharding.logical_to_spec(axes, mesh, shape=got.shape)
    assert all(x.sharding.spec == kv_spec for x in jax.tree.leaves((state.cache.k, state.cache.v)))
    assert state.cache.pstart.sharding.spec == P("data") and state.cache.length.sharding.spec == P("data")
    assert state.tokens.sharding.spec == P("data") and state.keys.sharding.spec == P("data")
    assert state.logits.sharding.spec == P("data", "tensor")
    assert sampler.temperature.sharding.spec == P("data")
    state = engine.decode(placed, state, max_new_tokens=8, mesh=mesh)
    assert all(x.sharding.spec == kv_spec for x in jax.tree.leaves(state.cache.k)) and state.tokens.sharding.spec == P("data")


def test_a_fake_model_without_shard_is_replicated():
    class Fake:                                  # same fields as a models.Model, no .shard
        config, tokenizer, forward = CONFIG, None, staticmethod(models.forward)
        params = models.init_params(CONFIG, jax.random.key(1))
    placed = place_model(Fake(), sharding.make_mesh(4, 2))
    assert all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8 for x in jax.tree.leaves(placed.params))


# --- loading into shards --------------------------------------------------------------------

@pytest.mark.parametrize("case", ["llama-gqa", "llama31", "qwen2", "qwen3", "gemma3"])
def test_load_hf_places_each_tensor_on_its_shards(tmp_path, case):
    write_hf(tmp_path, case)
    whole = models.load(tmp_path)
    mesh = sharding.make_mesh(2, 4)
    sharded = models.load(tmp_path, mesh=mesh)
    want = sharding.logical_to_sharding(models.param_axes(whole.config), mesh, shapes=whole.params)
    for got, ref, target in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(whole.params), jax.tree.leaves(want)):
        assert got.sharding.spec == target.spec and got.sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        for shard in got.addressable_shards:
            np.testing.assert_array_equal(shard.data, np.asarray(ref)[shard.index])


def test_load_rollax_restores_into_shards(tmp_path, model):
    model.save(tmp_path / "ckpt")
    mesh = sharding.make_mesh(4, 2)
    got = models.load(tmp_path / "ckpt", mesh=mesh)
    assert all(layer["wq"].sharding.spec == P(None, "tensor") for layer in got.params["layers"])
    assert all(layer["wk"].sharding.spec == P(None, "tensor") for layer in got.params["layers"])
    assert got.params["embed"].sharding.spec == P("tensor")
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class Spy(np.ndarray):
    """An array that counts the elements read through indexing (as a memory map would read them)."""
    read = 0

    def __getitem__(self, index):
        out = np.asarray(self)[index]
        Spy.read += out.size
        return out


@pytest.mark.parametrize("key,hf_shape,convert,block", [
    ("wq", (4 * 16, 64), lambda x: x.T.reshape(64, 4, 16), np.s_[0:64, 1:2, 0:16]),
    ("wo", (64, 4 * 16), lambda x: x.T.reshape(4, 16, 64), np.s_[2:4, 0:16, 0:64]),
    ("w_up", (128, 64), lambda x: x.T, np.s_[0:64, 32:64]),
    ("embed", (256, 64), lambda x: x, np.s_[64:128, 0:64]),
    ("bk", (2 * 16,), lambda x: x.reshape(2, 16), np.s_[1:2, 0:16]),
])
def test_read_block_reads_only_its_block(key, hf_shape, convert, block):
    x = np.random.default_rng(0).normal(size=hf_shape).astype(np.float32)
    shape = convert(x).shape
    Spy.read = 0
    got = read_block(key, x.view(Spy), block, shape, convert)
    np.testing.assert_array_equal(got, convert(x)[block])
    assert Spy.read == got.size < x.size


# --- multi-host helpers on one process -------------------------------------------------------

def test_initialize_is_a_no_op_on_one_host(monkeypatch):
    for name in ("ROLLAX_COORDINATOR", "ROLLAX_NUM_PROCESSES", "ROLLAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize() is False
    assert sharding.initialize("127.0.0.1:1234", num_processes=1, process_id=0) is False
    assert jax.process_count() == 1
    assert sharding.gather_prompts([[1, 2], np.array([3])]) == ([[1, 2], [3]], slice(0, 2))


@pytest.mark.parametrize("prompts,message", [
    (["hello"], "prompt 0 is a string; gather_prompts takes token ids"),
    ([[1], [1.5, 2]], "prompt 1 must be a flat list of integer token ids"),     # int() would truncate it
    ([[[1, 2], [3]]], "prompt 0 must be a flat list of integer token ids"),
    ([[2 ** 31]], "prompt 0 has token ids outside [0, 2**31)"),                 # the int32 table would wrap it
    ([[-1]], "prompt 0 has token ids outside [0, 2**31)"),
])
def test_gather_prompts_refuses_what_is_not_token_ids(prompts, message):
    with pytest.raises(ValueError) as err:
        sharding.gather_prompts(prompts)
    assert message in str(err.value)


@pytest.mark.parametrize("kwargs,env,message", [
    (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), {}, "process_id must be in [0, 2), got 2"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), {}, "coordinator address must be 'host:port'"),
    (dict(), {"ROLLAX_NUM_PROCESSES": "two"}, "ROLLAX_NUM_PROCESSES must be an integer, got 'two'"),
])
def test_initialize_refuses_bad_arguments(monkeypatch, kwargs, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        sharding.initialize(**kwargs)
    assert message in str(err.value)


def test_replicate_compiles_once_per_mesh():
    mesh = sharding.make_mesh(4, 2)
    x = sharding.place(np.arange(16.0).reshape(8, 2), ("rollouts", None), mesh)
    sharding.replicate({"a": x}, mesh)
    compiled = sharding.rules._replicator(mesh)._cache_size()
    for _ in range(3):
        out = sharding.replicate({"a": x}, sharding.make_mesh(4, 2))    # an equal mesh reuses it too
    assert sharding.rules._replicator(mesh)._cache_size() == compiled >= 1
    assert out["a"].sharding.is_fully_replicated
    np.testing.assert_array_equal(out["a"], np.arange(16.0).reshape(8, 2))


def test_bench_best_of_n_on_meshes(capsys):
    from scripts import bench
    bench.main(["best-of-n", "--config", "tiny", "--mesh", "data=2,tensor=1", "data=2,tensor=2", "--prompts", "2",
                "--n", "2", "--prompt-len", "5", "--new-tokens", "3", "--repeats", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["mesh"], r["devices"]) for r in rows] == [(None, 1), ({"data": 2, "tensor": 1}, 2),
                                                          ({"data": 2, "tensor": 2}, 4)]
    assert all(r["same_tokens"] and r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["time_vs_one_device"] == 1.0
