"""The demo's pass@k estimator, its strategy table and plot, end to end on the shipped model."""
import itertools

import numpy as np
import pytest

from scripts import demo


@pytest.mark.parametrize("n", [1, 4, 6])
def test_pass_at_k_equals_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert demo.pass_at_k(n, [c], k)[0] == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_per_problem_and_rejects_bad_arguments():
    np.testing.assert_allclose(demo.pass_at_k(4, np.array([[0, 1], [2, 4]]), 1), [[0, 0.25], [0.5, 1]])
    with pytest.raises(ValueError) as err:
        demo.pass_at_k(4, [1], 5)
    assert "1 <= k <= n" in str(err.value)
    with pytest.raises(ValueError) as err:
        demo.pass_at_k(4, [5], 2)
    assert "correct counts must be integers in [0, 4], got [5]" in str(err.value)


def test_demo_runs_on_the_shipped_model_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / "demo.png"
    results = demo.main(["--problems", "6", "--samples", "8", "--plot", str(png)])
    out = capsys.readouterr().out
    assert list(results) == [name for name, _ in demo.STRATEGIES]
    assert "greedy" in out and "pass@8" in out and "pass@16" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (greedy,), (sampled,), cover = results["greedy"], results["sampled"], results["pass@k (oracle)"]
    assert [p.label for p in cover] == [f"pass@{k}" for k in range(1, 9)]
    accs = [p.accuracy for p in cover]
    assert all(a <= b + 1e-12 for a, b in zip(accs, accs[1:]))      # coverage never falls with k
    assert cover[0].accuracy == pytest.approx(sampled.accuracy)      # pass@1 is sampled accuracy
    assert cover[7].tokens == pytest.approx(8 * sampled.tokens)      # pass@k pays for k samples
    assert 0 < greedy.tokens < 100 and 0 < sampled.tokens


@pytest.mark.parametrize("flags, message", [
    (["--samples", "3000"], "--samples must be at most 2048, got 3000"),     # "n <= rows" after the greedy run
    (["--temperature", "nan"], "temperature must be >= 0, got nan"),
    (["--plot", "out.xyz"], "--plot must end in one of"),                    # after the whole run
])
def test_bad_demo_flags_are_refused_before_running(monkeypatch, flags, message):
    monkeypatch.setattr(demo.models, "load", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError) as err:
        demo.main(flags)
    assert message in str(err.value)


def test_demo_shows_pass_at_its_sample_count(tmp_path, capsys):
    demo.main(["--problems", "2", "--samples", "3", "--plot", str(tmp_path / "d.png")])
    out = capsys.readouterr().out
    assert "pass@3" in out and "the meta-generators run at N = 4, 16, 64" in out


def test_meta_table_refuses_methods_that_match_nothing(capsys, tmp_path):
    from scripts import meta_table
    with pytest.raises(ValueError, match=r"--methods \['greedyy'\] match no method"):
        meta_table.main(["--problems", "2", "--methods", "greedyy", "--doc", str(tmp_path / "s.md")])
    assert capsys.readouterr().out == "" and not (tmp_path / "s.md").exists()     # refused before anything ran


def test_a_new_strategy_joins_the_table(tmp_path):
    ctx = demo.Context(model=None, problems=[], progress=False)
    extra = [("constant", lambda ctx: [demo.Point("best-of-2", 0.5, 42.0)])]
    results = demo.run(ctx, extra)
    assert "constant" in demo.table(results) and "42.0" in demo.table(results)
    demo.plot(results, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_the_demo_runs_on_countdown_with_its_shipped_models(tmp_path, capsys):
    demo.main(["--task", "countdown", "--problems", "2", "--samples", "4", "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "countdown on 2 held-out hard problems (Q: " in out and "weighted (RM)" in out
    assert "no reward model" not in out and (tmp_path / "c.png").stat().st_size > 0
