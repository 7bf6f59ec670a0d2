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


def test_a_new_strategy_joins_the_table(tmp_path):
    ctx = demo.Context(model=None, problems=[], progress=False)
    extra = [("constant", lambda ctx: [demo.Point("best-of-2", 0.5, 42.0)])]
    results = demo.run(ctx, extra)
    assert "constant" in demo.table(results) and "42.0" in demo.table(results)
    demo.plot(results, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").stat().st_size > 0
