"""``rayjac plot``: a picture of each Jacobian block of a stored result and its singular values.

Dense blocks are drawn from their values; sparse (BCOO) blocks from their coordinates only,
binned to the image, with their largest singular values from ARPACK, never made dense.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..sparsity import is_bcoo
from ..store._matrix import sparse_matrix
from ._blocks import as_matrix, at_point, block_labels, blocks
from ._spectra import draw_spectrum

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


def binned_extremes(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                    shape: tuple[int, int], bins: int | tuple[int, int]) -> np.ndarray:
    """The entry of largest magnitude in each cell of the grid of ``binned_counts`` (its sign
    kept: excitatory and inhibitory inputs stay apart), NaN where a cell holds no entry.

    Example:
        >>> binned_extremes(np.array([0, 1, 3]), np.array([0, 1, 3]),
        ...                 np.array([1.0, -3.0, 2.0]), (4, 4), 2)
        array([[-3., nan],
               [nan,  2.]])
    """
    m, n = shape
    bins_m, bins_n = (bins, bins) if isinstance(bins, int) else bins
    bins_m, bins_n = min(m, bins_m), min(n, bins_n)
    grid = np.full(bins_m * bins_n, np.nan)
    if len(values):
        cell = (np.asarray(rows, np.int64) * bins_m // max(m, 1)) * bins_n + (
            np.asarray(cols, np.int64) * bins_n // max(n, 1))
        values = np.asarray(values)
        order = np.lexsort((-np.abs(values), cell))  # per cell, the largest magnitude first
        first = np.unique(cell[order], return_index=True)[1]
        grid[cell[order][first]] = np.real(values[order][first])
    return grid.reshape(bins_m, bins_n)


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
    if r == 0 or (matrix.nnz == 0 if sp.issparse(matrix) else not np.any(matrix)):
        return np.zeros(min(k, r))
    if not sp.issparse(matrix) and r <= max(_GRAM_MAX, k):
        return np.linalg.svd(matrix, compute_uv=False)[:k]
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
    """Draw the Jacobian: the flat matrix with its block boundaries (when it has several
    blocks), then each block with its top singular values, and the spectrum if it has one.

    Values are drawn with their signs on a diverging map (symmetric log when they span more
    than 30-fold), binned to at most ``300 x 300`` cells that each show their entry of
    largest magnitude; rows are outputs and columns inputs. A sparse (BCOO) block is drawn
    from its coordinates and never made dense; singular values come from ARPACK beyond 200 a
    side, so a block with 10^5 columns, or a dense one with thousands, plots in seconds. A map
    result draws point 0. Progress goes to stderr (``RAYJAC_QUIET=1`` silences it).

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
    flat = _flat_view(result, leaves, labels)
    rows = (flat is not None) + len(leaves) + (spectrum is not None)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    panels = iter(axes)
    say = _progress(rows)
    if flat is not None:
        left, right = next(panels)
        say("the flat Jacobian")
        _draw_flat(left, right, *flat)
    for (path, leaf), ndim in zip(leaves, _out_ndims(result)):
        left, right = next(panels)
        label = labels.get(path, path)
        say(f"block {label}")
        if is_bcoo(leaf):
            matrix = sparse_matrix(leaf, ndim)
            _draw_pattern(left, matrix, label)
            _draw_top_singular_values(right, top_singular_values(matrix), matrix.shape, label)
        else:
            matrix = as_matrix(leaf, ndim)
            _draw_matrix(left, matrix, label)
            _draw_singular_values(right, matrix, label)
    if spectrum is not None:
        left, right = next(panels)
        system = result.metadata.get("analysis", {}).get("system", "continuous")
        fig.delaxes(right)
        what = "every point's eigenvalues" if points else "eigenvalues"
        draw_spectrum(left, spectrum, system, f"{what} ({system})")
    name = result.metadata.get("config", {}).get("name", os.path.basename(result.path))
    title = "Jacobian" if leaves else "spectrum"
    fig.suptitle(f"{name}: {title}" + ("" if points is None or not leaves else
                                       f" at point 0 of {points}"))
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return os.fspath(file)


def _progress(total: int) -> Any:
    """Lines on stderr as each panel is drawn (a plot of big blocks takes seconds)."""
    from .._progress import quiet

    count = iter(range(1, total + 1))

    def say(what: str) -> None:
        if not quiet():
            print(f"rayjac plot: [{next(count)}/{total}] {what}", file=sys.stderr, flush=True)

    return say


def _flat_view(result: Any, leaves: list, labels: dict) -> tuple | None:
    """The flat matrix of a result with several blocks, and where its blocks begin: (matrix,
    row starts with output names, column starts with input names); None for one block."""
    jac = result.metadata.get("jacobian", {})
    specs = jac.get("blocks")
    if (len(leaves) < 2 or not specs or len(specs) != len(leaves) or not jac.get("inputs")
            or not all("output" in s and "input" in s for s in specs)):
        return None  # one block, or a result without the layout (older, or built by hand)
    points = getattr(result, "points", None)
    matrix = result.matrix(None if points is None else 0)
    outputs = [(int(np.prod(o["shape"], dtype=np.int64)), o.get("path") or "(root)")
               for o in jac.get("outputs", [])]
    inputs = [(i["offset"], i.get("path") or "(root)") for i in jac.get("inputs", [])]
    by_input = {spec["input"]: labels.get(path, path) for spec, (path, _) in zip(specs, leaves)}
    row_starts = np.cumsum([0] + [size for size, _ in outputs])[:-1]
    return (matrix, list(zip(row_starts.tolist(), [name for _, name in outputs])),
            [(offset, by_input.get(i, name)) for i, (offset, name) in enumerate(inputs)])


