"""Checkpoints (HF safetensors, sharded; rollax/orbax) and tokenizers."""
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
import models
from models import safetensors, zoo

ROOT = Path(__file__).resolve().parents[1]


def _copy_checkpoint(hf_checkpoint, tmp_path):
    _, src, _ = hf_checkpoint
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def llama_dir(tmp_path):
    from tests.conftest import write_hf
    write_hf(tmp_path, "llama-gqa")
    return tmp_path


def test_each_family_saved_by_rollax_loads_back_the_same(hf_checkpoint, tmp_path):
    """The family switches (per-layer windows, soft caps, RoPE bases, ...) and the extra norms survive
    rollax's own checkpoint: the same config, weights and logits."""
    _, path, _ = hf_checkpoint
    model = models.load(path)
    model.save(tmp_path / "ckpt")
    back = models.load(tmp_path / "ckpt")
    assert back.config == model.config and type(back.config) is type(model.config)
    assert models.checkpoint.tensor_hashes(back.params) == models.checkpoint.tensor_hashes(model.params)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, size=(1, 20)))
    np.testing.assert_array_equal(models.forward(back.config, back.params, tokens)[0],
                                  models.forward(model.config, model.params, tokens)[0])


def test_sharded_safetensors_load_like_single_file(llama_dir, tmp_path):
    tensors = safetensors.read(llama_dir / "model.safetensors")
    names = sorted(tensors)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(llama_dir / "config.json", sharded)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, part in halves.items():
        safetensors.write(sharded / fname, {n: np.asarray(tensors[n]) for n in part})
    index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = models.load(llama_dir), models.load(sharded)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_missing_tensor_is_named(llama_dir):
    tensors = safetensors.read(llama_dir / "model.safetensors")
    kept = {k: np.array(v) for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    safetensors.write(llama_dir / "model.safetensors", kept)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "missing tensors ['model.layers.1.mlp.up_proj.weight']" in str(err.value)


def test_unexpected_tensor_is_named(llama_dir):
    tensors = {k: np.array(v) for k, v in safetensors.read(llama_dir / "model.safetensors").items()}
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    safetensors.write(llama_dir / "model.safetensors", tensors)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "unexpected tensors ['model.extra.weight']" in str(err.value)


def test_misshaped_tensor_names_both_shapes(llama_dir):
    tensors = {k: np.array(v) for k, v in safetensors.read(llama_dir / "model.safetensors").items()}
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    safetensors.write(llama_dir / "model.safetensors", tensors)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "model.layers.0.self_attn.k_proj.weight has shape (16, 64), expected (32, 64)" in str(err.value)


def test_pickle_only_directory_is_refused(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    (llama_dir / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "only pickle weights (pytorch_model.bin)" in str(err.value)
    assert "never unpickles" in str(err.value)


def _damage(path, what):
    """Damage the checkpoint in ``path`` as ``what`` says."""
    single = path / "model.safetensors"
    if what == "truncated weights":
        single.write_bytes(single.read_bytes()[: single.stat().st_size // 2])
    elif what == "two-byte weights":
        single.write_bytes(b"ab")
    elif what == "header length past the end":
        single.write_bytes(b"\xff" * 8 + single.read_bytes()[8:])
    elif what == "config.json not JSON":
        (path / "config.json").write_text("{bad")
    elif what == "config.json a list":
        (path / "config.json").write_text("[1, 2]")
    elif what == "index without weight_map":
        single.rename(path / "part-1.safetensors")
        (path / "model.safetensors.index.json").write_text("{}")
    elif what == "index naming an absent shard":
        single.rename(path / "part-1.safetensors")
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "part-2.safetensors"}}))
    elif what.startswith("header entry"):           # a header that parses, with one entry malformed
        n = int.from_bytes(single.read_bytes()[:8], "little")
        header = json.loads(single.read_bytes()[8:8 + n])
        entry = header["model.norm.weight"]
        header["model.norm.weight"] = {"no dtype": {k: v for k, v in entry.items() if k != "dtype"},
                                       "float offsets": {**entry, "data_offsets": [float(x) for x in
                                                                                  entry["data_offsets"]]},
                                       "string shape": {**entry, "shape": "64"}}[what.split(": ")[1]]
        blob = json.dumps(header).encode().ljust(n)
        single.write_bytes(len(blob).to_bytes(8, "little") + blob + single.read_bytes()[8 + n:])
    elif what == "garbage tokenizer.model":
        (path / "tokenizer.model").write_bytes(b"garbage")
    elif what == "empty tokenizer.json":
        (path / "tokenizer.json").write_text("{}")


@pytest.mark.parametrize("what, message", [
    ("truncated weights", "the file is truncated or damaged"),
    ("two-byte weights", "model.safetensors is not a safetensors file"),
    ("header length past the end", "model.safetensors is not a safetensors file"),
    ("config.json not JSON", "config.json: Expecting property name"),
    ("config.json a list", "config.json must hold a JSON object, got list"),
    ("index without weight_map", "model.safetensors.index.json has no weight_map"),
    ("index naming an absent shard", "names shard files that are not in"),
    ("garbage tokenizer.model", "cannot read the tokenizer"),
    # raw KeyError / TypeError / numpy errors before
    ("header entry: no dtype", "tensor model.norm.weight: malformed header entry"),
    ("header entry: float offsets", "tensor model.norm.weight: malformed header entry"),
    ("header entry: string shape", "tensor model.norm.weight: malformed header entry"),
    ("empty tokenizer.json", "cannot read the tokenizer"),
])
def test_damaged_checkpoint_files_are_named(llama_dir, what, message):
    _damage(llama_dir, what)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert message in str(err.value)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "nope")
    assert "no model directory" in str(err.value)


