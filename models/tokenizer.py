"""One small tokenizer interface over sentencepiece ``.model`` files and ``tokenizer.json``."""
from __future__ import annotations

import re
from pathlib import Path

from models import chat
from models.files import read_json


class Tokenizer:
    """``encode(text) -> ids`` and ``decode(ids) -> text``, as ``transformers``' tokenizer of the same
    files gives them: ``encode(text)`` adds the special tokens the checkpoint's tokenizer adds (a BOS
    where it has one, none for Qwen), ``encode(text, bos=False)`` none. ``bos_id`` is the BOS that
    ``encode`` adds (None where it adds none)."""
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    chat_template: str | None = None       # the checkpoint's Jinja chat template (load_tokenizer reads it)
    special_tokens: dict = {}              # {"bos_token": "<s>", ...}: the text a chat template sees (not mutated)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of ``text``: with ``bos``, the special tokens the tokenizer adds (as
        ``transformers``' ``tokenizer(text).input_ids``), else none (as ``add_special_tokens=False``);
        text that is not valid Unicode (a lone surrogate, e.g. from a badly decoded file) is a
        ``ValueError``."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode ({e.reason} at character {e.start}): {text[:40]!r}") from None
        return self._encode_special(text) if bos else self._encode(text)

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = True,
                            **extra) -> list[int] | str:
        """``messages`` (``[{"role": "user", "content": "..."}, ...]``) formatted by the checkpoint's chat
        template, as ``transformers``' ``tokenizer.apply_chat_template`` formats them: the same text
        (``tokenize=False``) or the same ids, the text encoded without adding special tokens (the
        template writes them). ``add_generation_prompt`` ends it with the cue for the assistant's
        turn; ``extra`` keyword arguments reach the template (e.g. ``enable_thinking=False``).
        A ``ValueError`` for a tokenizer without a template, a bad message (no role or content), or
        a template that does not parse or refuses the messages (its message included)."""
        text = chat.render(self.chat_template, messages, add_generation_prompt, {**self.special_tokens, **extra})
        return self.encode(text, bos=False) if tokenize else text

    def _encode_special(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_id is not None else []) + self._encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def _save_chat(self, path, settings: dict) -> list[str]:
        """Beside the tokenizer file ``path``: ``settings`` (and, with a chat template, the special
        tokens it sees) in ``tokenizer_config.json``, the template in ``chat_template.jinja``, each
        where there is something to write, so that :func:`load_tokenizer` reads them back; the names
        of the files written."""
        import json
        directory, written = Path(path).parent, []
        settings = {**settings, **(self.special_tokens if self.chat_template is not None else {})}
        if settings:
            (directory / "tokenizer_config.json").write_text(json.dumps(settings))
            written.append("tokenizer_config.json")
        if self.chat_template is not None:
            (directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
            written.append("chat_template.jinja")
        return written

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
    """A sentencepiece ``.model``; ``encode`` adds its BOS unless ``add_bos`` is False and its EOS
    where ``add_eos`` (``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token``, which
    ``transformers`` follows; its default for Llama-style models is BOS on, EOS off). Unless ``legacy``,
    a text that starts with a space gets no extra dummy-prefix space, as ``transformers``' Llama
    tokenizer (``legacy: false``, its default) reads it: `` hi`` is ``▁hi``, not ``▁▁hi``. As in
    ``transformers``, the control, unknown and user-defined pieces (``<s>``, ``<start_of_turn>``) are
    tokens wherever their text appears (a chat template writes them), and unless ``legacy`` only the
    text at the very start gets the dummy prefix, not the text after such a token."""

    def __init__(self, path, add_bos: bool = True, add_eos: bool = False, legacy: bool = False):
        import sentencepiece as spm
        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()
        none = lambda i: None if i < 0 else i
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.bos_id, self.eos_id = none(self.sp.bos_id()) if add_bos else None, none(self.sp.eos_id())
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else (self.eos_id or 0)
        proto = _proto(self.sp)
        self.dummy_prefix = (bool(proto.normalizer_spec.add_dummy_prefix) if proto is not None
                             else self.sp.encode("a", out_type=str)[:1] in (["▁a"], ["▁"]))
        self.legacy = legacy
        self.plain = self.sp                      # encodes a text without a dummy prefix
        if self.dummy_prefix and not legacy and proto is not None:
            proto.normalizer_spec.add_dummy_prefix = False
            self.plain = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        # pieces of types 2, 3, 4: unknown, control, user-defined (what transformers makes added tokens)
        added = [p.piece for p in proto.pieces if p.type in (2, 3, 4)] if proto is not None else \
            [self.sp.id_to_piece(i) for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i)]
        added = sorted(added, key=len, reverse=True)
        self.added = re.compile("|".join(map(re.escape, added))) if added else None

    def _encode(self, text):
        ids, at = [], 0
        for m in self.added.finditer(text) if self.added is not None else ():
            ids += self._encode_plain(text[at:m.start()], at == 0) + [self.sp.piece_to_id(m.group())]
            at = m.end()
        return ids + self._encode_plain(text[at:], at == 0)

    def _encode_plain(self, text, first: bool) -> list[int]:
        """Ids of a text holding no added token; ``first``: it starts the whole text."""
        if self.legacy or (first and not text.startswith(" ")):
            return self.sp.encode(text)
        return self.plain.encode(text)             # `` hi`` is ``▁hi``, not ``▁▁hi``

    def save(self, path) -> list[str]:
        """Copy the model to ``path``, with a ``tokenizer_config.json`` beside it where BOS / EOS are not
        the default or ``legacy`` is set, and the chat template (:meth:`Tokenizer._save_chat`); the
        names of the files written besides ``path``."""
        import shutil
        shutil.copy(self.path, path)
        flags = {} if (self.add_bos, self.add_eos) == (True, False) else {"add_bos_token": self.add_bos,
                                                                          "add_eos_token": self.add_eos}
        return self._save_chat(path, {**flags, **({"legacy": True} if self.legacy else {})})

    def _encode_special(self, text):
        ids = super()._encode_special(text)
        return ids + [self.eos_id] if self.add_eos and self.eos_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = False):
        """The text of ``ids``; a control or unknown token (BOS, EOS, ``<unk>``) reads as its piece
        (``<s>``) unless ``skip_special_tokens`` (then as nothing), as in ``transformers``."""
        # ids past the tokenizer (a model vocabulary padded beyond it) have no text, as in `tokenizers`
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        special = lambda i: self.sp.is_control(i) or self.sp.is_unknown(i)
        if skip_special_tokens or not any(map(special, ids)):
            return self.sp.decode([i for i in ids if not special(i)])
        out, run = [], []
        for i in ids + [None]:
            if i is None or special(i):
                text = self.sp.decode(run)
                if out and run and self.dummy_prefix and self.sp.id_to_piece(run[0]).startswith("▁"):
                    text = " " + text     # only the text's first piece loses its dummy-prefix space
                out += [text] + ([self.sp.id_to_piece(i)] if i is not None else [])
                run = []
            else:
                run.append(i)
        return "".join(out)

    def token_bytes(self):
        """As :meth:`Tokenizer.token_bytes`; a byte-fallback piece (``<0x0A>``) is its one byte, a
        control token nothing."""
        out = super().token_bytes()
        out = [b"" if self.sp.is_control(i) else b for i, b in enumerate(out)]
        return [bytes([int(self.sp.id_to_piece(i)[3:5], 16)]) if self.sp.is_byte(i) else b for i, b in enumerate(out)]


