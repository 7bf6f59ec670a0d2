"""Chat templates render as ``transformers``' ``apply_chat_template`` renders them, same text and same
ids, on tokenizer directories in real models' shapes with their real templates (Llama 3, Qwen2.5's
ChatML with its default system message, Gemma's turns, Llama 2's ``[INST]`` from a
``chat_template.jinja``); chat prompts enter ``engine.generate`` and the scripts."""
import copy
import json
import types

import pytest

import engine
import models
from models.tokenizer import load_tokenizer
from tests.conftest import chain_model
from tests.test_tokenizers import QWEN_SPLIT, _byte_bpe, _sentencepiece, llama2

transformers = pytest.importorskip("transformers")

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CHATML = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"""

LLAMA2 = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"""

# the environment's own pieces: tojson (no HTML escaping, non-ASCII kept), namespace, loop controls, dict,
# a {% generation %} block, extra keyword arguments
FEATURES = """{%- set ns = namespace(n=0) %}
{%- for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}
<|im_start|>{{ m.role }} {{ m | tojson }} {{ dict(a=1, b=[m.content]) | tojson(indent=1) }}<|im_end|>
{%- endfor %}
{% generation %}{{ ns.n }} {{ enable_thinking is defined and enable_thinking }}{% endgeneration %}
{%- if add_generation_prompt %}<|im_start|>assistant{% endif %}"""


def qwen(directory):
    tok = _byte_bpe(directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=QWEN_SPLIT)
    end = tok.token_to_id("<|endoftext|>")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "unused"}]}))
    return dict(bos_id=end, eos_ids=(tok.token_to_id("<|im_end|>"),), pad_id=end), "<|im_start|>"


def llama3(directory):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = _byte_bpe(directory, specials, "<|begin_of_text|>")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": LLAMA3}))
    bos, eot = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|eot_id|>")
    return dict(bos_id=bos, eos_ids=(eot,), pad_id=eot), "<|begin_of_text|>"


def gemma(directory):
    _sentencepiece(directory, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                   bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False,
                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>",
        "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "chat_template": GEMMA}))
    return dict(bos_id=2, eos_ids=(1,), pad_id=0), "<bos>"


def llama2_jinja(directory):
    config, _ = llama2(directory)
    (directory / "chat_template.jinja").write_text(LLAMA2)
    return config, "<s>"


CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": " Héllo wörld, café 🙂\n"}],
    [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "the cat sat on the mat"},
     {"role": "user", "content": "日本語のテキスト\n\nQ: 1+2=?"}],
]


@pytest.fixture(scope="module", params=[qwen, llama3, gemma, llama2_jinja])
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param.__name__)
    config, first = request.param(directory)
    ours = load_tokenizer(directory, types.SimpleNamespace(**config))
    return request.param.__name__, ours, transformers.AutoTokenizer.from_pretrained(str(directory)), first


def test_chat_template_matches_transformers(pair):
    name, ours, theirs, first = pair
    rendered = 0
    for chat in CHATS:
        for gen in (False, True):
            try:
                want = theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
            except Exception as e:                   # Gemma's template refuses a system message
                with pytest.raises(ValueError) as ours_e:
                    ours.apply_chat_template(chat, add_generation_prompt=gen)
                assert str(e) in str(ours_e.value), name
                continue
            ids = theirs.apply_chat_template(chat, add_generation_prompt=gen, return_dict=False)
            assert ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == want, (name, chat)
            assert ours.apply_chat_template(chat, add_generation_prompt=gen) == ids, (name, chat, gen)
            # the template's special tokens are single tokens, written once: no doubled BOS
            assert ids[0] == theirs.convert_tokens_to_ids(first) and ids[1] != ids[0], name
            rendered += 1
    assert rendered >= 4


def test_environment_matches_transformers(pair):
    """tojson, namespace, loop controls, dict, {% generation %}, extra keyword arguments."""
    name, ours, theirs, _ = pair
    chat = [{"role": "user", "content": "<b>café</b> & \"q\""}, {"role": "assistant", "content": "ok", "n": None},
            {"role": "user", "content": "unseen"}]
    tok = copy.copy(ours)
    tok.chat_template = FEATURES
    for kw in ({}, {"enable_thinking": True}):
        want = theirs.apply_chat_template(chat, chat_template=FEATURES, add_generation_prompt=True, tokenize=False, **kw)
        assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kw) == want, name
        assert tok.apply_chat_template(chat, add_generation_prompt=True, **kw) == theirs.apply_chat_template(
            chat, chat_template=FEATURES, add_generation_prompt=True, return_dict=False, **kw), name


