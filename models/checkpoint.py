"""Loading and saving models: Hugging Face directories (safetensors only) and rollax's own (orbax)."""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models import hub, safetensors, zoo
from models.config import FAMILIES, Config, float_dtype, from_hf
from models.files import read_json
from models.memory import memory_bytes
from models.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer
from models.placement import abstract_params, hf_to_mesh, shard_params
from models.transformer import forward, score, with_layout

ROLLAX_META = "rollax.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclasses.dataclass
class Model:
    """A config, its params (pytree) and an optional tokenizer; ``forward`` is the model step."""
    config: Config
    params: dict
    tokenizer: Tokenizer | None = None
    forward = staticmethod(forward)
    score = staticmethod(score)         # the scalar head's step (a reward model: config.score_head)

    def shard(self, mesh) -> "Model":
        """This model with its params placed on ``mesh`` by their logical axes (``sharding.RULES``)."""
        return dataclasses.replace(self, params=shard_params(self.config, self.params, mesh))

    def with_layout(self, scan_layers: bool) -> "Model":
        """This model with its layers stacked under a ``lax.scan`` (``scan_layers=True``) or one dict of
        weights per layer, unrolled (``False``); the same numbers either way (``Config.scan_layers``)."""
        if not isinstance(scan_layers, bool):
            raise ValueError(f"scan_layers must be True or False, got {scan_layers!r}")
        if scan_layers == self.config.scan_layers:
            return self
        config, params = with_layout(self.config, self.params, scan_layers)
        mesh = getattr(getattr(jax.tree.leaves(self.params)[0], "sharding", None), "mesh", None)
        if isinstance(mesh, jax.sharding.Mesh):                     # a model on a mesh stays on it
            params = shard_params(config, params, mesh)
        return dataclasses.replace(self, config=config, params=params)

    def save(self, path) -> None:
        """Write rollax's own checkpoint to the directory ``path``: the params with orbax, the config,
        the tokenizer file, and the SHA-256 of every weight and every file (``models.load`` checks them).
        The layers are saved one dict each whatever the model's layout (``models.load`` chooses it).

        The checkpoint is written beside ``path``, in a hidden ``.NAME.partial-*`` directory, and then
        takes ``path``'s place in one atomic step: killed at any moment, ``path`` holds the old
        checkpoint or the new one, never a mix (a killed save leaves only its hidden directory behind).
        An existing ``path`` must be empty or a rollax checkpoint (files in it that are not the
        checkpoint's are kept); anything else is refused, not replaced. So are params that do not match
        the config, and a tokenizer without a file to save.
        """
        if self.config.scan_layers:                          # checkpoints hold the layers one by one
            return self.with_layout(False).save(path)
        path = Path(path).absolute()
        self._check_saveable(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:12]}")
        partial.mkdir()
        try:
            self._write(partial, path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _swap_in(partial, path)

    def _check_saveable(self, path: Path) -> None:
        """A ``ValueError`` for what :meth:`save` refuses, before anything is written."""
        have, want = _shapes(self.params), _shapes(abstract_params(self.config))
        wrong = [f"{k}: params {have.get(k)}, config {want.get(k)}" for k in sorted(have.keys() | want.keys())
                 if have.get(k) != want.get(k)]
        if wrong:
            raise ValueError(f"the params do not match the config ({len(wrong)} weights, as (shape, dtype); None: "
                             f"absent): {'; '.join(wrong[:4])}")
        if self.tokenizer is not None and getattr(self.tokenizer, "path", None) is None and not hasattr(self.tokenizer, "save"):
            raise ValueError(f"the tokenizer ({type(self.tokenizer).__name__}) has no file to save (no .path to a "
                             f"tokenizer.json or sentencepiece .model); save the model with tokenizer=None")
        if path.exists() and not (path.is_dir() and ((path / ROLLAX_META).is_file() or not any(path.iterdir()))):
            raise ValueError(f"{path} exists and is not a rollax checkpoint (no {ROLLAX_META}); Model.save replaces "
                             f"only a rollax checkpoint or an empty directory: choose another path")

    def _write(self, out: Path, old: Path) -> None:
        """Write the checkpoint into the new directory ``out``, keeping the files of ``old`` (the
        checkpoint it replaces, if any) that are not the checkpoint's own; ``rollax.json`` goes last."""
        import orbax.checkpoint as ocp
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(out / "params", self.params)
        written = ()
        if self.tokenizer is not None:
            name = out / TOKENIZER_FILES[isinstance(self.tokenizer, SentencePieceTokenizer)]
            if hasattr(self.tokenizer, "save"):
                written = tuple(self.tokenizer.save(name))
            else:
                shutil.copy(self.tokenizer.path, name)
        if old.is_dir():
            for p in old.iterdir():
                if p.name not in (ROLLAX_META, "params", *TOKENIZER_FILES, *written):
                    (shutil.copytree if p.is_dir() else shutil.copy2)(p, out / p.name)
        meta = {"family": self.config.family, "config": _config_fields(self.config),
                "sha256": hash_checkpoint(out, self.params)}
        (out / ROLLAX_META).write_text(json.dumps(meta, indent=1))

    def fingerprint(self) -> str:
        """SHA-256 of what the model computes from: its config, every weight, and its tokenizer file (the
        same for both layer layouts)."""
        h = hashlib.sha256(json.dumps(_config_fields(self.config), sort_keys=True).encode())
        h.update(json.dumps(tensor_hashes(self.with_layout(False).params), sort_keys=True).encode())
        if getattr(self.tokenizer, "path", None) is not None:
            h.update(Path(self.tokenizer.path).read_bytes())
        elif hasattr(self.tokenizer, "tok"):                    # built in memory (a GGUF file's)
            h.update(self.tokenizer.tok.to_str().encode())
        return h.hexdigest()


def _config_fields(config: Config) -> dict:
    """The config's fields, less its layer layout (``scan_layers``: a choice at load time, not part of
    the model), as checkpoints and fingerprints record them."""
    fields = dataclasses.asdict(config)
    del fields["scan_layers"]
    return fields


def hash_checkpoint(directory: Path, params) -> dict:
    """What ``rollax.json`` records of the checkpoint in ``directory``: the SHA-256 of each of its
    files (``params/`` and the tokenizer) and of each weight in ``params``."""
    files = [f for f in (p.relative_to(directory).as_posix() for p in sorted(directory.rglob("*")) if p.is_file())
             if f.startswith("params/") or f in TOKENIZER_FILES]
    return {"files": {f: _file_sha256(directory / f) for f in files}, "tensors": tensor_hashes(params)}


def tensor_hashes(params) -> dict[str, str]:
    """The SHA-256 of each weight's bytes (C order, in its dtype), keyed by its path in the tree."""
    def digest(x):
        return hashlib.sha256(np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)).hexdigest()
    return {jax.tree_util.keystr(k): digest(x) for k, x in jax.tree_util.tree_leaves_with_path(params)}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _swap_in(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path`` in one step: renamed there if ``path`` is absent or
    empty, else exchanged with the old directory, which is then deleted."""
    try:
        os.rename(new, path)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    _exchange(new, path)
    shutil.rmtree(new)


def _exchange(a: Path, b: Path) -> None:
    """Swap the directories ``a`` and ``b`` atomically: Linux's ``renameat2(RENAME_EXCHANGE)``. Where
    the system or file system lacks it, ``b`` is moved aside and ``a`` renamed to ``b``: a kill
    between those two renames leaves no directory at ``b`` (the old one is at ``a``'s name + ".old")."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if os.name == "posix" else None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = a.with_name(a.name + ".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def _hf_layout(config: Config) -> dict[str, tuple[tuple, str, int | None, callable]]:
    """HF tensor name -> (HF shape, rollax param key, layer or None, HF array -> rollax array)."""
    d, h, k, dh, f, v = (config.hidden, config.heads, config.kv_heads, config.head_dim,
                         config.intermediate, config.vocab_size)
    ident = lambda x: x
    proj = lambda n: lambda x: x.T.reshape(d, n, dh)
    table = {"model.embed_tokens.weight": ((v, d), "embed", None, ident),
             "model.norm.weight": ((d,), "final_norm", None, ident)}
    if not config.tie_embeddings:
        table["lm_head.weight"] = ((v, d), "lm_head", None, lambda x: x.T)
    if config.score_head:
        table["score.weight"] = ((1, d), "score", None, lambda x: x.reshape(d))
    for i in range(config.layers):
        p = f"model.layers.{i}."
        table |= {
            p + "input_layernorm.weight": ((d,), "attn_norm", i, ident),
            p + "self_attn.q_proj.weight": ((h * dh, d), "wq", i, proj(h)),
            p + "self_attn.k_proj.weight": ((k * dh, d), "wk", i, proj(k)),
            p + "self_attn.v_proj.weight": ((k * dh, d), "wv", i, proj(k)),
            p + "self_attn.o_proj.weight": ((d, h * dh), "wo", i, lambda x: x.T.reshape(h, dh, d)),
            p + "mlp.gate_proj.weight": ((f, d), "w_gate", i, lambda x: x.T),
            p + "mlp.up_proj.weight": ((f, d), "w_up", i, lambda x: x.T),
            p + "mlp.down_proj.weight": ((d, f), "w_down", i, lambda x: x.T),
        }
        if config.sandwich_norms:     # Gemma: post_attention_layernorm is the attention output's
            table |= {p + "post_attention_layernorm.weight": ((d,), "attn_out_norm", i, ident),
                      p + "pre_feedforward_layernorm.weight": ((d,), "mlp_norm", i, ident),
                      p + "post_feedforward_layernorm.weight": ((d,), "mlp_out_norm", i, ident)}
        else:
            table[p + "post_attention_layernorm.weight"] = ((d,), "mlp_norm", i, ident)
        if config.qk_norm:
            table |= {p + "self_attn.q_norm.weight": ((dh,), "q_norm", i, ident),
                      p + "self_attn.k_norm.weight": ((dh,), "k_norm", i, ident)}
        if config.qkv_bias:
            table |= {p + "self_attn.q_proj.bias": ((h * dh,), "bq", i, lambda x: x.reshape(h, dh)),
                      p + "self_attn.k_proj.bias": ((k * dh,), "bk", i, lambda x: x.reshape(k, dh)),
                      p + "self_attn.v_proj.bias": ((k * dh,), "bv", i, lambda x: x.reshape(k, dh))}
    return table


def _hf_tensors(path: Path) -> dict[str, np.ndarray]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        return safetensors.read(single)
    if index.exists():
        meta = read_json(index)
        weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map (tensor name -> file)")
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not (path / f).is_file()]
        if absent:
            raise ValueError(f"{index} names shard files that are not in {path}: {absent[:8]}")
        return {k: x for f in files for k, x in safetensors.read(path / f).items()}
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{path} holds only pickle weights ({', '.join(pickles)}); rollax never unpickles. "
                         "Convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)).")
    raise ValueError(f"{path} has no model.safetensors or model.safetensors.index.json")