@pytest.mark.parametrize("dtype", ["int8", "bogus"])
def test_a_dtype_that_is_not_floating_point_is_refused(llama_dir, dtype):
    with pytest.raises(ValueError) as err:                  # int8 weights would be cast, silently garbage
        models.load(llama_dir, dtype=dtype)
    assert f"dtype must be a floating-point type (float32, bfloat16, float16), got {dtype!r}" in str(err.value)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rollax_checkpoint_round_trip_is_bit_exact(llama_dir, tmp_path, dtype):
    model = models.load(llama_dir, dtype=dtype)
    model.save(tmp_path / "rollax")
    back = models.load(tmp_path / "rollax")
    assert back.config == model.config
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(back.params)):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))


def _save_unhashed(config, params, path):
    """A checkpoint as rollax wrote them before it recorded hashes (and before save checked the params)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "params", params)
    (path / "rollax.json").write_text(json.dumps({"family": config.family, "config": dataclasses.asdict(config)}))


def test_a_rollax_checkpoint_with_stacked_layers_is_refused(llama_dir, tmp_path):
    model = models.load(llama_dir)
    layers = model.params["layers"]
    stacked = {k: jnp.stack([layer[k] for layer in layers]) for k in layers[0]}   # the layout before 2026-11-29
    _save_unhashed(model.config, {**model.params, "layers": stacked}, tmp_path / "old")
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "old", verify=False)
    assert "do not match rollax.json's config" in str(err.value) and "stack the layers" in str(err.value)


def test_a_checkpoint_without_hashes_loads_only_without_verify(llama_dir, tmp_path):
    model = models.load(llama_dir)
    _save_unhashed(model.config, model.params, tmp_path / "old")
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "old")
    assert "records no SHA-256 of the weights" in str(err.value) and "verify=False" in str(err.value)
    old = models.load(tmp_path / "old", verify=False)
    old.save(tmp_path / "old")                                  # saved again: hashes recorded
    jax.tree.map(np.testing.assert_array_equal, models.load(tmp_path / "old").params, model.params)


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 200, "do not match rollax.json's config: ['embed']: saved (97, 64) float32, config (200, 64) float32"),
    ("intermediate", 300, "['layers'][0]['w_gate']: saved (64, 112) float32, config (64, 300) float32"),
    ("dtype", "bfloat16", "['embed']: saved (97, 64) float32, config (97, 64) bfloat16"),
    ("foo", 1, "rollax.json: unknown config fields ['foo']"),
])
def test_a_rollax_checkpoint_whose_config_disagrees_with_its_weights_is_refused(llama_dir, tmp_path, field, value,
                                                                                message):
    models.load(llama_dir).save(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "rollax.json").read_text())
    meta["config"][field] = value
    (tmp_path / "r" / "rollax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:   # orbax may restore saved shapes whatever the config says
        models.load(tmp_path / "r")
    assert message in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("vocab_size"), "rollax.json: bad config: LlamaConfig.__init__() missing 1 required"),
    (lambda c: c.update(eos_ids=2), "eos_ids must be a list of token ids, got 2"),         # raw TypeErrors before
    (lambda c: c.update(rope_scaling=8.0), "rope_scaling must be None or (factor, low, high"),
    (lambda c: c.update(tie_embeddings="no"), "tie_embeddings must be True or False"),
])
def test_a_damaged_rollax_json_is_refused_by_name(llama_dir, tmp_path, edit, message):
    models.load(llama_dir).save(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "rollax.json").read_text())
    edit(meta["config"])
    (tmp_path / "r" / "rollax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "r")
    assert message in str(err.value)


def _flip_byte(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _biggest_file(directory):
    return max((f for f in directory.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # orbax's abandoned reads
def test_damaged_saved_weights_are_a_value_error(llama_dir, tmp_path):
    models.load(llama_dir).save(tmp_path / "r")
    big = _biggest_file(tmp_path / "r" / "params")          # the array data
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "r")                         # its hash, before orbax reads it
    assert f"{big.relative_to(tmp_path / 'r').as_posix()} differ from their recorded SHA-256" in str(err.value)
    with pytest.raises(ValueError, match="cannot read the saved weights, the checkpoint is damaged"):
        models.load(tmp_path / "r", verify=False)           # a bare tensorstore Exception before
    shutil.rmtree(tmp_path / "r" / "params")
    (tmp_path / "r" / "params").mkdir()
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "r", verify=False)
    assert "files the checkpoint was saved with are missing: params/" in str(err.value)
    meta = json.loads((tmp_path / "r" / "rollax.json").read_text())
    del meta["sha256"]                                      # as written before rollax recorded hashes
    (tmp_path / "r" / "rollax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no readable weight metadata in params/"):
        models.load(tmp_path / "r", verify=False)          # "do not match rollax.json's config ... stack the layers"
    gc.collect()                                           # orbax's abandoned coroutines go here, not in a later test


def test_a_flipped_byte_in_the_saved_weights_is_refused(llama_dir, tmp_path):
    model = models.load(llama_dir)
    model.save(tmp_path / "r")
    big = _biggest_file(tmp_path / "r" / "params")
    _flip_byte(big)
    with pytest.raises(ValueError) as err:                  # loaded, with changed weights, before
        models.load(tmp_path / "r")
    assert "differ from their recorded SHA-256; the checkpoint is damaged" in str(err.value)
    changed = models.load(tmp_path / "r", verify=False)     # what verify=False would have given
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(changed.params), jax.tree.leaves(model.params)))


def test_each_weight_is_checked_against_its_recorded_hash(llama_dir, tmp_path):
    models.load(llama_dir).save(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "rollax.json").read_text())
    meta["sha256"]["tensors"]["['layers'][1]['wq']"] = "0" * 64
    (tmp_path / "r" / "rollax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        models.load(tmp_path / "r")
    assert "1 weights differ from their recorded SHA-256 (['layers'][1]['wq'])" in str(err.value)
    models.load(tmp_path / "r", verify=False)


def test_a_deleted_tokenizer_file_is_refused(tmp_path):
    shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / "m")
    (tmp_path / "m" / "tokenizer.model").unlink()
    for verify in (True, False):                            # loaded without a tokenizer before
        with pytest.raises(ValueError) as err:
            models.load(tmp_path / "m", verify=verify)
        assert "files the checkpoint was saved with are missing: tokenizer.model" in str(err.value)


def test_a_damaged_checkpoint_is_one_error_line_from_a_script(tmp_path):
    shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / "m")
    (damaged,) = (tmp_path / "m" / "params" / "d").iterdir()   # orbax's metadata: two asyncio tracebacks before
    _flip_byte(damaged)
    out = subprocess.run([sys.executable, "-m", "scripts.convert", str(tmp_path / "m"), str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"error: {tmp_path / 'm'}: params/d/{damaged.name} differ from their "
                                       "recorded SHA-256; the checkpoint is damaged"]


def test_numpy_numbers_in_a_config_are_saved_as_json(llama_dir, tmp_path):
    model = models.load(llama_dir)
    config = dataclasses.replace(model.config, vocab_size=np.int64(97), rope_theta=np.float32(1e4),
                                 eos_ids=[np.int64(2)])
    assert type(config.vocab_size) is int and config.eos_ids == (2,) and hash(config)   # a list was unhashable
    models.Model(config, model.params).save(tmp_path / "r")   # "int64 is not JSON serializable" before
    assert models.load(tmp_path / "r").config == model.config


def test_saving_a_tokenizer_without_a_file_is_refused(llama_dir, tmp_path):
    class Bytes(models.Tokenizer):
        bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 97
    with pytest.raises(ValueError, match="has no file to save"):   # it was dropped silently
        models.Model(models.load(llama_dir).config, models.load(llama_dir).params, Bytes()).save(tmp_path / "r")


def test_sentencepiece_decodes_ids_past_its_vocabulary_as_nothing(tmp_path):
    tok = _sentencepiece(tmp_path)                          # 40 pieces; a model vocabulary may be padded past it
    assert tok.decode([7, 45, 8]) == tok.decode([7, 8])      # a raw IndexError in engine.generate before


def test_saving_writes_the_tokenizer_load_reads_back(llama_dir, tmp_path):
    model = models.load(llama_dir)
    json_tok, sp_tok = _tokenizer_json(tmp_path), _sentencepiece(tmp_path)   # sp.model: not a name load reads
    out = tmp_path / "out"
    for tokenizer, want in [(json_tok, models.HFTokenizer), (sp_tok, models.SentencePieceTokenizer), (None, None)]:
        models.Model(model.config, model.params, tokenizer).save(out)   # over the previous save each time
        back = models.load(out).tokenizer
        assert type(back) is type(tokenizer) if want else back is None
        if want:
            assert back.encode("the cat ran 12") == tokenizer.encode("the cat ran 12")


def test_bf16_safetensors_are_read(llama_dir):
    import torch
    import transformers
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16)
    ref.save_pretrained(llama_dir, safe_serialization=True)
    model = models.load(llama_dir, dtype=jnp.bfloat16)
    want = ref.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(model.params["embed"].astype(jnp.float32)), want)


TEXT = ["the cat sat on the mat", "a dog ran in the park", "12 + 34 = 46", "hello world"] * 50


def _sentencepiece(tmp_path):
    import sentencepiece as spm
    prefix = tmp_path / "sp"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_prefix=str(prefix), vocab_size=40,
                                   model_type="bpe", split_digits=True, pad_id=3, bos_id=1, eos_id=2,
                                   unk_id=0, minloglevel=2)
    return models.SentencePieceTokenizer(f"{prefix}.model")


def _tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers, decoders
    tok = Tokenizer(tm.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    return models.HFTokenizer(tmp_path / "tokenizer.json", bos_id=1, eos_id=2, pad_id=0)


@pytest.mark.parametrize("make", [_sentencepiece, _tokenizer_json])
def test_tokenizers_round_trip(tmp_path, make):
    tok = make(tmp_path)
    ids = tok.encode("the cat ran 12")
    assert ids[0] == tok.bos_id == 1 and tok.eos_id == 2
    assert tok.decode(ids[1:]) == "the cat ran 12"
    assert tok.encode("the cat", bos=False) == ids[1:len(tok.encode("the cat"))]


def test_string_prompts_through_a_loaded_tokenizer(llama_dir):
    _tokenizer_json(llama_dir)
    model = models.load(llama_dir)
    assert isinstance(model.tokenizer, models.HFTokenizer)
    out = engine.generate(model, ["the cat", "hello world"], max_new_tokens=5)
    ids = [model.tokenizer.encode(t) for t in ["the cat", "hello world"]]
    ref = engine.generate(model, ids, max_new_tokens=5)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert len(out.text) == 2 and all(isinstance(t, str) for t in out.text[0])


def test_tokenizer_larger_than_model_vocabulary_is_refused(llama_dir):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers
    tok = Tokenizer(tm.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(llama_dir / "tokenizer.json"))
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "tokenizer has" in str(err.value) and "vocab_size 97" in str(err.value)


# --- atomic saves ----------------------------------------------------------------------------

KILL_POINTS = [("os", "mkdir"), ("os", "rename"), ("os", "unlink"), ("os", "rmdir"), ("shutil", "copyfile"),
               ("pathlib.Path", "write_text"), ("models.checkpoint", "_exchange"),
               ("orbax.checkpoint.StandardCheckpointer", "save")]
SAVE_AND_DIE = """
import sys
import models
from tests.test_checkpoint import _arm
model = models.load(sys.argv[2])
_arm(int(sys.argv[1]), setattr)
model.save(sys.argv[3])
"""


def _arm(kill_at: int, patch) -> list[str]:
    """Wrap the file-system steps of a save (``KILL_POINTS``, with ``patch(owner, name, fn)``) to record
    each call's name, and SIGKILL this process at call number ``kill_at`` (1-based; 0: never)."""
    import pydoc
    import signal
    calls = []
    for owner_name, name in KILL_POINTS:
        owner = pydoc.locate(owner_name)
        def wrapped(*args, _fn=getattr(owner, name), _name=f"{owner_name}.{name}", **kwargs):
            calls.append(_name)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return _fn(*args, **kwargs)
        patch(owner, name, wrapped)
    return calls


