"""The blocks of a stored Jacobian as 2-D matrices: dense ``(prod O, prod V)`` arrays, or
``scipy.sparse`` ones built from a BCOO block's coordinates (never made dense)."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp

from ..sparsity import is_bcoo


def blocks(tree: Any) -> list[tuple[str, Any]]:
    """The leaves of a Jacobian (or value/aux) pytree with their paths, e.g. ``[0]['w']``.

    Dense leaves come back as numpy arrays, BCOO leaves (sparse results) as they are.

    Example:
        >>> [(p, a.shape) for p, a in blocks({"w": np.zeros((2, 3)), "b": np.zeros(2)})]
        [("['b']", (2,)), ("['w']", (2, 3))]
    """
    if tree is None:
        return []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_bcoo)
    return [(jax.tree_util.keystr(path) or "(root)", leaf if is_bcoo(leaf) else np.asarray(leaf))
            for path, leaf in flat]



def block_labels(options: dict) -> dict[str, str]:
    """Names for Jacobian leaf paths, from the run's jacfwd options (variable names, arg index).

    Example:
        >>> block_labels({"grad_vars": ["u", "v"], "argnums": 0})
        {'[0][0]': 'u', '[0][1]': 'v', '[1]': 'arg 0'}
    """
    names, argnums = options.get("grad_vars"), options.get("argnums")
    if names is None and argnums is None:
        argnums = 0
    var = ({"": names} if isinstance(names, str) else
           {f"[{i}]": name for i, name in enumerate(names or [])})
    arg = ({"": f"arg {argnums}"} if isinstance(argnums, int) else
           {f"[{i}]": f"arg {a}" for i, a in enumerate(argnums or [])})
    if names is not None and argnums is not None:
        return {**{f"[0]{k}": v for k, v in var.items()},
                **{f"[1]{k}": v for k, v in arg.items()}}
    return {k or "(root)": v for k, v in (var if names is not None else arg).items()}



def as_matrix(block: np.ndarray, out_ndim: int) -> np.ndarray:
    """A Jacobian block ``O + V`` as the 2D matrix ``(prod O, prod V)`` (magnitudes if complex).

    Example:
        >>> as_matrix(np.ones((2, 3, 4)), out_ndim=1).shape
        (2, 12)
    """
    rows = int(np.prod(block.shape[:out_ndim], dtype=np.int64))
    matrix = block.reshape(rows, -1)
    return np.abs(matrix) if np.iscomplexobj(matrix) else matrix.astype(np.float64)



def sparse_matrix(block: Any, out_ndim: int) -> sp.csr_array:
    """A BCOO Jacobian block ``O + V`` as the ``scipy.sparse`` matrix ``(prod O, prod V)``,
    built from its coordinates (values kept, complex included; repeated indices summed).

    Example:
        >>> from jax.experimental import sparse
        >>> block = sparse.BCOO.fromdense(np.eye(4).reshape(2, 2, 4))
        >>> sparse_matrix(block, out_ndim=2).toarray().astype(int)
        array([[1, 0, 0, 0],
               [0, 1, 0, 0],
               [0, 0, 1, 0],
               [0, 0, 0, 1]])
    """
    if block.n_batch or block.n_dense:
        raise ValueError(f"A Jacobian block must be a BCOO with n_batch=0 and n_dense=0, got "
                         f"n_batch={block.n_batch}, n_dense={block.n_dense}; convert it with "
                         "jax.experimental.sparse.bcoo_update_layout(block, n_batch=0, "
                         "n_dense=0).")
    indices = np.asarray(block.indices, np.int64)
    out_shape, in_shape = block.shape[:out_ndim], block.shape[out_ndim:]
    rows, cols = _flat(indices[:, :out_ndim], out_shape), _flat(indices[:, out_ndim:], in_shape)
    shape = (math.prod(out_shape), math.prod(in_shape))
    data = np.asarray(block.data)
    if data.dtype.kind not in "fc" or data.dtype.itemsize < 4:  # bfloat16, float16: not scipy's
        data = data.astype(np.float32)
    return sp.csr_array((data, (rows, cols)), shape=shape)



def _flat(indices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Row-major flat positions of N-D indices (all 0 for a 0-d shape)."""
    if not shape:
        return np.zeros(indices.shape[0], np.int64)
    return np.ravel_multi_index(tuple(indices.T), shape)
