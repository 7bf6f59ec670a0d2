"""models.memory: what the process may really allocate (device limits; on CPU RAM, rlimits, cgroups)."""
import resource
import subprocess
import sys

import pytest

import engine
import models
from models import memory

GiB = 2 ** 30


def _limit(monkeypatch, which, value):
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda r: (value, value) if r == which else real(r))


def _pages(field):
    return int((memory.PROC / "self" / "statm").read_text().split()[field]) * resource.getpagesize()


@pytest.mark.parametrize("which, field", [(resource.RLIMIT_AS, 0), (resource.RLIMIT_DATA, 5)])
def test_an_rlimit_less_what_is_in_use_bounds_it(monkeypatch, which, field):
    memory._trim()                                           # what host_bytes gives back first
    _limit(monkeypatch, which, _pages(field) + GiB)          # 1 GiB more than the process has now
    assert GiB - 2 ** 27 < memory.host_bytes() <= GiB         # the host's RAM, before


def test_the_engine_refuses_a_state_past_the_rlimit(monkeypatch):
    model = models.load("tiny-arith")
    _limit(monkeypatch, resource.RLIMIT_DATA, _pages(5) + GiB)
    with pytest.raises(ValueError) as err:                    # an allocation failure inside XLA, before
        engine.start(model, [[1, 5]], capacity=128, n=2 ** 16)
    assert "of decoding state (KV cache, logits); the memory is 1.0 GiB" in str(err.value)


def _fake_system(tmp_path, monkeypatch, cgroup_line, files):
    """/proc/self/cgroup saying ``cgroup_line`` and cgroup files ``{path: text}`` under a fake /sys/fs/cgroup."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup_line)
    for name, text in files.items():
        (tmp_path / "cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cgroup" / name).write_text(text)
    monkeypatch.setattr(memory, "PROC", tmp_path / "proc")
    monkeypatch.setattr(memory, "CGROUP", tmp_path / "cgroup")


def test_a_cgroup_v2_limit_of_the_process_or_a_parent_bounds_it(tmp_path, monkeypatch):
    _fake_system(tmp_path, monkeypatch, "0::/job/step\n", {
        "job/memory.max": f"{3 * GiB}\n", "job/memory.current": f"{GiB}\n",            # binds: 2 GiB left
        "job/step/memory.max": "max\n", "job/step/memory.current": f"{GiB}\n"})       # no limit of its own
    assert memory.host_bytes() == 2 * GiB


def test_a_cgroup_v1_memory_limit_bounds_it(tmp_path, monkeypatch):
    _fake_system(tmp_path, monkeypatch, "5:cpu:/x\n4:memory:/job\n", {
        "memory/job/memory.limit_in_bytes": f"{2 * GiB}\n", "memory/job/memory.usage_in_bytes": f"{GiB // 2}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": f"{GiB}\n"})
    assert memory.host_bytes() == 3 * GiB // 2


TRIM = """
import os, numpy as np
from models import memory
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
np.ones(4 << 20, np.uint8)                            # freed at once: glibc's mmap threshold rises past 4 MB
held = [np.ones(4 << 20, np.uint8) for _ in range(100)]         # 400 MB from the heap
last, held = held[-1], None                           # all freed but the last, which pins the heap's top
before = rss()
memory.host_bytes()
print(before - rss())
"""


def test_memory_this_process_freed_counts_as_available():
    # glibc keeps freed buffers (XLA's CPU arrays among them) in the process: the check gives them back first
    if getattr(memory._libc(), "malloc_trim", None) is None:
        pytest.skip("the C library has no malloc_trim (not glibc): nothing to give back")
    out = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 300 * 2 ** 20