@pytest.fixture(scope="module")
def gemma_tok(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma_chat")
    config, _ = gemma(directory)
    return load_tokenizer(directory, types.SimpleNamespace(**config))


@pytest.mark.parametrize("chat, template, message", [
    ("hi", GEMMA, "a chat is a non-empty list of messages"),
    ([], GEMMA, "a chat is a non-empty list of messages"),
    (["hi"], GEMMA, "chat message 0 is not a dict"),
    ([{"role": "user", "content": "a"}, {"content": "hi"}], GEMMA, "chat message 1 has no 'role'"),
    ([{"role": "user"}], GEMMA, "chat message 0 (user) has no 'content'"),
    ([{"role": "user", "content": 7}], GEMMA, "chat message 0 (user) has no 'content'"),
    ([{"role": "system", "content": "be brief"}], GEMMA, "chat template refused these messages: System role not sup"),
    (CHATS[0], None, "this tokenizer has no chat template"),
    (CHATS[0], "{% for m in messages %}{{ m.content }}", "chat template does not parse (line 1: Unexpected end"),
    (CHATS[0], "{{ messages[0].content.nope() }}", "failed to render these messages (UndefinedError: 'str object' has"),
    (CHATS[0], "{{ messages.append(1) }}", "failed to render these messages (SecurityError: access to attr"),
    (CHATS[0], "{% set ns = namespace(_x=1) %}", "(SecurityError: a chat template cannot set '_x' on a namespace"),
])
def test_bad_chats_and_templates_are_value_errors(gemma_tok, chat, template, message):
    tok = copy.copy(gemma_tok)
    tok.chat_template = template
    with pytest.raises(ValueError) as e:
        tok.apply_chat_template(chat)
    assert message in str(e.value)


REPLY = "the cat"


def chat_checkpoint(directory, build, chat, reply: str):
    """A model in ``directory`` whose tokenizer is ``build``'s (with its template) and whose greedy
    reply to ``chat`` is ``reply`` then the EOS; its tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    config, _ = build(directory)
    tok = load_tokenizer(directory, types.SimpleNamespace(**config))
    prompt, ids = tok.apply_chat_template(chat, add_generation_prompt=True), tok.encode(reply, bos=False)
    assert len(set(ids)) == len(ids) and prompt[-1] not in ids                 # an unambiguous chain
    chain_model(tok, [prompt[-1]] + ids + [tok.eos_id], tok.vocab_size).save(directory / "m")
    return tok


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A Gemma-like chat model whose greedy reply to CHATS[0] is REPLY, saved and loaded back."""
    directory = tmp_path_factory.mktemp("chat_model")
    tok = chat_checkpoint(directory, gemma, CHATS[0], REPLY)
    return directory / "m", models.load(directory / "m"), tok


def test_generate_takes_chats(chat_model):
    _, model, gemma_tok = chat_model
    assert model.tokenizer.chat_template == GEMMA and model.tokenizer.special_tokens == gemma_tok.special_tokens
    ids = gemma_tok.apply_chat_template(CHATS[0], add_generation_prompt=True)
    out = engine.generate(model, [CHATS[0], ids], max_new_tokens=6)
    assert out.text == [[REPLY], [REPLY]] and out.tokens[0].tolist() == out.tokens[1].tolist()
    with pytest.raises(ValueError) as e:                            # checked before any work
        engine.generate(model, [ids, [{"role": "system", "content": "x"}]], max_new_tokens=6)
    assert "prompt 1: the chat template refused these messages: System role not supported" in str(e.value)
    with pytest.raises(ValueError) as e:
        engine.generate(model, [CHATS[0][0]], max_new_tokens=6)
    assert "prompt 0 is one chat message; a chat prompt is a list of messages" in str(e.value)


def test_generate_script_chat(chat_model, capsys):
    from scripts import generate
    directory, model, _ = chat_model
    shown = model.tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert generate.main(["--model", str(directory), "--prompt", CHATS[0][0]["content"], "--chat",
                          "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == shown + REPLY + "\n"              # the chat as rendered, then the reply


def test_meta_script_chat(chat_model, tmp_path, capsys):
    from scripts import meta as meta_script
    directory, _, _ = chat_model
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text(json.dumps({"prompt": CHATS[0][0]["content"], "answer": REPLY}) + "\n")
    argv = ["self_consistency", "--data", str(data), "--out", str(out), "--n", "2", "--max-new-tokens", "6",
            "--temperature", "0", "--answer", "text"]
    assert meta_script.main(argv + ["--model", str(directory), "--chat"]) == 0
    header, line = [json.loads(l) for l in out.read_text().splitlines()]
    assert line["prompt"] == CHATS[0] and line["answer"] == REPLY and line["correct"]
    assert "chat_template_sha256" in header["header"]
    out.unlink()
    assert meta_script.main(argv + ["--model", "tiny-arith", "--chat"]) == 2     # refused before writing
    assert "data.jsonl:1: prompt 0: this tokenizer has no chat template" in capsys.readouterr().err
    assert not out.exists()
