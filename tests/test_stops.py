"""Stop strings (``generate(..., stop=[...])``): matched on the device across token boundaries, the same
True/False as ``transformers``' ``StopStringCriteria`` at every position, the text cut by ``keep_stop``."""
import dataclasses
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import engine
import models
from engine.stops import matches, tables
from sampling import Sampler

PAD, EOS, PROMPT = 0, 1, 2


class Pieces:
    """A fake tokenizer: each id is a fixed string (ids may share one), text is their concatenation."""
    def __init__(self, pieces):
        self.pieces, self.vocab_size = list(pieces), len(pieces)
        self.bos_id, self.eos_id, self.pad_id = None, EOS, PAD

    def encode(self, text, bos=True):
        raise NotImplementedError

    def decode(self, ids):
        return "".join(self.pieces[int(i)] for i in ids)


def _log_table(nxt, v):
    table = np.full((v, v), 0.1 / v)
    table[np.arange(v), nxt] += 0.9
    return np.log(table)


@dataclasses.dataclass
class Scripted:
    """A fake model that writes ``script`` (strings, one token each) after its one-token prompt
    (``prompt`` its text), then EOS: each position of the script is its own id."""
    script: list
    prompt: str = "|"

    def __post_init__(self):
        self.tokenizer = Pieces(["", "", self.prompt] + list(self.script))
        v = self.tokenizer.vocab_size
        self.config = models.preset("tiny", vocab_size=v, layers=1, eos_ids=(EOS,), pad_id=PAD, bos_id=None)
        nxt = np.array([EOS, EOS] + list(range(3, v)) + [EOS])
        self.params = {"table": jnp.asarray(_log_table(nxt, v), jnp.float32)}

    @staticmethod
    def forward(config, params, tokens, positions=None, cache=None, *, last_only=False):
        out = params["table"][tokens]
        return (out[:, -1] if last_only else out), cache.advance(tokens.shape[1])


# (the script, the stop strings, tokens kept, text with the stop string, text without it)
CASES = [
    (["he", "st", "op", "ped"], ["stop"], 3, "hestop", "he"),                 # split across two tokens
    (["s", "t", "o", "p", "!"], ["stop"], 4, "stop", ""),                     # one character a token
    (["a", "xstopy", "b"], ["stop"], 2, "axstop", "ax"),                     # inside one token: cut mid-token
    (["las", "topper", "z"], ["stop"], 2, "lastop", "la"),                   # runs off both ends of the tokens
    (["a", "b", "c", "d"], ["bcd", "abc"], 3, "abc", ""),                    # the first to end wins
    (["x", "a", "b", "c"], ["b", "ab"], 3, "xab", "x"),                      # two end together: the longer is cut
    (["a", "a", "a", "b"], ["aab"], 4, "aaab", "a"),                         # a repeated character
    (["q", "tops", "r"], ["stop", "\n\nQ:"], 4, "qtopsr", "qtopsr"),      # never occurs: EOS ends it
    (["x", "\n", "\nQ", ":", " 1"], ["\n\nQ:", "</answer>"], 4, "x\n\nQ:", "x"),
    (["<", "/ans", "wer>", "\n"], ["\n\nQ:", "</answer>"], 3, "</answer>", ""),
]


@pytest.mark.parametrize("script, stop, length, kept, cut", CASES)
def test_hand_made_cases(script, stop, length, kept, cut):
    model = Scripted(script)
    for keep, text in ((True, kept), (False, cut)):
        out = engine.generate(model, [[PROMPT]], max_new_tokens=8, stop=stop, keep_stop=keep)
        assert out.lengths.tolist() == [[length]]
        assert out.tokens[0, 0, :length].tolist() == list(range(3, 3 + min(length, len(script)))) + [EOS] * (
            length - len(script))                                    # the tokens stay as drawn
        assert out.text == [[text]]
    full = engine.generate(model, [[PROMPT]], max_new_tokens=8)
    assert full.lengths.tolist() == [[len(script) + 1]]              # without stop strings: to the EOS


def test_a_string_begun_in_the_prompt_ends_at_its_first_drawn_token():
    model = Scripted(["op", "x"], prompt="st")
    out = engine.generate(model, [[PROMPT]], max_new_tokens=4, stop=["stop"], keep_stop=True)
    assert out.lengths.tolist() == [[1]] and out.text == [["op"]]
    out = engine.generate(model, [[PROMPT]], max_new_tokens=4, stop=["stop"])
    assert out.text == [[""]]


