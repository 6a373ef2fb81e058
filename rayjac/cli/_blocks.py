"""The blocks of a stored Jacobian as 2-D matrices: dense ``(prod O, prod V)`` arrays, or
``scipy.sparse`` ones built from a BCOO block's coordinates (never made dense)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

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


def at_point(tree: Any, point: int) -> Any:
    """One point of a map result's tree: every leaf indexed along its leading axis (a BCOO block
    with ``n_batch == 1`` becomes a plain BCOO block of that point).

    Example:
        >>> at_point({"w": np.arange(6.0).reshape(3, 2)}, 1)["w"]
        array([2., 3.])
    """
    from jax.experimental import sparse

    def pick(leaf: Any) -> Any:
        if is_bcoo(leaf):
            return sparse.BCOO((leaf.data[point], leaf.indices[point]), shape=leaf.shape[1:],
                               indices_sorted=True, unique_indices=leaf.unique_indices)
        return np.asarray(leaf)[point]

    return jax.tree_util.tree_map(pick, tree, is_leaf=is_bcoo)
