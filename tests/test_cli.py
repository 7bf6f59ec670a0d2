"""The command-line entry points, run as real processes."""
import subprocess
import sys
from pathlib import Path

import pytest

import engine
import models
from sampling import Sampler
from tests.conftest import chain_model, write_hf
from tests.test_checkpoint import _tokenizer_json

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generate_cli_streams_what_the_engine_generates(tmp_path):
    write_hf(tmp_path, "llama-gqa")
    _tokenizer_json(tmp_path)
    model = models.load(tmp_path)
    sampler = Sampler(temperature=0.9, top_p=0.9)
    want = engine.generate(model, ["the cat"], max_new_tokens=12, sampler=sampler, seed=4).text[0][0]
    out = run("scripts.generate", "--model", str(tmp_path), "--prompt", "the cat", "--max-new-tokens", "12",
              "--temperature", "0.9", "--top-p", "0.9", "--seed", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the cat" + want + "\n"


def _byte_level(path):
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                      show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path / "tokenizer.json"))
    return models.HFTokenizer(path / "tokenizer.json", bos_id=1, eos_id=2, pad_id=0)


def _sentencepiece(path):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_prefix=str(path / "sp"), vocab_size=40,
                                   model_type="bpe", pad_id=3, bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    return models.SentencePieceTokenizer(path / "sp.model")


TEXT = ["the cat sat on the mat", "a dog ran in the park", "12 + 34 = 46", "hello world"] * 50


@pytest.mark.parametrize("make, prompt, rest", [
    (_sentencepiece, "the", " cat"),   # decoded alone, "▁cat" lost its space: "thecat"
    (_byte_level, "a", "😀b"),          # the emoji is 4 byte tokens: the stream printed U+FFFD, then nothing
])
def test_generate_prints_the_text_as_it_reads_after_the_prompt(tmp_path, make, prompt, rest):
    tokenizer = make(tmp_path)
    ids = tokenizer.encode(prompt + rest, bos=False)
    assert ids[:len(tokenizer.encode(prompt, bos=False))] == tokenizer.encode(prompt, bos=False)
    model = chain_model(tokenizer, ids + [tokenizer.eos_id], tokenizer.vocab_size)
    assert engine.generate(model, [prompt], max_new_tokens=8).text == [[rest]]
    model.save(tmp_path / "m")
    out = run("scripts.generate", "--model", str(tmp_path / "m"), "--prompt", prompt, "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout == prompt + rest + "\n"


def test_generate_cli_reports_bad_settings(tmp_path):
    write_hf(tmp_path, "llama-gqa")
    _tokenizer_json(tmp_path)
    out = run("scripts.generate", "--model", str(tmp_path), "--prompt", "hi", "--top-p", "0")
    assert out.returncode == 2
    assert "top_p must be in (0, 1]" in out.stderr and "Traceback" not in out.stderr
    out = run("scripts.generate", "--model", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0")
    assert out.returncode == 2 and out.stdout == ""        # refused before the prompt is echoed
    assert "max_new_tokens must be an integer >= 1" in out.stderr and "Traceback" not in out.stderr


def test_every_script_reports_a_refused_input_as_one_error_line():
    """One real process (the ``__main__`` path through ``scripts.cli``) per script, each refused at once."""
    for args, message in [
        (("scripts.bench", "decode", "--config", "bogus", "--batch", "1"), "unknown preset 'bogus'"),
        (("scripts.bench", "decode", "--repeats", "0"), "--repeats must be positive, got 0"),   # printed Infinity
        (("scripts.demo", "--problems", "0"), "--samples and --problems must be positive"),
        (("scripts.meta_table", "--budgets", "0"), "--budgets must be positive"),
    ]:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message in out.stderr
        assert "Traceback" not in out.stderr


def test_convert_writes_a_rollax_checkpoint_that_loads_back_the_same(tmp_path):
    import jax
    import numpy as np
    src = tmp_path / "hf"
    write_hf(src, "qwen2")
    _tokenizer_json(src)
    out = run("scripts.convert", str(src), str(tmp_path / "rollax"), "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "qwen2" in out.stdout and "bfloat16" in out.stdout and "HFTokenizer" in out.stdout
    want, got = models.load(src, dtype="bfloat16"), models.load(tmp_path / "rollax")
    assert got.config == want.config
    jax.tree.map(np.testing.assert_array_equal, want.params, got.params)
    assert got.tokenizer.encode("the cat") == want.tokenizer.encode("the cat")
    out = run("scripts.convert", str(tmp_path / "nothing"), str(tmp_path / "x"))
    assert out.returncode == 2 and "error: no model directory" in out.stderr
