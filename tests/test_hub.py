"""Hugging Face hub ids: ``models.load("org/name")`` reads ``huggingface_hub``'s cache (offline here: a
cache directory the test builds in the hub's layout), a local path first; an id neither cached nor
reachable is a ``ValueError`` naming it."""
import hashlib
import os

import jax
import numpy as np
import pytest

import models
from tests.conftest import write_hf

hub = pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(root, repo_id, source, commit=COMMIT):
    """``source``'s files in the hub cache ``root`` as ``huggingface_hub`` lays them out: each file a blob
    named by its hash, linked from ``snapshots/<commit>/``, and ``refs/main`` naming the commit."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in source.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, repo / "snapshots" / commit), repo / "snapshots" / commit / f.name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    write_hf(path, "llama-gqa")
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The hub cache at ``tmp_path / "hub"``, offline: what ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` set
    when ``huggingface_hub`` is imported."""
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def _same(a, b):
    assert a.config == b.config
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a.params, b.params)))


def test_a_cached_hub_id_loads_as_its_directory(checkpoint, offline):
    _cache(offline, "org/tiny", checkpoint)
    direct = models.load(checkpoint)
    _same(models.load("org/tiny"), direct)
    _same(models.load("org/tiny", revision=COMMIT), direct)


def test_a_local_directory_comes_before_a_hub_id(checkpoint, offline, tmp_path, monkeypatch):
    _cache(offline, "org/tiny", checkpoint)
    monkeypatch.chdir(tmp_path)
    write_hf(tmp_path / "org" / "tiny", "llama-gqa", seed=1)
    _same(models.load("org/tiny"), models.load(tmp_path / "org" / "tiny"))


def test_a_hub_id_not_cached_offline_is_named(offline):
    with pytest.raises(ValueError) as e:
        models.load("org/absent")
    assert "'org/absent'" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


def test_a_hub_id_neither_cached_nor_reachable_is_named(tmp_path, monkeypatch):
    """Online, but the hub does not answer (its address is a closed local port)."""
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError) as e:
        models.load("org/absent", revision="v1")
    assert "'org/absent' at revision 'v1'" in str(e.value) and "not downloadable" in str(e.value)


def test_a_revision_of_what_is_not_a_hub_id_is_refused(checkpoint):
    with pytest.raises(ValueError) as e:
        models.load(checkpoint, revision="main")
    assert "revision='main'" in str(e.value) and "hub id" in str(e.value)
