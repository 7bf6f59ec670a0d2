"""The scripts' persistent compilation cache (``scripts.cli.compile_cache``): a second run compiles nothing."""
import os
import subprocess
import sys
from pathlib import Path

import jax

from scripts import cli

ROOT = Path(__file__).resolve().parents[1]
HIT = "Persistent compilation cache hit"
COMPILED = "Finished XLA compilation"


def generate(env):
    cmd = [sys.executable, "-m", "scripts.generate", "--model", "tiny-arith", "--prompt", "12+7=",
           "--max-new-tokens", "4"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**env, "JAX_LOG_COMPILES": "1"})
    assert out.returncode == 0, out.stderr
    return out


def test_a_second_run_loads_every_program_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (cli.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR")}
    first = generate({**env, "XDG_CACHE_HOME": str(tmp_path)})           # the default place
    where = tmp_path / "rollax" / "jax"
    entries = sorted(p.name for p in where.iterdir())
    assert len(entries) == first.stderr.count(COMPILED) > 0 and HIT not in first.stderr
    second = generate({**env, cli.CACHE_ENV: str(where)})                 # the same place, named
    assert sorted(p.name for p in where.iterdir()) == entries             # nothing new written
    assert second.stderr.count(HIT) == second.stderr.count(COMPILED) == len(entries)
    assert second.stdout == first.stdout


def test_the_cache_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cli.CACHE_ENV, "off")
    before = jax.config.jax_compilation_cache_dir
    assert cli.compile_cache() is None and jax.config.jax_compilation_cache_dir == before