def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    old, new = models.load("tiny-arith"), models.load("tiny-arith-rm")
    shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / "dry")
    with monkeypatch.context() as m:                        # the steps of this save, in order
        calls = _arm(0, m.setattr)
        new.save(tmp_path / "dry")
    step = lambda name: calls.index(name) + 1
    swap = step("models.checkpoint._exchange")
    # first step, orbax writing, rollax.json, the exchange, the step after it (deleting the old), the last
    kill_at = sorted({1, step("orbax.checkpoint.StandardCheckpointer.save"), step("pathlib.Path.write_text"), swap,
                      swap + 1, len(calls)})
    procs = {}
    for k in kill_at:                                       # a process saving over a checkpoint, killed at step k
        shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / f"k{k}" / "m")
        procs[k] = subprocess.Popen([sys.executable, "-c", SAVE_AND_DIE, str(k), "tiny-arith-rm",
                                     str(tmp_path / f"k{k}" / "m")], cwd=ROOT, stderr=subprocess.PIPE)
    for k, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == -9, (k, calls[k - 1], err.decode()[-2000:])
        got = models.load(tmp_path / f"k{k}" / "m")        # the whole directory at its name, hashes checked
        want = old if k <= swap else new                    # before the exchange the old one, after it the new
        assert got.config == want.config, (k, calls[k - 1])
        jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
        assert got.tokenizer is not None and (tmp_path / f"k{k}" / "m" / "metrics.json").exists()
        assert all(p.name == "m" or p.name.startswith(".m.partial-") for p in (tmp_path / f"k{k}").iterdir())


