"""The Python examples of the README and docs run as written (the quick start on the shipped
model instead of a path). Examples with placeholders (other models, a device mesh) are not run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), re.S)


def block(name: str, marker: str) -> str:
    """The one Python example of ``name`` that holds ``marker`` (found by what it says, so that an
    example added elsewhere moves nothing)."""
    found = [b for b in blocks(name) if marker in b]
    assert len(found) == 1, (name, marker, len(found))
    return found[0]


def test_quick_start_runs():
    ns = {}
    exec(block("README.md", 'models.load("path/to/hf-or-rollax-dir")').replace('"path/to/hf-or-rollax-dir"', '"tiny-arith"'), ns)
    out = ns["out"]
    assert out.tokens.shape == (2, 4, 32) and out.lengths.shape == (2, 4)       # as its comments say
    assert len(out.text) == 2 and all(len(row) == 4 for row in out.text)


def test_search_primitives_run():
    ns = {}
    exec("import engine, models\nfrom sampling import Sampler\n" + block("README.md", "engine.fork(state, 2)"), ns)
    out = ns["out"]
    assert out.tokens.shape[:2] == (1, 16)                                     # 8 rollouts, forked in two
    assert all("\nA: " in t for t in out.text[0])                             # the appended cue


def test_constraint_example_runs():
    ns = {}
    exec(blocks("docs/constraints-and-mixtures.md")[0], ns)
    out, pattern = ns["out"], r"(-?[0-9]{1,3}[+-][0-9]{1,3}=-?[0-9]{1,3}\n){1,3}A: -?[0-9]{1,3}"
    finished = [t for t, n in zip(out.text[0], out.lengths[0]) if n < 64]
    assert finished and all(re.fullmatch(pattern, t) for t in finished)      # as its comment says
    assert ns["answer"].table.shape[1] == ns["model"].config.vocab_size


def test_meta_example_runs():
    ns = {}
    exec(blocks("docs/meta.md")[0], ns)
    assert len(ns["r"].answers) == 20 and ns["r"].budget.generated > 0


def test_architecture_search_example_runs():
    ns = {}
    exec(blocks("docs/architecture.md")[0], ns)
    state, problems = ns["state"], ns["problems"]
    assert state.shape == (8, 8) and state.done.all()                # 4-5 steps and the answer line: 6 pauses
    assert all(a is None or isinstance(a, int) for a in ns["answers"])
    right = sum(a == p.answer for a, p in zip(ns["answers"], problems))
    assert right >= 2                                                              # a search, not noise


def test_readme_step_search_snippet_runs():
    ns = {}
    code = ("import engine, models\nfrom sampling import Sampler\n" + block("README.md", "engine.fork(state, 2)")
            + block("README.md", 'engine.track_scores(state, "rm")'))
    exec(code, ns)
    assert ns["scores"].shape == (1, 8) and ns["state"].paused.sum() == 0                # rewound rows are live
    assert ns["state"].cache.length.tolist() == (ns["lengths"] // 2).reshape(-1).tolist()


def test_readme_step_level_search_runs():
    ns = {}
    exec(block("README.md", "meta.step_beam_search("), ns)
    r = ns["r"]
    assert len(r.texts[0]) == 16 and r.budget.scorer_tokens == r.budget.generated + r.budget.prefilled
    assert r.answers == [66] and r.info[0]["steps"] >= 3                            # 47+38-19: a few steps


def test_search_doc_example_runs():
    ns = {}
    exec(blocks("docs/search.md")[0], ns)
    r, problems = ns["r"], ns["problems"]
    assert len(r.answers) == 8 and all(len(row) == 16 for row in r.texts)
    assert sum(a == p.answer for a, p in zip(r.answers, problems)) >= 4              # a search, not noise


def test_readme_chat_example_runs(tmp_path):
    from tests.test_chat import chat_checkpoint, qwen
    ns, chat = {}, [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 12 + 7?"}]
    chat_checkpoint(tmp_path, qwen, chat, "19")                  # a Qwen2.5-like model that answers 19
    exec(block("README.md", 'models.load("path/to/chat-model")').replace('"path/to/chat-model"', repr(str(tmp_path / "m"))), ns)
    assert ns["text"].startswith("<|im_start|>system\nAnswer with a number.<|im_end|>\n<|im_start|>user\n")
    assert ns["ids"] == ns["model"].tokenizer.encode(ns["text"], bos=False) and ns["out"].text == [["19"]]
