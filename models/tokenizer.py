"""One small tokenizer interface over sentencepiece ``.model`` files and ``tokenizer.json``."""
from __future__ import annotations

import re
from pathlib import Path

from models.files import read_json


class Tokenizer:
    """``encode(text) -> ids`` (BOS prepended when the model has one), ``decode(ids) -> text``."""
    bos_id: int | None
    eos_id: int | None
    pad_id: int

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of ``text`` (a BOS first where the tokenizer has one and ``bos``); text that is not
        valid Unicode (a lone surrogate, e.g. from a badly decoded file) is a ``ValueError``."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode ({e.reason} at character {e.start}): {text[:40]!r}") from None
        ids = self._encode(text)
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each token id adds to a text (what stop strings are matched against): each
        token decoded after a fixed text, that text cut off, as ``transformers``' ``StopStringCriteria``
        reads a vocabulary (a piece's leading space is kept; a control token adds nothing)."""
        base = self._encode(_BASE)
        head = self.decode(base)
        out = []
        for i in range(self.vocab_size):
            text = self.decode(base + [i])
            out.append((text[len(head):] if text.startswith(head) else self.decode([i])).encode("utf-8"))
        return out


_BASE = "abcdef"          # the fixed text tokens are decoded after (``transformers``' static prefix)


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path):
        import sentencepiece as spm
        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()
        none = lambda i: None if i < 0 else i
        self.bos_id, self.eos_id = none(self.sp.bos_id()), none(self.sp.eos_id())
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else (self.eos_id or 0)

    def _encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        # ids past the tokenizer (a model vocabulary padded beyond it) have no text, as in `tokenizers`
        return self.sp.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])

    def token_bytes(self):
        """As :meth:`Tokenizer.token_bytes`; a byte-fallback piece (``<0x0A>``) is its one byte."""
        out = super().token_bytes()
        return [bytes([int(self.sp.id_to_piece(i)[3:5], 16)]) if self.sp.is_byte(i) else b for i, b in enumerate(out)]


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` read by the ``tokenizers`` library; special ids come from the config."""

    def __init__(self, path, bos_id=None, eos_id=None, pad_id=None):
        from tokenizers import Tokenizer as _Tok
        self.path = Path(path)
        self.tok = _Tok.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = pad_id if pad_id is not None else (eos_id or 0)

    def _encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self):
        """As :meth:`Tokenizer.token_bytes`, but a byte-level vocabulary's tokens (GPT-2's ``Ġ`` for a
        space) are their bytes, and a byte-fallback one's ``<0xNN>`` tokens their one byte, so a token
        holding part of a UTF-8 character is matched byte by byte (as ``transformers`` does)."""
        import json
        decoder = json.loads(self.tok.to_str()).get("decoder") or {}
        kinds = set(re.findall(r'"type":\s*"(\w+)"', json.dumps(decoder)))
        out = super().token_bytes()
        if "ByteLevel" in kinds:
            chars = {c: b for b, c in _bytes_to_unicode().items()}
            pieces = [self.tok.id_to_token(i) for i in range(self.vocab_size)]
            return [bytes(chars[c] for c in p) if p is not None and all(c in chars for c in p) else b
                    for p, b in zip(pieces, out)]
        if "ByteFallback" in kinds:
            pieces = [self.tok.id_to_token(i) or "" for i in range(self.vocab_size)]
            return [bytes([int(p[3:5], 16)]) if re.fullmatch(r"<0x[0-9a-fA-F]{2}>", p) else b
                    for p, b in zip(pieces, out)]
        return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


CONTEXT = 8     # prompt tokens decoded before a continuation (a UTF-8 character is at most 4 byte tokens)


def continuation(tokenizer, context, ids) -> str:
    """The text of token ids ``ids`` as it reads after the tokens ``context`` (e.g. a prompt's last
    :data:`CONTEXT` tokens): ``decode(context + ids)`` minus ``decode(context)``, as ``transformers``'
    pipelines cut the prompt off. Decoding ``ids`` alone loses what depends on what comes before:
    sentencepiece (and Metaspace decoders) drop the space of a first "▁word" piece. Falls back to
    ``decode(ids)`` where the two decodes do not share that prefix."""
    ids, context = [int(i) for i in ids], [int(i) for i in context]
    if not context:
        return tokenizer.decode(ids)
    head, full = tokenizer.decode(context), tokenizer.decode(context + ids)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(ids)


def load_tokenizer(directory, config) -> Tokenizer | None:
    """The tokenizer in ``directory`` (``tokenizer.json`` preferred, else ``tokenizer.model``), or None.

    A ``tokenizer.json`` prepends the config's BOS unless ``tokenizer_config.json`` says
    ``add_bos_token: false``, or the BOS is also an EOS id (Qwen2's configs name ``<|endoftext|>``
    as both, and its tokenizer adds none).
    """
    directory = Path(directory)
    eos = config.eos_ids[0] if config.eos_ids else None
    bos = None if config.bos_id in config.eos_ids else config.bos_id
    settings = directory / "tokenizer_config.json"
    if settings.exists():
        meta = read_json(settings)
        add = meta.get("add_bos_token") if isinstance(meta, dict) else None
        if isinstance(add, bool):
            bos = config.bos_id if add else None
    for name, make in (("tokenizer.json", lambda p: HFTokenizer(p, bos, eos, config.pad_id)),
                       ("tokenizer.model", SentencePieceTokenizer)):
        if (directory / name).exists():
            try:
                return make(directory / name)
            except Exception as e:  # the libraries raise RuntimeError, OSError or a bare Exception
                raise ValueError(f"cannot read the tokenizer {directory / name}: {e}") from e
    return None