def _tokenizer(path: Path, config: Config) -> Tokenizer | None:
    return _fitting(load_tokenizer(path, config), config, path)


def _fitting(tok: Tokenizer | None, config: Config, source) -> Tokenizer | None:
    """``tok``, refused where it has more tokens than the model's vocabulary."""
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise ValueError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model's vocab_size {config.vocab_size}")
    return tok


def load_hf(path, dtype=None, mesh=None) -> Model:
    """Read a Hugging Face directory (``config.json`` + safetensors, tokenizer if present).

    With a ``mesh``, every device's block of every weight is read straight from the file.
    """
    path = Path(path)
    config = _hf_config(read_json(path / "config.json"), dtype, mesh, path / "config.json")
    config, params = _hf_params(config, _hf_tensors(path), path, mesh)
    return Model(config, params, _tokenizer(path, config))


def load_gguf(path, dtype=None, mesh=None) -> Model:
    """Read a GGUF file (``models.gguf``): its config and tokenizer from the metadata, its weights
    dequantized to float32, then built as from a Hugging Face directory."""
    from models import gguf
    hf, tensors, tokenizer = gguf.read(path)
    config = _hf_config(hf, dtype, mesh, path)
    config, params = _hf_params(config, tensors, path, mesh)
    return Model(config, params, _fitting(tokenizer, config, path))