def _proto(sp):
    """The model's ``ModelProto`` (its pieces' types, its normalizer), or None without ``protobuf``
    (then the dummy prefix is read from how a space-less text is cut, user-defined pieces are not
    split off, and text after a control token gets a dummy prefix)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(sp.serialized_model_proto())
        return proto
    except Exception:  # no protobuf
        return None


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` read by the ``tokenizers`` library. Its post-processor decides the special
    tokens ``encode`` adds (Llama 3's ``<|begin_of_text|>`` template, Qwen's none), as in
    ``transformers``' fast tokenizer; where the file has no post-processor, or ``add_bos`` /
    ``add_eos`` is given (``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token``),
    ``transformers`` replaces it by a template of ``bos_id`` (when ``add_bos``, default: a
    ``bos_id`` is given) and ``eos_id`` (when ``add_eos``), and so does this. ``path`` may be a
    ``tokenizers.Tokenizer`` built in memory (from a GGUF file's metadata); ``.path`` is then None."""

    def __init__(self, path, bos_id=None, eos_id=None, pad_id=None, add_bos: bool | None = None,
                 add_eos: bool | None = None):
        from tokenizers import Tokenizer as _Tok, processors
        self.path = None if isinstance(path, _Tok) else Path(path)
        self.tok = path if isinstance(path, _Tok) else _Tok.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else (eos_id or 0)
        if add_bos is not None or add_eos is not None or self.tok.post_processor is None:
            add_bos = bos_id is not None if add_bos is None else add_bos
            special = [(name, i) for i, name, add in ((bos_id, "bos", add_bos), (eos_id, "eos", add_eos))
                       if add and i is not None and self.tok.id_to_token(i) is not None]
            names = {k: self.tok.id_to_token(i) for k, i in special}
            one = " ".join([*([f"{names['bos']}:0"] if "bos" in names else []), "$A:0",
                            *([f"{names['eos']}:0"] if "eos" in names else [])])
            two = " ".join([one, *([f"{names['bos']}:1"] if "bos" in names else []), "$B:1",
                            *([f"{names['eos']}:1"] if "eos" in names else [])])
            self.tok.post_processor = processors.TemplateProcessing(
                single=one, pair=two, special_tokens=[(names[k], i) for k, i in special])
            self.rewritten = True
        else:
            self.rewritten = False
        self.bos_id = self._added_bos()

    def _added_bos(self):
        """The id the post-processor puts before a text, where it puts one."""
        for text in ("a", " ", ""):
            plain = self.tok.encode(text, add_special_tokens=False).ids
            full = self.tok.encode(text, add_special_tokens=True).ids
            for k in range(len(full) - len(plain) + 1):
                if full[k:k + len(plain)] == plain:
                    return full[0] if k else None
        return None

    def _encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def _encode_special(self, text):
        return self.tok.encode(text, add_special_tokens=True).ids

    def save(self, path) -> list[str]:
        """Write the tokenizer to ``path`` with the post-processor it uses (so a reload adds the same
        special tokens without a ``tokenizer_config.json``), and the chat template
        (:meth:`Tokenizer._save_chat`); the names of the files written besides ``path``."""
        if self.rewritten or self.path is None:
            Path(path).write_text(self.tok.to_str())
        else:
            import shutil
            shutil.copy(self.path, path)
        return self._save_chat(path, {})

    def decode(self, ids, skip_special_tokens: bool = False):
        """The text of ``ids`` (special tokens as their text unless ``skip_special_tokens``)."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

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
    """The tokenizer in ``directory`` (``tokenizer.json`` preferred, else ``tokenizer.model``), or None,
    adding the special tokens ``transformers``' ``AutoTokenizer`` of the directory adds.

    A ``tokenizer.json``'s post-processor decides them; where it has none, or ``tokenizer_config.json``
    sets ``add_bos_token`` / ``add_eos_token``, those (default: the BOS, unless it is also an EOS as in
    Qwen2's configs, where no BOS is added) decide, with the ``bos_token`` / ``eos_token`` named
    there (else the config's ids). A sentencepiece ``tokenizer.model`` adds its BOS unless
    ``add_bos_token: false`` and its EOS where ``add_eos_token: true``.

    Its ``chat_template`` is ``chat_template.jinja``'s, else ``tokenizer_config.json``'s (the
    ``default`` one of a list); its ``special_tokens`` (what the template sees as ``bos_token``, ...)
    those ``tokenizer_config.json`` names, else the text of the BOS ``encode`` adds and of the EOS.
    """
    directory = Path(directory)
    settings = directory / "tokenizer_config.json"
    meta = read_json(settings) if settings.exists() else {}
    meta = meta if isinstance(meta, dict) else {}
    flag = lambda key: meta[key] if isinstance(meta.get(key), bool) else None
    add_bos, add_eos = flag("add_bos_token"), flag("add_eos_token")
    eos = config.eos_ids[0] if config.eos_ids else None
    bos = config.bos_id
    if add_bos is None and add_eos is None and bos in config.eos_ids:
        bos = None
    sp_kwargs = {k: v for k, v in (("add_bos", add_bos), ("add_eos", add_eos), ("legacy", flag("legacy")))
                 if v is not None}

    def hf(path):
        from tokenizers import Tokenizer as _Tok
        vocab = _Tok.from_file(str(path))
        text = _content(meta.get("bos_token"))        # transformers' BOS is the one named here
        named = vocab.token_to_id(text) if text else None
        return HFTokenizer(path, bos if named is None else named, eos, config.pad_id, add_bos, add_eos)

    for name, make in (("tokenizer.json", hf),
                       ("tokenizer.model", lambda p: SentencePieceTokenizer(p, **sp_kwargs))):
        if (directory / name).exists():
            try:
                tok = make(directory / name)
            except Exception as e:  # the libraries raise RuntimeError, OSError or a bare Exception
                raise ValueError(f"cannot read the tokenizer {directory / name}: {e}") from e
            tok.chat_template = chat.read_template(directory, meta)
            text = lambda i: None if i is None or not 0 <= i < tok.vocab_size else tok.decode([i])
            tok.special_tokens = chat.special_tokens(meta, {"bos_token": text(tok.bos_id), "eos_token": text(eos)})
            return tok
    return None


def _content(token) -> str | None:
    """A ``tokenizer_config.json`` special token's text (a string or an ``AddedToken`` dict)."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None
