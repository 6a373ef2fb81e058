"""``rayjac show``: a text summary of a stored result (config, every block's shape, dtype and
norms, timings; a sparse result's pattern)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..sparsity import is_bcoo
from ..store._matrix import sparse_matrix
from ._blocks import block_labels, blocks


def summarize(result: Any) -> str:
    """A text summary of a loaded result: config, every block's shape, dtype and norms, timings;
    for a sparse result also its pattern (nnz, density, colours, detection and colouring times)
    and every block's nnz, with norms computed from the stored entries.

    Example:
        >>> import jax.numpy as jnp, rayjac, tempfile
        >>> run = rayjac.store.write_result(tempfile.mkdtemp() + "/run",
        ...                                 rayjac.jacfwd(jnp.sin).stream((jnp.zeros(2),)))
        >>> print(summarize(rayjac.load(run)))  # doctest: +ELLIPSIS
        result   .../run
        problem  ?  params null
        jacobian arg 0                float32    (2, 2)             |.|_F 1.414  max|.| 1  nonzero 50.0%
        timings  ...
        versions rayjac ...
    """
    meta = result.metadata
    config = meta.get("config", {})
    lines = [f"result   {result.path}",
             f"problem  {config.get('problem', '?')}  params {json.dumps(config.get('params'))}"]
    if getattr(result, "points", None) is not None:
        lines.append(f"points   {result.points} (every leaf has a leading point axis; norms "
                     "over all points)")
    if getattr(result, "stability", None) is not None:
        lines.append("spectrum " + _stability_line(result))
    sparsity = _sparsity_info(result)
    if sparsity is not None:
        lines.append("sparsity " + _sparsity_line(sparsity))
    labels = block_labels(config.get("jacfwd", {}))
    for part in ("jacobian", "value", "aux"):
        for path, leaf in blocks(getattr(result, part)):
            label = labels.get(path, path) if part == "jacobian" else path
            lines.append(f"{part:8} {label:20} {_leaf_line(leaf)}")
    timings = meta.get("timings", {})
    lines.append("timings  " + ", ".join(f"{k} {v:.3g}" for k, v in timings.items()
                                         if isinstance(v, (int, float))))
    versions = meta.get("versions", {})
    lines.append("versions " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)


def _stability_line(result: Any) -> str:
    """How many points are stable, and the largest abscissa and radius computed."""
    table, analysis = result.stability, result.metadata.get("analysis", {})
    stable = int(np.count_nonzero(table.column("stable").to_numpy(zero_copy_only=False)))
    count = np.shape(result.spectrum)[-1]
    return (f"{analysis.get('system', '?')}, {count} eigenvalues per point "
            f"({analysis.get('spectrum')}); stable at {stable} of {table.num_rows} points; "
            f"largest abscissa {np.max(table.column('abscissa').to_numpy()):.6g}, "
            f"largest radius {np.max(table.column('radius').to_numpy()):.6g}")


def _sparsity_info(result: Any) -> dict | None:
    """The pattern's description: the stored one, else one made from ``result.sparsity``."""
    info = result.metadata.get("sparsity")
    if info or result.sparsity is None:
        return info or None
    pattern = result.sparsity
    m, n = pattern.shape
    return {"shape": [m, n], "nnz": pattern.nnz, "num_colors": pattern.num_colors,
            "density": pattern.nnz / (m * n) if m * n else 0.0, "times": dict(pattern.times)}


def _sparsity_line(info: dict) -> str:
    times = info.get("times") or {}
    detect = times.get("detect_s")
    detect = "given" if detect is None else f"{detect:.3g} s"
    color = times.get("color_s")
    color = "-" if color is None else f"{color:.3g} s"
    return (f"{tuple(info['shape'])}  nnz {info['nnz']}  density {info['density']:.3g}  "
            f"colours {info['num_colors']}  detect {detect}  colour {color}")


def _leaf_line(leaf: Any) -> str:
    text = f"{str(leaf.dtype):10} {str(tuple(leaf.shape)):18}"
    if is_bcoo(leaf):
        values, size = _entries(leaf), math.prod(leaf.shape)
        norms = f" |.|_F {_frobenius(values):.4g}  max|.| {_max_abs(values):.4g} " if size else " "
        return text + norms + f" nnz {values.size}  density {values.size / max(size, 1):.3g}"
    if leaf.size == 0 or not np.issubdtype(leaf.dtype, np.number):
        return text
    mag = np.abs(leaf)
    return (text + f" |.|_F {float(np.linalg.norm(mag.ravel())):.4g}  max|.| "
            f"{float(mag.max()):.4g}  nonzero {np.count_nonzero(leaf) / leaf.size:.1%}")


def _entries(block: Any) -> np.ndarray:
    """The values of a BCOO block's distinct entries (repeated indices summed, as BCOO does)."""
    if block.unique_indices:
        return np.asarray(block.data)
    return sparse_matrix(block, block.ndim).data


def _frobenius(values: np.ndarray) -> float:
    return float(np.linalg.norm(np.abs(values))) if values.size else 0.0


def _max_abs(values: np.ndarray) -> float:
    return float(np.abs(values).max()) if values.size else 0.0
