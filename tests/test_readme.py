"""The README's Python examples run as written (the quick start on the shipped model instead of a path)."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_quick_start_runs():
    ns = {}
    exec(BLOCKS[0].replace('"path/to/hf-or-rollax-dir"', '"tiny-arith"'), ns)
    out = ns["out"]
    assert out.tokens.shape == (2, 4, 32) and out.lengths.shape == (2, 4)       # as its comments say
    assert len(out.text) == 2 and all(len(row) == 4 for row in out.text)


def test_search_primitives_run():
    ns = {}
    exec("import engine, models\nfrom sampling import Sampler\n" + BLOCKS[1], ns)
    out = ns["out"]
    assert out.tokens.shape[:2] == (1, 16)                                     # 8 rollouts, forked in two
    assert all("\nA: " in t for t in out.text[0])                             # the appended cue