def _hf_config(hf: dict, dtype, mesh, source) -> Config:
    """The rollax config of a ``config.json`` dict, in ``dtype``, checked to fit the memory."""
    config = from_hf(hf)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=jnp.dtype(dtype).name)
    check_fits(config, mesh, source)
    return config


def _hf_params(config: Config, tensors: dict, path, mesh=None) -> tuple[Config, dict]:
    """(config, params) from HF-named ``tensors`` (arrays; read from ``path``), on ``mesh`` if given; the
    config unties the LM head where a saved one differs from the embedding."""
    head, embed = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if config.tie_embeddings and not config.score_head and head is not None and not np.array_equal(head, embed):
        config = dataclasses.replace(config, tie_embeddings=False)  # as transformers: a saved head that differs
    table = _hf_layout(config)                                      # from the embedding is not tied to it
    ignored = {"lm_head.weight"} if config.tie_embeddings else set()  # tied copies may be saved too
    unexpected = sorted(set(tensors) - set(table) - ignored)
    missing = sorted(set(table) - set(tensors))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config.json: missing tensors {missing[:8]}, "
                         f"unexpected tensors {unexpected[:8]}")
    ints = [f"{name} ({tensors[name].dtype})" for name in table if not jnp.issubdtype(tensors[name].dtype, jnp.floating)]
    if ints:                                   # a float tensor relabelled as I32 would be cast to garbage
        raise ValueError(f"checkpoint {path}: weights must be floating point, got {', '.join(ints[:4])}")
    if mesh is not None:
        return config, hf_to_mesh(tensors, table, config, mesh)
    params = {"layers": [{} for _ in range(config.layers)]}
    for name, (shape, key, layer, convert) in table.items():
        x = tensors[name]
        if tuple(x.shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(x.shape)}, expected {shape} from config.json")
        (params if layer is None else params["layers"][layer])[key] = jnp.asarray(convert(x), config.dtype)
    return config, params