def test_convert_over_its_own_source_keeps_it_whole(tmp_path):
    shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / "m")
    out = subprocess.run([sys.executable, "-m", "scripts.convert", str(tmp_path / "m"), str(tmp_path / "m"),
                          "--dtype", "bfloat16"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got, want = models.load(tmp_path / "m"), models.load("tiny-arith", dtype="bfloat16")
    assert got.config == want.config and got.tokenizer.encode("Q: 1+2=?") == want.tokenizer.encode("Q: 1+2=?")
    jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"] and (tmp_path / "m" / "metrics.json").exists()


def test_save_refuses_to_replace_what_is_not_a_rollax_checkpoint(llama_dir, tmp_path):
    model = models.load(llama_dir)
    for target in (llama_dir, llama_dir / "config.json"):   # a Hugging Face checkpoint, a file
        before = sorted(p.name for p in llama_dir.iterdir())
        with pytest.raises(ValueError) as err:              # was written into (or over) before
            model.save(target)
        assert f"{target} exists and is not a rollax checkpoint" in str(err.value)
        assert sorted(p.name for p in llama_dir.iterdir()) == before
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")
    assert models.load(tmp_path / "empty").config == model.config


def test_save_refuses_params_that_do_not_match_the_config(llama_dir, tmp_path):
    model = models.load(llama_dir)
    wider = dataclasses.replace(model.config, intermediate=128)
    with pytest.raises(ValueError) as err:                  # saved, then refused at load, before
        models.Model(wider, model.params).save(tmp_path / "r")
    assert "the params do not match the config (6 weights" in str(err.value)
    assert "['layers'][0]['w_down']: params ((112, 64), 'float32'), config ((128, 64), 'float32')" in str(err.value)
    assert not (tmp_path / "r").exists()


# --- what load refuses before building anything ------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(path=None), "path must be a model directory, a .gguf file, a shipped model's name or a hub id, got None"),
    (dict(path="org/name", revision=1), "revision must be a branch, tag or commit of a hub id (a string) or None"),
    (dict(path="tiny-arith", mesh="x"), "mesh must be a jax.sharding.Mesh (sharding.make_mesh(...)) or None, got 'x'"),
    (dict(path="tiny-arith", verify=1), "verify must be True or False, got 1"),
])
def test_load_refuses_arguments_of_the_wrong_type(kwargs, message):
    with pytest.raises(ValueError) as err:                  # TypeError / AttributeError before
        models.load(**kwargs)
    assert message in str(err.value)


