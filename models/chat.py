"""Chat templates: a checkpoint's Jinja template, read and rendered as ``transformers`` (5.x) does.

The environment is ``transformers``' (``utils/chat_template_utils.py``): jinja2's immutable sandbox
with ``trim_blocks`` / ``lstrip_blocks`` and loop controls, ``raise_exception``, ``strftime_now``,
a ``tojson`` filter that does not escape HTML, ``dict`` and an underscore-refusing ``namespace``,
and the ``{% generation %}`` block (rendered as its body). The template sees ``messages``,
``tools=None``, ``documents=None``, ``add_generation_prompt``, the special tokens (``bos_token``,
``eos_token``, ...) and any extra keyword arguments.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING = ("reasoning_content", "thinking", "reasoning")   # names a message's reasoning goes by; the first is read


def read_template(directory: Path, meta: dict) -> str | None:
    """The chat template of a tokenizer directory: ``chat_template.jinja`` (which ``transformers``
    prefers), else ``tokenizer_config.json``'s ``chat_template`` (``meta``): a string, or a list of
    named templates, of which the one named ``default`` is used; None where there is none."""
    path = Path(directory) / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the chat template {path}: {e}") from None
    template = meta.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{directory}/tokenizer_config.json has chat templates named {sorted(map(str, named))} "
                             "but none named 'default' (the one rollax uses)")
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{directory}/tokenizer_config.json: chat_template must be a string or a list of "
                         f"{{name, template}}, got {type(template).__name__}")
    return template


def special_tokens(meta: dict, defaults: dict[str, str]) -> dict[str, str]:
    """The special tokens a template sees, as text: those ``tokenizer_config.json`` (``meta``) names
    (a string or an ``AddedToken`` dict; null: none), else ``defaults`` (the tokenizer's own)."""
    out = {}
    for key in SPECIAL_TOKENS:
        value = meta[key] if key in meta else defaults.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def render(template: str | None, messages, add_generation_prompt: bool, variables: dict) -> str:
    """The text of ``template`` rendered for ``messages`` (checked first); ``variables``: the
    special tokens and extra keyword arguments. A ``ValueError`` naming the problem: no template,
    bad messages, a template that does not parse or that fails (its own ``raise_exception``
    message included)."""
    if template is None:
        raise ValueError("this tokenizer has no chat template (no chat_template in tokenizer_config.json, no "
                         "chat_template.jinja); format the prompt as text or give tokenizer.chat_template one")
    if not isinstance(add_generation_prompt, (bool, np.bool_)):
        raise ValueError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
    messages = check_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=bool(add_generation_prompt), **_plain(variables))
    except _Refused as e:
        raise ValueError(f"the chat template refused these messages: {e}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise ValueError(f"the chat template failed to render these messages ({type(e).__name__}: {e})") from None


def check_messages(messages) -> list[dict]:
    """``messages`` as the template sees them, or a ``ValueError`` naming the bad message: a
    non-empty list of dicts, each with a string ``role`` and a ``content`` (a string or a list of
    content blocks; absent only beside ``tool_calls``). As ``transformers``, keys whose value is
    None are dropped, values are made plain JSON-like data (anything else becomes ``"<TypeName>"``),
    and a message's reasoning is given under each name templates read it by."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"a chat is a non-empty list of messages ({{'role': ..., 'content': ...}} dicts), "
                         f"got {str(messages)[:60]}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"chat message {i} is not a dict with 'role' and 'content': {str(m)[:60]}")
        m = {k: v for k, v in _plain(m).items() if v is not None}
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise ValueError(f"chat message {i} has no 'role' (a string such as 'user'): {str(m)[:60]}")
        if not isinstance(m.get("content"), (str, list)) and not ("content" not in m and "tool_calls" in m):
            raise ValueError(f"chat message {i} ({m['role']}) has no 'content' (a string or a list of content "
                             f"blocks): {str(m)[:60]}")
        reasoning = next((m[k] for k in REASONING if k in m), None)
        out.append(m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


def _plain(value):
    """``value`` rebuilt from JSON-like types (str, int, float, bool, None, dicts, lists, tuples;
    NumPy scalars read out, dataclasses as dicts), anything else as ``"<TypeName>"``: the sandbox
    only sees plain data, as in ``transformers``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):        # a subclass (an enum, np.float64) as its base value, not its repr
        if isinstance(value, kind):
            return {str: str.__str__, int: int.__int__, float: float.__float__}[kind](value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


class _Refused(jinja2.TemplateError):
    """What a template's ``raise_exception(message)`` raises."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: ``transformers`` marks assistant text with it; the
    text renders as is."""
    tags = {"generation"}

    def parse(self, parser):
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(line)

    def _body(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """jinja2's ``namespace``, refusing underscore attributes (no reaching CPython internals)."""

    def __init__(*args, **kwargs):
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


class _Dict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise _Refused(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """``transformers``' ``tojson``: plain ``json.dumps`` (jinja2's own escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    """``template`` compiled in ``transformers``' sandboxed environment, or a ``ValueError`` with the
    line where it does not parse."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                       dict=_Dict(), namespace=_Namespace)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not parse (line {e.lineno}: {e.message})") from None