def _shapes(tree) -> dict[str, tuple]:
    """``{"['layers'][0]['wq']": (shape, dtype name), ...}`` of a tree of arrays or array metadata."""
    return {jax.tree_util.keystr(k): (tuple(x.shape), jnp.dtype(x.dtype).name)
            for k, x in jax.tree_util.tree_leaves_with_path(tree)}


def load_rollax(path, dtype=None, mesh=None, verify: bool = True) -> Model:
    """Read a checkpoint written by :meth:`Model.save` (bit-exact); on ``mesh``, each host reads its shards.

    Every file the checkpoint records must be there; with ``verify`` each file's SHA-256 is checked
    before orbax reads anything, and each weight's once it is read.
    """
    import orbax.checkpoint as ocp
    path = Path(path).absolute()
    meta = read_json(path / ROLLAX_META)
    family, fields = (meta.get("family"), meta.get("config")) if isinstance(meta, dict) else (None, None)
    if family not in FAMILIES or not isinstance(fields, dict):
        raise ValueError(f"{path / ROLLAX_META} needs a family ({', '.join(FAMILIES)}) and a config object")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ValueError(f"{path / ROLLAX_META}: unknown config fields {unknown}")
    try:
        config = FAMILIES[family](**fields)
    except TypeError as e:                                   # a missing field
        raise ValueError(f"{path / ROLLAX_META}: bad config: {e}") from None
    check_fits(config, mesh, path / ROLLAX_META)
    hashes = _recorded_hashes(path, meta, verify)
    target = abstract_params(config, mesh)
    if not (path / "params").is_dir():
        raise ValueError(f"{path} has {ROLLAX_META} but no params/ directory")
    with ocp.StandardCheckpointer() as ckpt:  # checked first: orbax may restore a saved shape the config
        saved = _shapes(ckpt.metadata(path / "params").item_metadata)  # does not give, or fail deep inside
        want = _shapes(target)
        if not saved:
            raise ValueError(f"{path}: no readable weight metadata in params/; the checkpoint is damaged or "
                             f"was not completely written")
        if saved.keys() != want.keys():
            raise ValueError(
                f"{path}: the saved weights do not match {ROLLAX_META}'s config: missing "
                f"{sorted(want.keys() - saved.keys())[:4]}, unexpected {sorted(saved.keys() - want.keys())[:4]}. "
                "Checkpoints written by rollax before 2026-11-29 stack the layers ([layers, ...] arrays); "
                "rollax now keeps one dict of weights per layer: re-save with params['layers'] = "
                "[{name: w[i] for name, w in stacked.items()} for i in range(layers)]")
        wrong = [f"{k}: saved {saved[k][0]} {saved[k][1]}, config {v[0]} {v[1]}" for k, v in want.items() if saved[k] != v]
        if wrong:
            raise ValueError(f"{path}: the saved weights do not match {ROLLAX_META}'s config: {'; '.join(wrong[:4])}")
        try:
            params = ckpt.restore(path / "params", target)
        except Exception as e:  # noqa: BLE001 - tensorstore raises a bare Exception for damaged data
            raise ValueError(f"{path}: cannot read the saved weights, the checkpoint is damaged "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
    if hashes and all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(params)):  # else: files checked
        got = tensor_hashes(params)
        bad = sorted(k for k in hashes["tensors"].keys() | got.keys() if hashes["tensors"].get(k) != got.get(k))
        if bad:
            raise ValueError(f"{path}: {len(bad)} weights differ from their recorded SHA-256 ({', '.join(bad[:4])}); "
                             "the checkpoint is damaged")
    model = Model(config, params, _tokenizer(path, config))
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(config.dtype):
        model = Model(dataclasses.replace(config, dtype=jnp.dtype(dtype).name),
                      jax.tree.map(lambda x: x.astype(dtype), params), model.tokenizer)
    return model