def test_decode_and_stream_take_stop_too():
    model = Scripted(["he", "st", "op", "ped"])
    state = engine.start(model, [[PROMPT]], capacity=8)
    state = engine.decode(model, state, max_new_tokens=8, stop=["stop"])
    assert bool(state.done[0]) and int(state.cache.length[0]) == 3
    assert engine.rollouts(state, model.tokenizer, stop=["stop"]).text == [["he"]]
    assert list(engine.stream(model, [PROMPT], max_new_tokens=8, stop=["stop"])) == [3, 4, 5]


def _reference(tokenizer, ids, t, stops):
    """Text-level reference: a stop string ends in the text of token ``t - 1`` of ``ids`` (whole-character tokens)."""
    before, text = tokenizer.decode(ids[:t - 1]), tokenizer.decode(ids[:t])
    start = next((i for i, (a, b) in enumerate(zip(text, before)) if a != b), min(len(text), len(before)))
    return any(text.find(s, max(0, start - len(s) + 1)) >= 0 for s in stops)


@pytest.fixture(scope="module")
def arith():
    return models.load("tiny-arith")


def test_real_model_stops_where_the_text_first_ends_with_a_stop_string(arith):
    from meta.tasks import arith as task
    prompts = [p.prompt for p in task.held_out("test", "hard", 3)]
    sampler, stops = Sampler(temperature=1.0), ["=1", "+2", "\nA"]
    full = engine.generate(arith, prompts, max_new_tokens=48, n=4, seed=1, sampler=sampler)
    out = engine.generate(arith, prompts, max_new_tokens=48, n=4, seed=1, sampler=sampler, stop=stops)
    hits = 0
    for g, prompt in enumerate(prompts):
        head = arith.tokenizer.encode(prompt)
        for r in range(4):
            ids = head + full.tokens[g, r, :full.lengths[g, r]].tolist()
            first = next((t for t in range(len(head) + 1, len(ids) + 1) if _reference(arith.tokenizer, ids, t, stops)),
                         None)
            want = full.lengths[g, r] if first is None else first - len(head)
            hits += first is not None
            assert out.lengths[g, r] == want
            assert (out.tokens[g, r, :want] == full.tokens[g, r, :want]).all()
            if first is not None:
                assert not any(s in out.text[g][r] for s in stops)
                assert full.text[g][r].startswith(out.text[g][r])
    assert hits >= 6


def test_batch_independence(arith):
    from meta.tasks import arith as task
    prompts = [p.prompt for p in task.held_out("test", "hard", 4)]
    kw = dict(max_new_tokens=40, n=3, seed=2, sampler=Sampler(temperature=1.0), stop=["=1", "\n"])
    together = engine.generate(arith, prompts, **kw)
    for g in (0, 3):
        alone = engine.generate(arith, [prompts[g]], **kw)
        assert alone.lengths.tolist() == together.lengths[g:g + 1].tolist()
        assert alone.text == together.text[g:g + 1]
        t = alone.tokens.shape[-1]
        assert (alone.tokens[0, :, :t] == together.tokens[g, :, :t]).all()


