"""scripts/meta.py: resumable after SIGKILL, refuses bad datasets and changed settings."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import models
from meta.tasks import arith
from models import zoo
from scripts import meta as meta_script

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = arith.held_out("test", "hard", 8)


def dataset(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p.prompt, "answer": p.answer}) + "\n"
                            for i, p in enumerate(PROBLEMS)))
    return path


def argv(data, out, seed=0, method="self_consistency", extra=()):
    return [method, "--data", str(data), "--out", str(out), "--n", "4", "--batch", "2",
            "--max-new-tokens", "56", "--seed", str(seed), *extra]


def lines(out: Path) -> list[dict]:
    return [json.loads(l) for l in out.read_text().splitlines()]


def subprocess_env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


SEARCH = ["--scorer", "model", "--scorer-model", "tiny-arith-rm", "--beam-width", "2", "--max-steps", "8"]


@pytest.mark.parametrize("method, extra", [("self_consistency", []), ("step_beam_search", SEARCH)])
def test_resume_after_sigkill(tmp_path, method, extra):
    data = dataset(tmp_path / "data.jsonl")
    ref_out, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    run = dict(method=method, extra=extra)
    assert meta_script.main(argv(data, ref_out, **run)) == 0          # uninterrupted, same seed
    ref = {r["id"]: r for r in lines(ref_out)[1:]}
    assert sorted(ref) == [f"q{i}" for i in range(8)]

    cmd = [sys.executable, "-m", "scripts.meta", *argv(data, out, **run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1 + 3:      # header + 3 prompts
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = lines(out)
    assert 1 + 3 <= len(partial) < 1 + 8
    with open(out, "a") as f:                                         # as if killed mid-write
        f.write('{"id": "q7", "answ')

    done = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    final = lines(out)
    assert final[0] == lines(ref_out)[0]                               # the same header
    ids = [r["id"] for r in final[1:]]
    assert sorted(ids) == sorted(ref) and len(ids) == len(set(ids)) == 8
    for r in final[1:]:
        assert r["answer"] == ref[r["id"]]["answer"]
        assert [x["text"] for x in r["rollouts"]] == [x["text"] for x in ref[r["id"]]["rollouts"]]
    assert "accuracy" in done.stdout

    # the same output with other settings is refused, and left as it was
    before = out.read_text()
    assert meta_script.main(argv(data, out, seed=1, **run)) == 2
    assert out.read_text() == before


def test_refuses_changed_settings_message(tmp_path, capsys):
    data = dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"header": {"seed": 5}}) + "\n")
    assert meta_script.main(argv(data, out)) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "seed" in err


@pytest.mark.parametrize("bad, message", [
    ('{"prompt": "Q: 1+1=?\\n"}\n{"prompt": \n', "data.jsonl:2: not valid JSON"),
    ('{"prompt": "a"}\n\n[1, 2]\n', "data.jsonl:3: expected a JSON object"),
    ('{"prompt": 3}\n', "data.jsonl:1: \"prompt\" must be a non-empty string"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "data.jsonl:2: duplicate id 1"),
])
def test_refuses_malformed_dataset(tmp_path, capsys, bad, message):
    data = tmp_path / "data.jsonl"
    data.write_text(bad)
    out = tmp_path / "out.jsonl"
    assert meta_script.main(argv(data, out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "-1"], "error: temperature must be >= 0, got -1.0"),
    (["--max-new-tokens", "0"], "must be positive"),
    (["--simulations", "0"], "must be positive"),
    (["--model", "no/such/dir"], "error: no model directory or .gguf file at no/such/dir"),
])
def test_refuses_bad_settings_before_writing(tmp_path, capsys, extra, message):
    data = dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out.jsonl"
    assert meta_script.main(argv(data, out) + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method, extra, answer, message", [
    ("self_consistency", ["--max-new-tokens", "1000"], 3, "data.jsonl:1: prompt 0 has"),
    ("best_of_n", [], 3, "error: best_of_n needs a scorer: --scorer verifier"),
    # mbr has no scorer: it was passed one anyway, a TypeError after the header was written
    ("mbr", ["--scorer", "verifier"], 3, "error: mbr takes no scorer; leave out --scorer verifier"),
    ("best_of_n", ["--scorer", "verifier"], "three",
     "data.jsonl:2: the outcome verifier needs an integer answer (or arith.Problem) as each reference, got 'three'"),
    ("best_of_n", ["--scorer", "verifier"], None, "data.jsonl:2: the outcome verifier needs an integer answer"),
    ("refine", ["--rounds", "-1"], 3, "error: --rounds and --max-backtracks must be at least 0"),
    ("backtrack", ["--scorer", "model", "--threshold", "2"], 3, "--threshold in [0, 1]"),
    ("refine", ["--feedback", "no_such_module:fb"], 3, "error: --feedback no_such_module:fb: No module named"),
    ("refine", ["--feedback", "json:nothing"], 3, "module 'json' has no attribute 'nothing'"),
    ("refine", ["--feedback", "json"], 3, "--feedback must be 'verifier' or MODULE:NAME naming a function"),
    ("refine", ["--task", "countdown"], 3, "error: --feedback verifier: task countdown has no feedback"),
    ("refine", ["--scorer", "verifier"], 3, "error: refine takes no scorer"),
])
def test_refuses_what_the_run_would_refuse_partway_before_writing(tmp_path, capsys, method, extra, answer, message):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": PROBLEMS[0].prompt, "answer": 3}) + "\n"
                    + json.dumps({"prompt": PROBLEMS[1].prompt, "answer": answer}) + "\n")
    out = tmp_path / "out.jsonl"
    assert meta_script.main([method] + argv(data, out)[1:] + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_answers_are_graded_as_the_verifier_reads_the_references():
    # the verifier reads 99.0 and "099" as 99; compared as strings they were graded wrong
    assert meta_script.correct(99, 99.0, True) and meta_script.correct(99, "099", True)
    assert meta_script.correct(0, "-0", True) and not meta_script.correct(98, 99.0, True)
    assert not meta_script.correct(None, 3, True) and meta_script.correct(3, None, True) is None
    assert meta_script.correct("blue", " blue", False) and not meta_script.correct("99", "99.0", False)
    assert meta_script.correct("n/a", "n/a", True)               # not an integer: compared as text


@pytest.mark.parametrize("existing, message", [
    ('{"header": 1}\n', "was written with different settings (no settings header)"),
    ('[1]\n', "was written with different settings (no settings header)"),
    (None, "out.jsonl:2: not a result line this script writes"),   # the real header, then a torn line
])
def test_refuses_an_output_file_it_did_not_write(tmp_path, capsys, existing, message):
    data = dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out.jsonl"
    header = json.dumps({"header": meta_script.settings(meta_script.parse_args(argv(data, out)), data,
                                                        models.load("tiny-arith"))})
    out.write_text(existing or header + '\n{"id": "q0", "ans\n{"id": "q1"}\n')
    assert meta_script.main(argv(data, out)) == 2
    assert message in capsys.readouterr().err


# --- one output, one run; nothing doubled, nothing from another model -------------------------

def fake_results(out: Path, data: Path, extra=(), model="tiny-arith") -> None:
    """``out`` with the real header and a result line for every dataset prompt (then ``extra`` lines)."""
    header = meta_script.settings(meta_script.parse_args(argv(data, out) + ["--model", model]), data,
                                  models.load(model))
    rows = [{"id": f"q{i}", "correct": True, "tokens": 3} for i in range(len(PROBLEMS))] + list(extra)
    out.write_text("".join(json.dumps(r) + "\n" for r in [{"header": header}, *rows]))


def test_two_concurrent_runs_on_one_output_write_each_prompt_once(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p.prompt, "answer": p.answer}) + "\n"
                            for i, p in enumerate(PROBLEMS[:4])))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "scripts.meta", *argv(data, out)[:-2], "--n", "2"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    ids = [r["id"] for r in lines(out)[1:]]
    assert sorted(ids) == ["q0", "q1", "q2", "q3"]               # 8 lines, each prompt twice, before
    for proc, err in zip(procs, errs):                          # one refuses (or, had they not overlapped, resumes)
        assert proc.returncode in (0, 2), err[-2000:]
        if proc.returncode == 2:
            assert err.strip().splitlines()[-1] == f"error: {out} is being written by another run (it holds the " \
                                                   "file's lock); wait for it to finish, or use another --out"
    assert 0 in [p.returncode for p in procs]


def test_an_output_locked_by_another_run_is_refused(tmp_path, capsys):
    import fcntl
    data = dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out.jsonl"
    with open(out, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert meta_script.main(argv(data, out)) == 2
    assert "is being written by another run" in capsys.readouterr().err
    assert out.read_text() == ""


@pytest.mark.parametrize("extra, message", [
    # accepted: the summary counted 9 prompts
    ([{"id": "q3", "correct": False, "tokens": 5}], "out.jsonl:10: a second result for id 'q3' (the first is on line 5)"),
    # accepted, then the summary crashed: KeyError: 'correct'
    ([{"id": "zzz"}], "out.jsonl:10: not a result line this script writes"),
    ([{"id": "zzz", "correct": True, "tokens": 1}], "out.jsonl:10: not a result line this script writes"),
])
def test_refuses_an_output_with_results_it_could_not_have_written(tmp_path, capsys, extra, message):
    data, out = dataset(tmp_path / "data.jsonl"), tmp_path / "out.jsonl"
    fake_results(out, data, extra)
    assert meta_script.main(argv(data, out)) == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_another_model_at_the_same_path(tmp_path, capsys):
    import jax
    shutil.copytree(zoo.ROOT / "tiny-arith", tmp_path / "m")
    data, out = dataset(tmp_path / "data.jsonl"), tmp_path / "out.jsonl"
    fake_results(out, data, model=str(tmp_path / "m"))
    assert meta_script.main(argv(data, out) + ["--model", str(tmp_path / "m")]) == 0   # resumed: all there
    model = models.load(tmp_path / "m")
    models.Model(model.config, jax.tree.map(lambda x: x * 1.01, model.params), model.tokenizer).save(tmp_path / "m")
    before = out.read_text()
    assert meta_script.main(argv(data, out) + ["--model", str(tmp_path / "m")]) == 2   # mixed two models, before
    assert "was written with different settings (model_fingerprint)" in capsys.readouterr().err
    assert out.read_text() == before


# --- refused before the header is written --------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--n", "1000000000"], "error: n=1000000000 rollouts for each of 2 prompts cannot fit: their sampler settings "
                            "alone ([2, n] arrays) need"),            # OOM-killed after writing the header, before
    (["--n", "100000000"], "error: --n 100000000: 100000000 rollouts of one prompt need"),
    (["--seed", str(2 ** 64)], "error: --seed must fit in 64 bits (signed), got 18446744073709551616"),
])
def test_refuses_what_cannot_run_before_writing_the_header(tmp_path, capsys, extra, message):
    data, out = dataset(tmp_path / "data.jsonl"), tmp_path / "out.jsonl"
    assert meta_script.main(argv(data, out) + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()                                     # so a rerun with a sane setting is not refused


def test_a_huge_n_is_a_value_error_in_the_library():
    import meta
    with pytest.raises(ValueError) as err:                      # a JaxRuntimeError (or the OOM killer) before
        meta.self_consistency(models.load("tiny-arith"), [PROBLEMS[0].prompt], n=2 ** 40)
    assert "n=1099511627776 rollouts for each of 1 prompts cannot fit" in str(err.value)


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', "data.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)"),
    (b'{"prompt": "a\\ud800b"}\n', "data.jsonl:1: \"prompt\" is not valid Unicode text (surrogates not allowed"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "data.jsonl:1: not valid JSON (nested too deeply)"),
])
def test_refuses_undecodable_dataset_lines_by_file_and_line(tmp_path, capsys, raw, message):
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_bytes(raw)
    assert meta_script.main(argv(data, out)) == 2              # no file or line, a RuntimeError, a RecursionError
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_non_utf8_path_and_a_lone_surrogate_are_one_error_line(tmp_path):
    data = os.fsencode(tmp_path) + b"/d\xff.jsonl"             # argv bytes that are not UTF-8
    with open(data, "wb") as f:
        f.write(b'{"prompt": "Q: \\udc00?"}\n')
    out = subprocess.run([sys.executable, "-m", "scripts.meta", "self_consistency", "--data", data, "--out",
                          os.fsencode(tmp_path) + b"/o\xff.jsonl"], cwd=ROOT, env=subprocess_env(),
                         capture_output=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.decode().splitlines() == [
        f"error: {tmp_path}/d\\udcff.jsonl:1: \"prompt\" is not valid Unicode text (surrogates not allowed at "
        "character 4: an escaped lone surrogate such as \\ud800)"]


FEEDBACK = """
from meta.tasks import arith_verifiers