def _recorded_hashes(path: Path, meta: dict, verify: bool) -> dict | None:
    """The hashes ``rollax.json`` records (``{"files": {name: sha256}, "tensors": {key: sha256}}``), once
    every recorded file is found there and, with ``verify``, matches its hash; None without ``verify``.
    A checkpoint that records none (written before rollax recorded them) loads only without ``verify``."""
    hashes = meta.get("sha256")
    if hashes is None:
        if verify:
            raise ValueError(f"{path / ROLLAX_META} records no SHA-256 of the weights (a checkpoint written by rollax "
                             "before 2026-12): load it with verify=False, and save it again to record them")
        return None
    digests = lambda d: isinstance(d, dict) and all(isinstance(v, str) for v in d.values())
    if not (isinstance(hashes, dict) and digests(hashes.get("files")) and digests(hashes.get("tensors"))):
        raise ValueError(f"{path / ROLLAX_META}: sha256 must hold files and tensors, each a map of names to hashes")
    missing = [f for f in hashes["files"] if not (path / f).is_file()]
    if missing:
        raise ValueError(f"{path}: files the checkpoint was saved with are missing: {', '.join(missing[:4])}")
    if not verify:
        return None
    bad = [f for f, h in hashes["files"].items() if _file_sha256(path / f) != h]
    if bad:
        raise ValueError(f"{path}: {', '.join(bad[:4])} differ from their recorded SHA-256; the checkpoint is damaged")
    return hashes


def default_scan_layers() -> bool:
    """The layer layout ``load`` gives by default: unrolled on CPU, where the scanned layout's decode
    steps are slower, scanned elsewhere, where it keeps compile time flat in the depth (docs/perf.md)."""
    return jax.default_backend() != "cpu"