def test_a_config_too_large_for_the_memory_is_refused_before_anything_is_built(llama_dir):
    import time
    config = json.loads((llama_dir / "config.json").read_text())
    # 1,000,000 layers cost 45 s and 4.8 GiB before their ValueError; 10 times that is refused on any machine
    (llama_dir / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10_000_000}))
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert time.perf_counter() - t0 < 1
    assert ("config.json: the config gives 339,200,012,480 parameters (10000000 layers, hidden 64, intermediate 112, "
            "vocabulary 97), 1,263.6 GiB in float32; the memory is") in str(err.value)


def test_deeply_nested_json_is_a_value_error(llama_dir):
    (llama_dir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as err:                  # RecursionError before
        models.load(llama_dir)
    assert "cannot read" in str(err.value) and "config.json: maximum recursion depth exceeded" in str(err.value)


# --- safetensors headers, checked as the safetensors library checks them ----------------------

def _edit_header(path, edit):
    """Rewrite ``path``'s safetensors header through ``edit(header)``, keeping the data as it is."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


def _swap(a, b):
    def edit(header):
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
    return edit


def _shift(name, by):
    def edit(header):
        header[name]["data_offsets"] = [x + by for x in header[name]["data_offsets"]]
    return edit


def _drop_first(header):
    del header[min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])]


@pytest.mark.parametrize("edit, message", [
    (_swap("model.norm.weight", "model.embed_tokens.weight"), "model.norm.weight spans 24832 bytes, but F32 [64] "
                                                              "takes 256; the file is truncated or damaged"),
    # accepted before: a tensor reading 8 bytes of the one before it (and leaving 8 unread)
    (_shift("model.norm.weight", -8), "offsets that overlap or leave a gap; the file is damaged"),
    (lambda h: h["model.norm.weight"].update(data_offsets=h["model.norm.weight"]["data_offsets"][::-1]),
     "offsets that overlap or leave a gap"),
    (_drop_first, "offsets that overlap or leave a gap"),                             # unread bytes
    (lambda h: h.update(__metadata__={"format": 1}), "__metadata__ must map names to strings"),
])
def test_safetensors_offsets_are_checked_as_the_library_does(llama_dir, edit, message):
    from safetensors.numpy import load_file                # the library
    single = llama_dir / "model.safetensors"
    _edit_header(single, edit)
    with pytest.raises(Exception):                          # the library refuses it too
        load_file(single)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert message in str(err.value)


def test_a_swap_of_equal_sized_tensors_is_a_valid_file(llama_dir):
    """The format cannot tell: the library reads it too. (rollax's own checkpoints record each weight's hash.)"""
    from safetensors.numpy import load_file                # the library
    a, b = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
    _edit_header(llama_dir / "model.safetensors", _swap(a, b))
    tensors = load_file(llama_dir / "model.safetensors")
    np.testing.assert_array_equal(safetensors.read(llama_dir / "model.safetensors")[a], tensors[a])


def test_trailing_bytes_after_the_tensors_are_refused(llama_dir):
    single = llama_dir / "model.safetensors"
    single.write_bytes(single.read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError) as err:
        models.load(llama_dir)
    assert "the tensors take" in str(err.value) and "the file is truncated or damaged" in str(err.value)


def test_a_float_tensor_relabelled_as_int_is_refused(llama_dir):
    _edit_header(llama_dir / "model.safetensors", lambda h: h["model.norm.weight"].update(dtype="I32"))
    with pytest.raises(ValueError) as err:                  # its bits were cast to floats, before
        models.load(llama_dir)
    assert "weights must be floating point, got model.norm.weight (int32)" in str(err.value)
