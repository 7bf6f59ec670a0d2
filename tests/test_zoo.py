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


def test_the_shipped_reward_model_reproduces_its_recorded_validation_auc(tiny_arith):
    from meta.scoring import RewardModel
    from meta.tasks import arith
    from scripts import train_reward
    rm = models.load("tiny-arith-rm")
    assert rm.config.score_head and rm.tokenizer is not None
    recorded = json.loads((zoo.ROOT / "tiny-arith-rm" / "metrics.json").read_text())
    problems = arith.held_out("val", "hard", recorded["args"]["val_problems"])
    val = train_reward.rollouts(tiny_arith, problems, train_reward.VAL_SAMPLES, recorded["args"]["seed"],
                                RewardModel(rm))
    got = train_reward.evaluate(RewardModel(rm), val)
    assert got["val_mean_label"] == pytest.approx(recorded["val_mean_label"])
    assert got["val_auc"] == pytest.approx(recorded["val_auc"], abs=0.005)
    assert got["val_auc"] > 0.6                              # better than chance (0.5) at ranking rollouts
