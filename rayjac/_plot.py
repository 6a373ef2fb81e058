"""Looking at stored results: a text summary (``rayjac show``) and a picture (``rayjac plot``)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

_SVD_MAX = 4096  # singular values of larger blocks would take minutes; plot them subsampled


def blocks(tree: Any) -> list[tuple[str, np.ndarray]]:
    """The leaves of a Jacobian (or value/aux) pytree with their paths, e.g. ``[0]['w']``.

    Example:
        >>> [(p, a.shape) for p, a in blocks({"w": np.zeros((2, 3)), "b": np.zeros(2)})]
        [("['b']", (2,)), ("['w']", (2, 3))]
    """
    if tree is None:
        return []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "(root)", np.asarray(leaf)) for path, leaf in flat]


def summarize(result: Any) -> str:
    """A text summary of a loaded result: config, every block's shape, dtype and norms, timings.

    Example:
        >>> print(summarize(rayjac.load("results/quickstart")))  # doctest: +SKIP
    """
    meta = result.metadata
    config = meta.get("config", {})
    lines = [f"result   {result.path}",
             f"problem  {config.get('problem', '?')}  params {json.dumps(config.get('params'))}"]
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


def _leaf_line(leaf: np.ndarray) -> str:
    text = f"{str(leaf.dtype):10} {str(tuple(leaf.shape)):18}"
    if leaf.size == 0 or not np.issubdtype(leaf.dtype, np.number):
        return text
    mag = np.abs(leaf)
    return (text + f" |.|_F {float(np.linalg.norm(mag.ravel())):.4g}  max|.| "
            f"{float(mag.max()):.4g}  nonzero {np.count_nonzero(leaf) / leaf.size:.1%}")


def as_matrix(block: np.ndarray, out_ndim: int) -> np.ndarray:
    """A Jacobian block ``O + V`` as the 2D matrix ``(prod O, prod V)`` (magnitudes if complex).

    Example:
        >>> as_matrix(np.ones((2, 3, 4)), out_ndim=1).shape
        (2, 12)
    """
    rows = int(np.prod(block.shape[:out_ndim], dtype=np.int64))
    matrix = block.reshape(rows, -1)
    return np.abs(matrix) if np.iscomplexobj(matrix) else matrix.astype(np.float64)


def plot(result: Any, file: str | os.PathLike) -> str:
    """Draw each Jacobian block (heatmap, or sparsity when mostly zero) and its singular values.

    Example:
        >>> plot(rayjac.load("results/quickstart"), "quickstart.png")  # doctest: +SKIP
        'quickstart.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = block_labels(result.metadata.get("config", {}).get("jacfwd", {}))
    items = [(labels.get(path, path), as_matrix(leaf, ndim)) for (path, leaf), ndim
             in zip(blocks(result.jacobian), _output_ndims(result))]
    if not items:
        raise ValueError(f"{result.path} holds no Jacobian blocks to plot.")
    fig, axes = plt.subplots(len(items), 2, figsize=(10, 4 * len(items)), squeeze=False)
    for (path, matrix), (left, right) in zip(items, axes):
        _draw_matrix(left, matrix, path)
        _draw_singular_values(right, matrix, path)
    name = result.metadata.get("config", {}).get("name", os.path.basename(result.path))
    fig.suptitle(f"{name}: Jacobian blocks")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return os.fspath(file)


def _output_ndims(result: Any) -> list[int]:
    """For each Jacobian leaf, how many leading axes belong to the output (the rest: input)."""
    outputs = result.metadata.get("jacobian", {}).get("outputs", [])
    leaves = blocks(result.jacobian)
    if len(outputs) == 1 and leaves:
        return [len(outputs[0]["shape"])] * len(leaves)
    shapes = [tuple(o["shape"]) for o in outputs]
    return [next((len(s) for s in shapes if leaf.shape[:len(s)] == s), leaf.ndim // 2)
            for _, leaf in leaves]


def _draw_matrix(ax: Any, matrix: np.ndarray, path: str) -> None:
    density = np.count_nonzero(matrix) / max(matrix.size, 1)
    if density < 0.2:
        ax.spy(matrix, markersize=max(0.5, 200 / max(matrix.shape)), aspect="auto")
        ax.set_title(f"{path}: sparsity ({density:.1%} nonzero)")
        return
    limit = float(np.abs(matrix).max()) or 1.0
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                      interpolation="nearest")
    ax.figure.colorbar(image, ax=ax)
    ax.set_title(f"{path}: {matrix.shape[0]} x {matrix.shape[1]}")


def _draw_singular_values(ax: Any, matrix: np.ndarray, path: str) -> None:
    step = max(1, int(np.ceil(max(matrix.shape) / _SVD_MAX)))
    sub = matrix[::step, ::step]
    values = np.linalg.svd(sub, compute_uv=False) if sub.size else np.zeros(0)
    ax.semilogy(np.arange(1, len(values) + 1), np.maximum(values, np.finfo(float).tiny), ".-")
    note = f" (every {step}th row/column)" if step > 1 else ""
    ax.set_title(f"{path}: singular values{note}")
    ax.set_xlabel("index")
    ax.grid(True, which="both", alpha=0.3)