def _draw_flat(ax: Any, right: Any, matrix: Any, row_starts: list, col_starts: list) -> None:
    m, n = matrix.shape
    if sp.issparse(matrix):
        coo = matrix.tocoo()
        _draw_values(ax, coo.row, coo.col, coo.data, (m, n), f"flat Jacobian: {m} x {n}")
    else:
        matrix = as_matrix(matrix, 1)
        _draw_grid(ax, binned_dense(matrix, _BINS), (m, n), f"flat Jacobian: {m} x {n}")
    for axis, starts, size, line in (("x", col_starts, n, ax.axvline),
                                     ("y", row_starts, m, ax.axhline)):
        stops = [s for s, _ in starts[1:]] + [size]
        for start, _ in starts[1:]:
            line(start, color="k", lw=0.8)
        if len(starts) > 1:  # block names beside the matrix, centred on their rows/columns
            other = (ax.secondary_xaxis("top") if axis == "x" else
                     ax.secondary_yaxis("right"))
            other.set_ticks([(a + b) / 2 for (a, _), b in zip(starts, stops)],
                            [name for _, name in starts], fontsize="small")
    ax.set_title(ax.get_title(), pad=18)
    values = top_singular_values(matrix if sp.issparse(matrix) else as_matrix(matrix, 1))
    _draw_top_singular_values(right, values, (m, n), "flat Jacobian")


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
    """A dense block's values, as a sparse one's are drawn (``_draw_values``)."""
    m, n = matrix.shape
    nonzero = np.count_nonzero(matrix) / max(m * n, 1)
    _draw_grid(ax, binned_dense(matrix, _BINS), (m, n),
               f"{path}: {m} x {n}, {nonzero:.1%} nonzero")


def binned_dense(matrix: np.ndarray, bins: int) -> np.ndarray:
    """``binned_extremes`` of a dense matrix's nonzeros, by two passes of reductions (a sort
    of millions of entries would take seconds).

    Example:
        >>> binned_dense(np.array([[1.0, 0.0], [-3.0, 0.0]]), 1)
        array([[-3.]])
    """
    m, n = matrix.shape
    if not m or not n:
        return np.full((min(m, bins), min(n, bins)), np.nan)
    starts = [np.unique([(k * size + b - 1) // b for k in range(b)])
              for size, b in ((m, min(m, bins)), (n, min(n, bins)))]
    high = np.maximum.reduceat(np.maximum.reduceat(matrix, starts[0], 0), starts[1], 1)
    low = np.minimum.reduceat(np.minimum.reduceat(matrix, starts[0], 0), starts[1], 1)
    grid = np.where(np.abs(high) >= np.abs(low), high, low).astype(np.float64)
    grid[grid == 0] = np.nan
    return grid


def _draw_pattern(ax: Any, matrix: sp.csr_array, path: str) -> None:
    """A sparse block's entries from its coordinates, never made dense."""
    (m, n), nnz = matrix.shape, matrix.nnz
    rows = np.repeat(np.arange(m), np.diff(matrix.indptr))
    _draw_values(ax, rows, matrix.indices, matrix.data, (m, n),
                 f"{path}: {m} x {n}, nnz {nnz}, density {nnz / max(m * n, 1):.2g}")


def _draw_values(ax: Any, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                 shape: tuple[int, int], title: str) -> None:
    """Signed values on a diverging map (symmetric log when they span over 30-fold), binned to
    at most ``_BINS`` cells a side (each cell shows its entry of largest magnitude); empty cells
    are light grey. Rows are outputs, columns inputs (flat indices of the block)."""
    _draw_grid(ax, binned_extremes(rows, cols, values, shape, _BINS), shape, title)


def _draw_grid(ax: Any, grid: np.ndarray, shape: tuple[int, int], title: str) -> None:
    import matplotlib

    m, n = shape
    ax.set_title(title)
    ax.set_xlabel("input index (column)")
    ax.set_ylabel("output index (row)")
    if m == 0 or n == 0:
        ax.text(0.5, 0.5, "empty block", ha="center", va="center", transform=ax.transAxes)
        return
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.92")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", extent=(0, n, m, 0),
                      interpolation="nearest", cmap=cmap, norm=_norm(grid))
    binned = grid.shape != (m, n)
    ax.figure.colorbar(image, ax=ax, label="largest-magnitude entry per cell" if binned
                       else "entry")


def _norm(grid: np.ndarray) -> Any:
    """Symmetric about 0; logarithmic beyond a linear core when the magnitudes span more
    than 30-fold."""
    from matplotlib.colors import Normalize, SymLogNorm

    magnitude = np.abs(grid[np.isfinite(grid) & (grid != 0)])
    top = float(magnitude.max()) if magnitude.size else 1.0
    low = float(magnitude.min()) if magnitude.size else 1.0
    if top / low > 30:  # small entries (a network's weak inputs) would be white on a linear map
        return SymLogNorm(linthresh=max(low, top * 1e-6), vmin=-top, vmax=top)
    return Normalize(-top, top)


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
    """The top singular values of a dense block: exact when small, else ARPACK (seconds for
    thousands of columns, where a full SVD takes minutes)."""
    _draw_top_singular_values(ax, top_singular_values(matrix), matrix.shape, path)
