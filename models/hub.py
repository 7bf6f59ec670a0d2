"""Hugging Face hub ids (``"org/name"``) as local directories, through ``huggingface_hub``'s cache."""
from __future__ import annotations

import re
from pathlib import Path

# the files rollax reads from a checkpoint repository (no pickles, no other weight formats)
FILES = ["config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
         "tokenizer_config.json", "generation_config.json", "chat_template.jinja"]
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(name) -> bool:
    """Whether ``name`` has the form of a hub id, ``org/name``."""
    return isinstance(name, str) and REPO_ID.fullmatch(name) is not None and ".." not in name


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The directory of ``repo_id``'s files at ``revision`` (default: main) in the hub cache, downloaded
    first when online (``HF_HUB_OFFLINE=1``: the cache only; ``HF_HUB_CACHE`` / ``HF_HOME`` move it).

    Raises ``ValueError`` naming the id when it is neither cached nor reachable."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        where = (f"not in the hub cache {constants.HF_HUB_CACHE} and HF_HUB_OFFLINE is set"
                 if constants.HF_HUB_OFFLINE else f"not cached in {constants.HF_HUB_CACHE} and not downloadable")
        at = "" if revision is None else f" at revision {revision!r}"
        reason = str(e).splitlines()[0].split(". ")[0][:200]         # its first sentence
        raise ValueError(f"no local model directory {repo_id!r}, and the Hugging Face hub id {repo_id!r}{at} is "
                         f"{where} ({type(e).__name__}: {reason})") from None
