"""``rayjac plot``: a picture of each Jacobian block of a stored result and its singular values.

Dense blocks are drawn from their values; sparse (BCOO) blocks from their coordinates only,
binned to the image, with their largest singular values from ARPACK, never made dense.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..sparsity import is_bcoo
from ..store._matrix import sparse_matrix
from ._blocks import as_matrix, at_point, block_labels, blocks
from ._spectra import draw_spectrum

_SVD_MAX = 4096  # singular values of larger dense blocks would take minutes; plot them subsampled
_BINS = 300  # image cells per axis (at most) for a sparse block: each gets >= 1 pixel of a panel
_TOP_K = 20  # singular values shown for a sparse block
_GRAM_MAX = 200  # below this min(m, n), the top values come from the small dense Gram matrix
# svds runs ARPACK on A^H A to tol**2 = 3e-3: Lorenz-96's top values (20 within 0.1% of each
# other) come out within 0.3% of sigma_1 in ~2 s for n = 1e5. tol 0.03 takes 5x as long;
# PROPACK does not converge on them, LOBPCG is 10x slower.
_SVDS_TOL = 0.055
_SVDS_MAXITER = 300  # ARPACK restarts; Lorenz-96 needs ~20


def binned_counts(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                  bins: int | tuple[int, int]) -> np.ndarray:
    """How many entries fall in each cell of a grid of at most ``bins`` cells per axis over an
    ``(m, n)`` matrix; row ``r`` goes to cell ``r * bins_m // m`` (equal, contiguous ranges).

    Example:
        >>> binned_counts(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), (4, 4), 2)
        array([[2, 0],
               [0, 2]])
    """
    m, n = shape
    bins_m, bins_n = (bins, bins) if isinstance(bins, int) else bins
    bins_m, bins_n = min(m, bins_m), min(n, bins_n)
    cell = (np.asarray(rows, np.int64) * bins_m // max(m, 1)) * bins_n + (
        np.asarray(cols, np.int64) * bins_n // max(n, 1))
    return np.bincount(cell, minlength=bins_m * bins_n).reshape(bins_m, bins_n)


def top_singular_values(matrix: sp.sparray, k: int = _TOP_K) -> np.ndarray:
    """The ``min(k, m, n)`` largest singular values of a sparse matrix, largest first.

    ARPACK (``scipy.sparse.linalg.svds``) at a tolerance meant for plotting (about 0.3% of the
    largest value on clustered spectra), in the matrix's precision; when ``min(m, n)`` is small,
    the eigenvalues of the small Gram matrix ``A^H A`` (or ``A A^H``) instead. Should ARPACK not
    converge, the values that did are returned (fewer than ``k``).

    Example:
        >>> top_singular_values(sp.csr_array(np.diag([1.0, 3.0, 2.0])), k=2)
        array([3., 2.])
    """
    from scipy.sparse.linalg import ArpackNoConvergence, svds

    r = min(matrix.shape)
    if r == 0 or matrix.nnz == 0:
        return np.zeros(min(k, r))
    if r <= max(_GRAM_MAX, k):
        return _gram_singular_values(matrix)[:k]
    matrix = matrix.astype(np.result_type(matrix.dtype, np.float32))
    try:
        values = svds(matrix, k=k, tol=_SVDS_TOL, maxiter=_SVDS_MAXITER,
                      return_singular_vectors=False, rng=np.random.default_rng(0))
    except ArpackNoConvergence as err:  # eigenvalues of A^H A that did converge
        values = np.sqrt(np.clip(err.eigenvalues.real, 0.0, None))
    return np.sort(values.astype(np.float64))[::-1]


def _gram_singular_values(matrix: sp.sparray) -> np.ndarray:
    wide = matrix.shape[0] < matrix.shape[1]
    a = matrix.astype(np.complex128 if np.iscomplexobj(matrix.data) else np.float64)
    gram = (a @ a.conj().T) if wide else (a.conj().T @ a)
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram.toarray())[::-1], 0.0, None))


def plot(result: Any, file: str | os.PathLike) -> str:
    """Draw each Jacobian block (heatmap, or sparsity when mostly zero) and its singular values.

    A sparse (BCOO) block is drawn from its coordinates, binned to at most ``300 x 300`` cells
    coloured by entry count, with its 20 largest singular values from a sparse solver; it is
    never made dense, so a block with 10^5 columns plots in seconds.

    Example:
        >>> import jax.numpy as jnp, rayjac, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> run = rayjac.store.write_result(folder + "/run", rayjac.jacfwd(jnp.sin).stream(
        ...     (jnp.ones(3),)))
        >>> plot(rayjac.load(run), folder + "/j.png").endswith("j.png")
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = block_labels(result.metadata.get("config", {}).get("jacfwd", {}))
    points = getattr(result, "points", None)
    spectrum = getattr(result, "spectrum", None)
    jacobian = result.jacobian
    leaves = blocks(jacobian if points is None or jacobian is None else at_point(jacobian, 0))
    if not leaves and spectrum is None:
        raise ValueError(f"{result.path} holds no Jacobian blocks to plot.")
    rows = len(leaves) + (spectrum is not None)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4 * rows), squeeze=False)
    if spectrum is not None:
        system = result.metadata.get("analysis", {}).get("system", "continuous")
        fig.delaxes(axes[-1][1])
        what = "every point's eigenvalues" if points else "eigenvalues"
        draw_spectrum(axes[-1][0], spectrum, system, f"{what} ({system})")
    for (path, leaf), ndim, (left, right) in zip(leaves, _out_ndims(result), axes):
        label = labels.get(path, path)
        if is_bcoo(leaf):
            matrix = sparse_matrix(leaf, ndim)
            _draw_pattern(left, matrix, label)
            _draw_top_singular_values(right, top_singular_values(matrix), matrix.shape, label)
        else:
            matrix = as_matrix(leaf, ndim)
            _draw_matrix(left, matrix, label)
            _draw_singular_values(right, matrix, label)
    name = result.metadata.get("config", {}).get("name", os.path.basename(result.path))
    title = "Jacobian blocks" if leaves else "spectrum"
    fig.suptitle(f"{name}: {title}" + ("" if points is None or not leaves else
                                       f" at point 0 of {points}"))
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return os.fspath(file)