def _bpe(tmp_path, fallback: bool):
    """A small trained BPE ``tokenizer.json``: byte-level (GPT-2 style), or Metaspace with byte fallback
    (Llama style, with pieces holding part of a UTF-8 character as ``<0xNN>`` tokens)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers import models as tm
    text = ["Q: what is 12+7?\n\nA: <answer>19</answer>\n\nQ: café naïve 日本語 ok</answer>",
            "the quick brown fox jumps over the lazy dog: stop, stopper, laptop"] * 20
    if fallback:
        tok = Tokenizer(tm.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]
                                      + [f"<0x{b:02X}>" for b in range(256)])
    else:
        tok = Tokenizer(tm.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(text, trainer)
    path = tmp_path / ("fallback.json" if fallback else "bytes.json")
    tok.save(str(path))
    return path


@pytest.mark.parametrize("fallback", [False, True])
def test_agrees_with_transformers_stop_string_criteria(tmp_path, fallback):
    torch = pytest.importorskip("torch")
    from transformers import PreTrainedTokenizerFast
    from transformers.generation.stopping_criteria import StopStringCriteria
    path = _bpe(tmp_path, fallback)
    ours = models.tokenizer.HFTokenizer(path, eos_id=0, pad_id=0)
    stops = ["\n\nQ:", "</answer>", "é", "日本", "stop", "p", "ab"]
    criterion = StopStringCriteria(PreTrainedTokenizerFast(tokenizer_file=str(path)), stops)
    assert criterion._stop_string_matching_mode == ("byte_fallback" if fallback else "byte_level")
    table = tables(ours, stops, ours.vocab_size + 3)              # a model vocabulary padded past the tokenizer's
    rng = np.random.default_rng(0)
    pieces = ["x</answer>y", "\n\nQ: 3", "café", "日本語", "laptop", "stopper", " ab", "</ans", "wer>", "\n", "Q:"]
    rows = []
    for _ in range(48):
        ids = []
        while len(ids) < 40:
            ids += (ours.encode(str(rng.choice(pieces)), bos=False) if rng.random() < 0.6
                    else rng.integers(0, ours.vocab_size + 3, 2).tolist())
        rows.append(ids[:40])
    ids = np.array(rows)
    positives = 0
    for t in range(1, ids.shape[1] + 1):
        want = criterion(torch.tensor(np.minimum(ids[:, :t], ours.vocab_size)), None).numpy()
        window = np.full((len(ids), table.window), -1)
        for j in range(min(table.window, t)):
            window[:, j] = ids[:, t - 1 - j]
        assert np.asarray(matches(table, jnp.asarray(window))).tolist() == want.tolist(), t
        positives += want.sum()
    assert positives > 100


def test_split_utf8_character_on_byte_level_tokens(tmp_path):
    ours = models.tokenizer.HFTokenizer(_bpe(tmp_path, False), eos_id=0, pad_id=0)
    pieces = ours.token_bytes()
    table = tables(ours, ["é"], ours.vocab_size)
    one = [i for i, p in enumerate(pieces) if p in (b"\xc3", b"\xa9")]
    c3, a9 = (next(i for i in one if pieces[i] == b) for b in (b"\xc3", b"\xa9"))
    got = np.asarray(matches(table, jnp.asarray([[a9, c3], [c3, a9], [a9, -1]])))
    assert got.tolist() == [True, False, False]


@pytest.mark.parametrize("stop, match", [
    ("stop", "non-empty list of non-empty strings"),
    ([], "non-empty list of non-empty strings"),
    ([""], "non-empty list of non-empty strings"),
    (["ok", 3], "non-empty list of non-empty strings"),
    (["\ud800"], "not valid Unicode"),
    (["zz"], "no token of the vocabulary can end any"),
])
def test_bad_stop_is_a_value_error_before_any_work(monkeypatch, stop, match):
    model = Scripted(["a", "b"])
    monkeypatch.setattr(sys.modules["engine.generate"], "start", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=match):
        engine.generate(model, [[PROMPT]], max_new_tokens=4, stop=stop)
    with pytest.raises(ValueError, match=match):
        engine.stream(model, [PROMPT], max_new_tokens=4, stop=stop)


def test_stop_needs_a_tokenizer_and_keep_stop_a_bool(monkeypatch):
    monkeypatch.setattr(sys.modules["engine.generate"], "start", lambda *a, **k: pytest.fail("work started"))
    model = Scripted(["a", "b"])
    bare = dataclasses.replace(model)
    bare.tokenizer = None
    with pytest.raises(ValueError, match="need a model with a tokenizer"):
        engine.generate(bare, [[PROMPT]], max_new_tokens=4, stop=["a"])
    with pytest.raises(ValueError, match="keep_stop must be True or False"):
        engine.generate(model, [[PROMPT]], max_new_tokens=4, stop=["a"], keep_stop="yes")


def test_meta_draw_passes_stop_strings():
    from meta.budget import Budget
    from meta.draw import draw
    model = Scripted(["he", "st", "op", "ped"])
    d = draw(model, [[PROMPT]], n=2, sampler=Sampler.greedy(), seed=0, max_new_tokens=8, budget=Budget(),
             stop=["stop"])
    assert d.texts == [["he", "he"]] and d.lengths.tolist() == [[3, 3]]
    with pytest.raises(ValueError, match="non-empty list"):
        draw(model, [[PROMPT]], n=1, sampler=Sampler.greedy(), seed=0, max_new_tokens=8, budget=Budget(), stop="x")
