"""A stored Jacobian as one flat matrix: ``(m, n)`` in ``rayjac.Sparsity``'s order (output
leaves in ``jax.tree_util`` order, each flattened row-major; then the tangent basis: grad_vars
leaves, then argnums leaves), dense or ``scipy.sparse``, never densifying a sparse one."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp

from ..sparsity import is_bcoo


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
    return _csr(np.asarray(block.indices, np.int64), np.asarray(block.data), block.shape,
                out_ndim)


def _csr(indices: np.ndarray, data: np.ndarray, shape: tuple, out_ndim: int) -> sp.csr_array:
    out_shape, in_shape = tuple(shape[:out_ndim]), tuple(shape[out_ndim:])
    rows, cols = _flat(indices[:, :out_ndim], out_shape), _flat(indices[:, out_ndim:], in_shape)
    if data.dtype.kind not in "fc" or data.dtype.itemsize < 4:  # bfloat16, float16: not scipy's
        data = data.astype(np.float32)
    return sp.csr_array((data, (rows, cols)), shape=(math.prod(out_shape), math.prod(in_shape)))


def _flat(indices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Row-major flat positions of N-D indices (all 0 for a 0-d shape)."""
    if not shape:
        return np.zeros(indices.shape[0], np.int64)
    return np.ravel_multi_index(tuple(indices.T), shape)


def flat_matrix(jacobian: Any, blocks: list[dict], points: int | None, point: int | None
                ) -> Any:
    """The flat ``(m, n)`` Jacobian from stored blocks (``blocks``: the metadata's list, in
    ``jax.tree_util`` order, with each block's output and input leaf); at ``point`` of a map."""
    if points is None and point is not None:
        raise ValueError(f"point={point!r}: this result holds one point; call matrix() "
                         "without point.")
    if points is not None and (point is None or isinstance(point, bool) or not isinstance(
            point, (int, np.integer)) or not -points <= point < points):
        raise ValueError(f"This result holds {points} points: pass point=i with "
                         f"0 <= i < {points} (got {point!r}).")
    leaves = jax.tree_util.tree_leaves(jacobian, is_leaf=is_bcoo)
    grid: dict[tuple[int, int], Any] = {}
    for leaf, spec in zip(leaves, blocks):
        grid[spec["output"], spec["input"]] = _block(leaf, spec["out_ndim"], point)
    rows = 1 + max(k for k, _ in grid)
    cols = 1 + max(i for _, i in grid)
    layout = [[grid[k, i] for i in range(cols)] for k in range(rows)]
    if any(is_bcoo(leaf) for leaf in leaves):
        return sp.csr_array(sp.block_array(layout, format="csr"))
    return np.block(layout)


def _block(leaf: Any, out_ndim: int, point: int | None) -> Any:
    if is_bcoo(leaf):
        if point is None:
            return sparse_matrix(leaf, out_ndim)
        return _csr(np.asarray(leaf.indices[point], np.int64), np.asarray(leaf.data[point]),
                    leaf.shape[1:], out_ndim)
    block = np.asarray(leaf if point is None else leaf[point])
    rows = math.prod(block.shape[:out_ndim])
    return block.reshape(rows, block.size // rows if rows else math.prod(
        block.shape[out_ndim:]))