def _out_ndims(result: Any) -> list[int]:
    """For each Jacobian leaf, how many leading axes belong to the output: as stored
    (``metadata["jacobian"]["blocks"]``), else guessed from the output shapes."""
    stored = result.metadata.get("jacobian", {}).get("blocks")
    if stored and len(stored) == len(blocks(result.jacobian)):
        return [int(block["out_ndim"]) for block in stored]
    return _output_ndims(result)


def _output_ndims(result: Any) -> list[int]:
    """Older results: how many leading axes of each leaf are the output's, from its shapes."""
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


def _draw_pattern(ax: Any, matrix: sp.csr_array, path: str) -> None:
    """A sparse block's entries per image cell (log colours); one cell per entry when small."""
    from matplotlib.colors import LogNorm

    (m, n), nnz = matrix.shape, matrix.nnz
    ax.set_title(f"{path}: {m} x {n}, nnz {nnz}, density {nnz / max(m * n, 1):.2g}")
    if m == 0 or n == 0:
        ax.text(0.5, 0.5, "empty block", ha="center", va="center", transform=ax.transAxes)
        return
    rows = np.repeat(np.arange(m), np.diff(matrix.indptr))
    counts = binned_counts(rows, matrix.indices, (m, n), _BINS)
    most = int(counts.max(initial=0))
    colors = ({"cmap": "viridis", "norm": LogNorm(1, most)} if most > 1 else
              {"cmap": "Greys", "vmin": 0, "vmax": 1})  # one entry per cell: a plain spy
    image = ax.imshow(np.ma.masked_equal(counts, 0), aspect="auto", extent=(0, n, m, 0),
                      interpolation="nearest", **colors)
    if most > 1:
        ax.figure.colorbar(image, ax=ax, label=f"entries per cell ({counts.shape[0]} x "
                                                f"{counts.shape[1]} cells)")


def _draw_top_singular_values(ax: Any, values: np.ndarray, shape: tuple[int, int],
                              path: str) -> None:
    r = min(shape)
    ax.set_title(f"{path}: singular values" + (f" (top {values.size} of {r})"
                                                 if values.size < r else ""))
    ax.set_xlabel("index")
    if not values.size or values[0] <= 0:
        ax.text(0.5, 0.5, "all zero" if values.size else "empty block", ha="center",
                va="center", transform=ax.transAxes)
        return
    from matplotlib.ticker import MaxNLocator

    ax.semilogy(np.arange(1, values.size + 1), np.maximum(values, values[0] * 1e-16), ".-")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, values.size + 0.5)
    low = max(float(values[-1]), values[0] * 1e-16)
    if values[0] / low < 10:  # show at least a decade, so near-equal values look equal
        middle = math.sqrt(values[0] * low)
        ax.set_ylim(middle / math.sqrt(10), middle * math.sqrt(10))
    ax.grid(True, which="both", alpha=0.3)


def _draw_singular_values(ax: Any, matrix: np.ndarray, path: str) -> None:
    step = max(1, int(np.ceil(max(matrix.shape) / _SVD_MAX)))
    sub = matrix[::step, ::step]
    values = np.linalg.svd(sub, compute_uv=False) if sub.size else np.zeros(0)
    ax.semilogy(np.arange(1, len(values) + 1), np.maximum(values, np.finfo(float).tiny), ".-")
    note = f" (every {step}th row/column)" if step > 1 else ""
    ax.set_title(f"{path}: singular values{note}")
    ax.set_xlabel("index")
    ax.grid(True, which="both", alpha=0.3)
