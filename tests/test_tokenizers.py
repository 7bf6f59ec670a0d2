"""rollax's tokenizers give the ids and text ``transformers.AutoTokenizer`` gives for the same checkpoint
directory: tokenizers built in the shapes real models ship (Qwen's BOS-less byte-level BPE, Llama 3's
``<|begin_of_text|>`` template, Llama 2's sentencepiece with byte fallback, Gemma's ``<bos>`` = 2)."""
import json
import types

import pytest

from models.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "12 + 34 = 46", "hello world", "Héllo wörld, café",
          "naïve résumé", "日本語のテキスト", "中文字符", "emoji 🙂 👍", "  two leading spaces", "line one\nline two",
          "Q: 1+2=?\nA: 3", "tabs\tand  double  spaces"] * 20

TEXTS = ["hello world", " leading space", "  two", "Héllo wörld, café", "日本語のテキスト 中文", "emoji 🙂👍 ok",
         "line one\nline two\n", "\n\nnewlines first", "Q: 12+7=?\n", "", "unseen Ωmega ∑ symbols", "tail space ",
         # special tokens written as text (as chat templates write them) are those tokens, the text after them
         # has no dummy-prefix space; each tokenizer has some of them
         "<s>[INST] hi [/INST] ok</s><s>", " <s> a</s>b", "x<unk>y", "<bos><start_of_turn>user\nhi<end_of_turn>\n",
         "<|im_start|>user\n hi<|im_end|>\n", "<|begin_of_text|><|eot_id|> tail"]


QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _byte_bpe(directory, specials, template=None, split=None):
    """Byte-level BPE; ``split``: a regex pre-split and NFC, as Qwen2's tokenizer.json has."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    level = processors.ByteLevel(trim_offsets=False)
    tok.post_processor = level if template is None else processors.Sequence([
        level, processors.TemplateProcessing(single=f"{template} $A", pair=f"{template} $A {template} $B",
                                             special_tokens=[(template, tok.token_to_id(template))])])
    tok.save(str(directory / "tokenizer.json"))
    return tok


def qwen(directory):
    """Qwen2.5-like: byte-level BPE, a post-processor that adds nothing, no BOS in tokenizer_config."""
    tok = _byte_bpe(directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=QWEN_SPLIT)
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    end = tok.token_to_id("<|endoftext|>")
    return dict(bos_id=end, eos_ids=(end,), pad_id=end), tok.token_to_id("<|im_start|>")


def llama3(directory):
    """Llama-3-like: byte-level BPE whose TemplateProcessing post-processor adds <|begin_of_text|>."""
    tok = _byte_bpe(directory, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "<|begin_of_text|>")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    bos, eot = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|eot_id|>")
    return dict(bos_id=bos, eos_ids=(eot,), pad_id=eot), bos


def _sentencepiece(directory, **kw):
    import sentencepiece as spm
    (directory / "corpus.txt").write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(input=str(directory / "corpus.txt"), model_prefix=str(directory / "tokenizer"),
                                   vocab_size=320, model_type="bpe", byte_fallback=True, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   character_coverage=1.0, minloglevel=2, **kw)
    (directory / "corpus.txt").unlink()
    (directory / "tokenizer.vocab").unlink()


def llama2(directory):
    """Llama-2-like sentencepiece: BPE with byte fallback, <unk> 0, <s> 1, </s> 2, a dummy prefix."""
    _sentencepiece(directory, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return dict(bos_id=1, eos_ids=(2,), pad_id=0), 1


def gemma(directory):
    """Gemma-like sentencepiece: <pad> 0, <eos> 1, <bos> 2, <unk> 3, the turn markers user-defined pieces,
    no dummy prefix, byte fallback."""
    _sentencepiece(directory, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                   bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False,
                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    return dict(bos_id=2, eos_ids=(1,), pad_id=0), 2


@pytest.fixture(params=[qwen, llama3, llama2, gemma])
def pair(request, tmp_path):
    config, special = request.param(tmp_path)
    ours = load_tokenizer(tmp_path, types.SimpleNamespace(**config))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    return request.param.__name__, ours, theirs, special


def test_encode_matches_transformers(pair):
    name, ours, theirs, _ = pair
    for text in TEXTS:
        assert ours.encode(text) == theirs(text).input_ids, (name, text)
        assert ours.encode(text, bos=False) == theirs(text, add_special_tokens=False).input_ids, (name, text)


def test_decode_matches_transformers(pair):
    name, ours, theirs, special = pair
    for text in TEXTS:
        for ids in (theirs(text).input_ids, [special] + theirs(text, add_special_tokens=False).input_ids):
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), \
                    (name, text, ids, skip)


def test_bos_id_is_the_bos_encode_adds(pair):
    """Qwen adds none (its config's BOS is <|endoftext|>, also its EOS); the others their BOS."""
    name, ours, theirs, _ = pair
    first = theirs("hi").input_ids[0]
    want = None if name == "qwen" else first
    assert ours.bos_id == want and (want is None or ours.encode("hi")[0] == want)
    assert theirs.bos_token_id in (None, want) or name == "qwen"


def test_invalid_unicode_is_a_value_error(pair):
    _, ours, _, _ = pair
    with pytest.raises(ValueError, match="not valid Unicode"):
        ours.encode("bad \ud800 text")