def load(path, dtype=None, mesh=None, verify: bool = True, revision: str | None = None,
         scan_layers: bool | None = None) -> Model:
    """Load a model: a directory (rollax's own checkpoint or a Hugging Face one), a ``.gguf`` file, a
    shipped model's name (``"tiny-arith"``) or a Hugging Face hub id (``"org/name"``), tried in that order.

    A hub id is read from ``huggingface_hub``'s cache (``HF_HUB_CACHE`` / ``HF_HOME``), downloaded into
    it first unless ``HF_HUB_OFFLINE=1`` (only the files rollax reads: config, safetensors, tokenizer);
    ``revision`` picks a branch, tag or commit of it. A GGUF file's config and tokenizer come from its
    metadata and its weights are dequantized (``models.gguf``), as ``transformers`` reads it.

    ``dtype`` (e.g. ``jnp.bfloat16``) converts the weights; by default a rollax checkpoint keeps
    the dtype it was saved in and a Hugging Face one is read as float32 (whatever its files hold).
    ``mesh`` (``sharding.make_mesh(...)``) places each weight straight onto its shards, reading
    from disk only each device's part. ``verify`` checks a rollax checkpoint's files and weights
    against the SHA-256 it recorded (``False`` skips the hashing, e.g. for speed; docs/perf.md).
    ``scan_layers`` chooses the layer layout (:meth:`Model.with_layout`; None: :func:`default_scan_layers`).
    Raises ``ValueError`` naming the problem for a missing directory, pickle-only weights, damaged
    files, a missing, unexpected or mis-shaped tensor, a GGUF tensor type that cannot be dequantized,
    a hub id neither cached nor reachable, or a config too large for the memory.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a model directory, a .gguf file, a shipped model's name or a hub id, "
                         f"got {path!r}")
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (sharding.make_mesh(...)) or None, got {mesh!r}")
    if not isinstance(verify, bool):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"revision must be a branch, tag or commit of a hub id (a string) or None, got {revision!r}")
    if scan_layers is not None and not isinstance(scan_layers, bool):
        raise ValueError(f"scan_layers must be True, False or None (the backend's default), got {scan_layers!r}")
    scan_layers = default_scan_layers() if scan_layers is None else scan_layers
    name, path = path, zoo.resolve(path)
    if not path.exists() and hub.is_repo_id(name):
        path = hub.snapshot(name, revision)
    elif revision is not None:
        raise ValueError(f"revision={revision!r} is for a Hugging Face hub id; {name!r} is not one (a local path "
                         f"or shipped model comes first)")
    dtype = None if dtype is None else float_dtype(dtype)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype if dtype is not None else jnp.float32, mesh).with_layout(scan_layers)
    if not path.is_dir():
        raise ValueError(f"no model directory or .gguf file at {path}")
    if (path / ROLLAX_META).exists():
        return load_rollax(path, dtype, mesh, verify).with_layout(scan_layers)
    if (path / "config.json").exists():
        return load_hf(path, dtype if dtype is not None else jnp.float32, mesh).with_layout(scan_layers)
    raise ValueError(f"{path} is neither a rollax checkpoint ({ROLLAX_META}) nor a Hugging Face one (config.json)")


def check_fits(config: Config, mesh, source) -> None:
    """A ``ValueError`` naming ``source`` when the config's weights alone would not fit in the memory
    (``models.memory``): a damaged or mistaken config is refused before anything is built for it."""
    need, have = config.num_params * jnp.dtype(config.dtype).itemsize, memory_bytes(mesh)
    if need > have:
        raise ValueError(f"{source}: the config gives {config.num_params:,} parameters ({config.layers} layers, hidden "
                         f"{config.hidden}, intermediate {config.intermediate}, vocabulary {config.vocab_size}), "
                         f"{need / 2**30:,.1f} GiB in {config.dtype}; the memory is {have / 2**30:,.1f} GiB")