def fb(prompt, attempt):
    if prompt == {bad!r}:
        raise RuntimeError("checker crashed")
    return arith_verifiers.feedback(prompt, attempt)
"""


def test_refine_isolates_a_prompt_whose_feedback_raises(tmp_path, monkeypatch):
    (tmp_path / "my_feedback.py").write_text(FEEDBACK.format(bad=PROBLEMS[5].prompt))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = dataset(tmp_path / "data.jsonl")
    extra = ["--temperature", "0.8"]
    assert meta_script.main(argv(data, tmp_path / "ref.jsonl", method="refine", extra=extra)) == 0
    flags = extra + ["--feedback", "my_feedback:fb"]
    assert meta_script.main(argv(data, tmp_path / "out.jsonl", method="refine", extra=flags)) == 0
    ref, out = lines(tmp_path / "ref.jsonl")[1:], lines(tmp_path / "out.jsonl")[1:]
    assert sorted(r["id"] for r in out) == [f"q{i}" for i in range(8)]            # every prompt once
    failed = next(r for r in out if r["id"] == "q5")
    assert failed["correct"] is False and "feedback raised on prompt 1" in failed["error"]
    assert "RuntimeError('checker crashed')" in failed["error"]
    by_id = {r["id"]: r for r in out}
    for r in ref:                       # the other chunks' draws are the run's without the failure
        if r["id"] not in ("q4", "q5"):
            assert by_id[r["id"]] == r
    assert by_id["q4"]["rollouts"] and by_id["q4"]["info"]["feedback"] is not None   # its chunk ran again without q5


def test_backtrack_runs_from_the_script_as_the_library_does(tmp_path):
    import meta
    from sampling import Sampler
    data, out = dataset(tmp_path / "data.jsonl"), tmp_path / "out.jsonl"
    flags = ["--scorer", "model", "--scorer-model", "tiny-arith-prm", "--max-steps", "8", "--threshold", "0.3"]
    assert meta_script.main(argv(data, out, method="backtrack", extra=flags)) == 0
    got = lines(out)[1:3]
    r = meta.backtrack(models.load("tiny-arith"), [p.prompt for p in PROBLEMS[:2]], n=4, seed=0,
                       scorer=models.load("tiny-arith-prm"), threshold=0.3, max_backtracks=2, max_steps=8,
                       max_new_tokens=56, sampler=Sampler(), references=[p.answer for p in PROBLEMS[:2]],
                       answer=arith.answer)
    assert [g["answer"] for g in got] == r.answers
    assert [g["info"]["backtracks"] for g in got] == [i["backtracks"] for i in r.info]


def test_a_program_dataset_is_graded_by_its_reference_program(tmp_path, capsys):
    """tiny-program's dataset answer is a right program's text: the chosen rollout is run against it."""
    from types import SimpleNamespace
    from meta.tasks import program
    p = program.held_out("test", "hard", 1)[0]
    args = SimpleNamespace(task="tiny-program", answer="arith")
    result = SimpleNamespace(prompts=[p.prompt], texts=[[p.solution, "sort"]], chosen=[0], answers=[None])
    assert meta_script.grade(args, result, 0, p.random_solution(random.Random(1))) is True
    result.chosen = [1]
    assert meta_script.grade(args, result, 0, p.solution) is False
    result.chosen = [None]
    assert meta_script.grade(args, result, 0, p.solution) is False
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text(json.dumps({"prompt": p.prompt, "answer": p.solution}) + "\n"
                    + json.dumps({"prompt": p.prompt, "answer": "sortt"}) + "\n")
    assert meta_script.main(argv(data, out, extra=["--task", "tiny-program", "--model", "tiny-arith"])) == 2
    assert "data.jsonl:2: the reference program of" in capsys.readouterr().err and not out.exists()
