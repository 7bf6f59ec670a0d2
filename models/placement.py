"""Params on a device mesh: their shardings, and checkpoints read straight into shards.

Each weight's logical axes (:func:`models.param_axes`) go through ``sharding``'s rules to a
``NamedSharding``. Loading builds every array with ``jax.make_array_from_callback``: each
device's block is cut from the memory-mapped safetensors tensor, reading only the rows and
columns that block needs, so the whole model is never gathered on one device or in one
host's memory.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import sharding
from models.config import Config
from models.transformer import param_axes, param_shapes

_is_shape = lambda x: isinstance(x, tuple)


def param_shardings(config: Config, mesh, rules=sharding.RULES) -> dict:
    """``NamedSharding`` of every weight on ``mesh``, as a pytree shaped like the params."""
    return sharding.logical_to_sharding(param_axes(config), mesh, rules, param_shapes(config))


def abstract_params(config: Config, mesh=None, dtype=None) -> dict:
    """``ShapeDtypeStruct`` of every weight (with its sharding on ``mesh`` when given)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shapes = param_shapes(config)
    if mesh is None:
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shapes, is_leaf=_is_shape)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s, dtype, sharding=sh), shapes,
                        param_shardings(config, mesh), is_leaf=_is_shape)


def shard_params(config: Config, params: dict, mesh, rules=sharding.RULES) -> dict:
    """``params`` placed on ``mesh`` by their logical axes (arrays already placed so are kept)."""
    return sharding.place(params, param_axes(config), mesh, rules)


def _range(s: slice, size: int) -> tuple[int, int]:
    start, stop, step = s.indices(size)
    if step != 1:
        raise ValueError(f"strided shard index {s} is not supported")
    return start, stop


def read_block(key: str, x: np.ndarray, index: tuple, shape: tuple, convert) -> np.ndarray:
    """Block ``index`` (slices, one per axis of ``shape``) of ``convert(x)``, reading only its part of ``x``.

    ``x`` is the Hugging Face tensor (memory-mapped), ``shape`` the rollax shape of one layer's
    weight ``key``. Known layouts (identity, transpose, fused heads) are cut before converting;
    any other falls back to converting the whole tensor.
    """
    r = [_range(s, n) for s, n in zip(index, shape)]
    sl = [slice(a, b) for a, b in r]
    if key in ("embed", "final_norm", "attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm", "q_norm",
               "k_norm"):                                                   # y = x
        return np.asarray(x[tuple(sl)])
    if key in ("lm_head", "w_gate", "w_up", "w_down"):                      # y = x.T
        return np.asarray(x[sl[1], sl[0]]).T
    if key in ("wq", "wk", "wv"):                                           # x [n*dh, d] -> y [d, n, dh]
        (d0, d1), (n0, n1), _ = r
        dh = shape[2]
        return np.asarray(x[n0 * dh:n1 * dh, d0:d1]).T.reshape(d1 - d0, n1 - n0, dh)[:, :, sl[2]]
    if key == "wo":                                                         # x [d, h*dh] -> y [h, dh, d]
        (h0, h1), _, (d0, d1) = r
        dh = shape[1]
        return np.asarray(x[d0:d1, h0 * dh:h1 * dh]).T.reshape(h1 - h0, dh, d1 - d0)[:, sl[1], :]
    if key in ("bq", "bk", "bv"):                                           # x [n*dh] -> y [n, dh]
        (n0, n1), _ = r
        dh = shape[1]
        return np.asarray(x[n0 * dh:n1 * dh]).reshape(n1 - n0, dh)[:, sl[1]]
    return np.asarray(convert(x))[tuple(sl)]


def hf_to_mesh(tensors: dict, layout: dict, config: Config, mesh) -> dict:
    """Params on ``mesh`` from HF ``tensors`` and the ``layout`` (see ``checkpoint._hf_layout``).

    Raises ``ValueError`` for a tensor whose shape differs from the layout's.
    """
    for name, (shape, *_rest) in layout.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                             "from config.json")
    dtype = jnp.dtype(config.dtype)
    shapes, shardings = param_shapes(config), param_shardings(config, mesh)
    params = {"layers": [{} for _ in range(config.layers)]}
    for name, (_, key, layer, convert) in layout.items():
        at = (lambda tree: tree) if layer is None else (lambda tree: tree["layers"][layer])
        at(params)[key] = _from_blocks(key, tensors[name], at(shapes)[key], at(shardings)[key], convert, dtype)
    return params


def _from_blocks(key, x, shape, target, convert, dtype):
    """One weight placed with sharding ``target``, each device's block read from HF tensor ``x``."""
    return jax.make_array_from_callback(shape, target,
                                        lambda index: read_block(key, x, index, shape, convert).astype(dtype))
