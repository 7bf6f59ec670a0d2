"""A real multi-process run: two processes on localhost, 4 CPU devices each, one 8-device mesh.

Each process loads a Hugging Face checkpoint straight into its shards, feeds its own block of
the prompts, and must get back every rollout exactly as one process generates them.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

import engine
import models
from sampling import Sampler
from tests.conftest import write_hf

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [[1, 5, 9, 33, 42], [1, 7, 8], [3, 4, 5, 6, 7, 8, 9], [1, 90], [1, 17, 18, 19]]
N, MAX_NEW, SEED, TEMPERATURE = 4, 10, 11, 0.9
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_generate_what_one_process_does(tmp_path):
    write_hf(tmp_path / "model", "llama-gqa")
    (tmp_path / "prompts.txt").write_text("\n".join(" ".join(map(str, p)) for p in PROMPTS) + "\n")
    port = free_port()
    procs = []
    try:
        for pid in range(2):
            env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
                   "ROLLAX_COORDINATOR": f"127.0.0.1:{port}", "ROLLAX_NUM_PROCESSES": "2",
                   "ROLLAX_PROCESS_ID": str(pid), "PYTHONPATH": str(ROOT)}
            cmd = [sys.executable, "-m", "scripts.multihost_generate", "--model", str(tmp_path / "model"), "--ids",
                   "--prompts", str(tmp_path / "prompts.txt"), "--mesh", "data=4,tensor=2", "--n", str(N),
                   "--max-new-tokens", str(MAX_NEW), "--temperature", str(TEMPERATURE), "--seed", str(SEED),
                   "--out", str(tmp_path / "out-{process}.json")]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    model = models.load(tmp_path / "model")
    want = engine.generate(model, PROMPTS, max_new_tokens=MAX_NEW, n=N, seed=SEED,
                           sampler=Sampler(temperature=TEMPERATURE))
    tokens, lengths = np.asarray(want.tokens), np.asarray(want.lengths)
    expected = [[tokens[g, r, :lengths[g, r]].tolist() for r in range(N)] for g in range(len(PROMPTS))]
    assert len({tuple(map(tuple, rows)) for rows in expected}) == len(PROMPTS)   # real, distinct samples
    for pid, own in enumerate([[0, 3], [3, 5]]):
        out = json.loads((tmp_path / f"out-{pid}.json").read_text())
        assert (out["process"], out["processes"], out["devices"]) == (pid, 2, 8)
        assert out["mesh"] == {"data": 4, "tensor": 2} and out["tensor_within_host"]
        assert out["mine"] == own                       # each host fed its own block of prompts
        assert [r["prompt"] for r in out["rollouts"]] == PROMPTS
        assert [r["tokens"] for r in out["rollouts"]] == expected   # ... and got back everyone's results
        printed = [json.loads(line) for line in logs[pid].splitlines() if line.startswith("{")]
        assert [r["prompt"] for r in printed] == PROMPTS[own[0]:own[1]]
