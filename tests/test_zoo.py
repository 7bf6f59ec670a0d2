"""The shipped tiny-arith checkpoint: found by name, its tokenizer, and its recorded accuracy."""
import json

import pytest

import models
from models import zoo
from scripts.eval_arith import greedy_accuracy, metric_sample


@pytest.fixture(scope="module")
def tiny_arith():
    return models.load("tiny-arith")


def test_loads_by_name_with_its_tokenizer(tiny_arith):
    assert "tiny-arith" in zoo.names()
    tok = tiny_arith.tokenizer
    assert tok is not None and tok.vocab_size == tiny_arith.config.vocab_size
    assert tiny_arith.config.eos_ids == (tok.eos_id,) and tiny_arith.config.bos_id == tok.bos_id
    ids = tok.encode("Q: 123+45=?\n", bos=False)
    assert [tok.decode([i]) for i in ids[3:8]] == ["1", "2", "3", "+", "4"]   # digits are split
    assert tok.decode(ids) == "Q: 123+45=?\n"
    assert 3e5 < tiny_arith.config.num_params < 1e7


def test_a_directory_wins_over_a_zoo_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-arith").mkdir()
    with pytest.raises(ValueError) as err:
        models.load("tiny-arith")           # the empty local directory, not the shipped model
    assert "neither a rollax checkpoint" in str(err.value)
    with pytest.raises(ValueError) as err:
        models.load("no-such-model")
    assert "no model directory" in str(err.value)


def test_greedy_accuracy_on_the_fixed_sample_equals_the_recorded_figure(tiny_arith):
    recorded = json.loads((zoo.ROOT / "tiny-arith" / "metrics.json").read_text())
    assert greedy_accuracy(tiny_arith, metric_sample()) == recorded["test_hard_50_greedy_accuracy"]
