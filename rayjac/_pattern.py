"""``rayjac.Sparsity`` (a flat Jacobian pattern and its column colouring), the patterns a user
may pass as ``sparsity=``, and the decompression plan that turns compressed JVPs (one per
colour) into the nonzeros of each Jacobian block."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import Any, Iterable, NamedTuple

import numpy as np
import scipy.sparse as sp

from ._basis import Layout
from ._coloring import color_columns

_FORMS = ("None (dense), 'auto' (detect from the jaxpr), a rayjac.Sparsity, or a flat (m, n) "
          "pattern as a boolean numpy array, a scipy.sparse array or matrix, or a 2-D BCOO")


class DenseColoringWarning(UserWarning):
    """Colouring the pattern saves nothing: it needs as many colours (JVPs) as columns."""


class Sparsity:
    """The sparsity pattern of a flat ``(m, n)`` Jacobian and a colouring of its columns.

    ``m`` is the total output size (output leaves in ``jax.tree_util`` order, each flattened
    row-major) and ``n`` the size of the flat differentiated input (``grad_vars`` leaves, then
    the leaves of the ``argnums`` arguments). Entries are sorted by row, then column. Columns of
    one colour share no row, so one JVP per colour recovers every entry.

    Example:
      >>> import jax.numpy as jnp, rayjac
      >>> jf = rayjac.jacfwd(lambda x: x[1:] - x[:-1], sparsity="auto")
      >>> s = jf.sparsity(jnp.arange(4.0))
      >>> s.shape, s.nnz, s.num_colors
      ((3, 4), 6, 2)
      >>> s.to_scipy().toarray().astype(int)
      array([[1, 1, 0, 0],
             [0, 1, 1, 0],
             [0, 0, 1, 1]])
    """

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int], colors: Any = None):
        self.shape = (int(shape[0]), int(shape[1]))
        rows, cols = np.asarray(rows, np.int64).ravel(), np.asarray(cols, np.int64).ravel()
        _check_entries(rows, cols, self.shape)
        keys = sorted_unique(rows * max(self.shape[1], 1) + cols)
        self.rows, self.cols = np.divmod(keys, max(self.shape[1], 1))
        begin = time.perf_counter()
        self.colors = (color_columns(self.rows, self.cols, self.shape).astype(np.int64)
                       if colors is None else _checked_colors(colors, self))
        self.times = {"color_s": time.perf_counter() - begin}  # and detect_s when detected

    @classmethod
    def from_sorted(cls, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                    colors: Any) -> Sparsity:
        """A pattern from entries already sorted by row, then column, without duplicates
        (as stored results hold them), with its colouring, which is checked."""
        self = cls.__new__(cls)
        self.shape = (int(shape[0]), int(shape[1]))
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        _check_entries(self.rows, self.cols, self.shape)
        self.colors = _checked_colors(colors, self)
        self.times = {}
        return self

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    @property
    def num_colors(self) -> int:
        return int(self.colors.max()) + 1 if self.colors.size else 0

    def to_scipy(self) -> sp.csr_array:
        """The pattern as a boolean ``scipy.sparse.csr_array`` of shape ``(m, n)``."""
        ones = np.ones(self.nnz, bool)
        return sp.csr_array((ones, (self.rows, self.cols)), shape=self.shape)

    def __repr__(self) -> str:
        m, n = self.shape
        density = self.nnz / (m * n) if m * n else 0.0
        return (f"Sparsity(shape={self.shape}, nnz={self.nnz}, density={density:.3g}, "
                f"num_colors={self.num_colors})")


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` of int keys by sorting (numpy 2's hashing ``unique`` is ~20x slower on
    10^6 keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys


def _check_entries(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> None:
    if rows.shape != cols.shape:
        raise ValueError(f"Sparsity rows and cols differ in length ({rows.size} != {cols.size}).")
    bad = (rows < 0) | (rows >= shape[0]) | (cols < 0) | (cols >= shape[1])
    if bad.any():
        e = int(np.argmax(bad))
        raise ValueError(f"Sparsity entry ({rows[e]}, {cols[e]}) lies outside the shape "
                         f"{shape}.")


def _checked_colors(colors: Any, pattern: Sparsity) -> np.ndarray:
    """User colours, refused unless every row's entries have distinct colours."""
    colors = np.asarray(colors)
    n = pattern.shape[1]
    if colors.shape != (n,) or colors.dtype.kind not in "iu" or (n and colors.min() < 0):
        raise ValueError(f"Sparsity colors must be {n} non-negative ints (one per column), "
                         f"got an array of shape {colors.shape} and dtype {colors.dtype}.")
    colors = colors.astype(np.int64)
    pairs = sorted_unique(pattern.rows * (int(colors.max(initial=0)) + 1) + colors[pattern.cols])
    if pairs.size != pattern.nnz:
        raise ValueError("Sparsity colors are not a valid colouring: two columns of one colour "
                         "share a row, so their JVP would mix them. Pass colors=None to colour "
                         "the pattern again.")
    return colors


def coerce(sparsity: Any, shape: tuple[int, int]) -> Sparsity:
    """A user's pattern (any accepted form) as a ``Sparsity`` of the call's flat shape."""
    if isinstance(sparsity, Sparsity):
        _check_shape(sparsity.shape, shape)
        return sparsity
    if _is_bcoo(sparsity):
        if sparsity.ndim != 2:
            raise ValueError(f"A BCOO sparsity pattern must be 2-D (the flat (m, n) = {shape} "
                             f"pattern), got shape {tuple(sparsity.shape)}.")
        _check_shape(tuple(sparsity.shape), shape)
        indices = np.asarray(sparsity.indices)
        return Sparsity(indices[:, 0], indices[:, 1], shape)
    if sp.issparse(sparsity):
        _check_shape(tuple(sparsity.shape), shape)
        coo = sp.coo_array(sparsity)
        keep = coo.data != 0
        return Sparsity(coo.row[keep], coo.col[keep], shape)
    if isinstance(sparsity, np.ndarray):
        _check_shape(sparsity.shape, shape)
        rows, cols = np.nonzero(sparsity)
        return Sparsity(rows, cols, shape)
    raise TypeError(f"sparsity must be {_FORMS}; got {type(sparsity).__name__}.")


def check_option(sparsity: Any) -> None:
    """Refuses a ``sparsity=`` of no accepted form (shapes are checked at call time)."""
    if sparsity is None or isinstance(sparsity, (Sparsity, np.ndarray)) or sp.issparse(
            sparsity) or _is_bcoo(sparsity) or (isinstance(sparsity, str) and sparsity == "auto"):
        return
    error = ValueError if isinstance(sparsity, str) else TypeError
    raise error(f"sparsity={sparsity!r:.60} is not valid: use {_FORMS}.")


def _check_shape(got: tuple, shape: tuple[int, int]) -> None:
    if tuple(got) != tuple(shape):
        raise ValueError(
            f"The sparsity pattern has shape {tuple(got)}, but this call's flat Jacobian is "
            f"(m, n) = {shape}: m is the total output size, n the total size of the "
            "differentiated inputs (grad_vars leaves, then argnums leaves).")


def _is_bcoo(x: Any) -> bool:
    from jax.experimental import sparse
    return isinstance(x, sparse.BCOO)


def warn_if_dense(pattern: Sparsity) -> None:
    n = pattern.shape[1]
    if n > 1 and pattern.num_colors == n:
        warnings.warn(
            f"rayjac.jacfwd(sparsity=...): the pattern needs {n} colours for {n} columns, so "
            "colouring saves nothing (e.g. a row that depends on every input); the result is "
            "still returned as BCOO blocks. Use sparsity=None for the dense path.",
            DenseColoringWarning, stacklevel=4)


class SparseShard(NamedTuple):
    """The nonzeros of colours ``[start, stop)``: per output leaf, in ``positions`` order."""

    start: int
    stop: int
    values: list[np.ndarray]


def gather_values(plan: SparsePlan, shards: Iterable[SparseShard]) -> list[np.ndarray]:
    """Every output leaf's nonzeros (plan order), from shards in any order."""
    layout = plan.layout
    values = [np.empty(rows.size, dtype) for rows, dtype in zip(plan.rows, layout.out_dtypes)]
    for shard in shards:
        for k, part in enumerate(shard.values):
            values[k][plan.positions(k, shard.start, shard.stop)] = part
    return values


@dataclasses.dataclass(frozen=True, eq=False)
class SparsePlan:
    """Where each entry of a ``Sparsity`` lives in the blocks of a ``Layout``, and how to
    recover it from the compressed JVPs: entry ``e`` of output leaf ``k`` is row ``rows[k][e]``
    of the JVP of colour ``colors[k][e]``. Entries of leaf ``k`` are ordered by input leaf
    (``spans[k][i]`` is the range of block ``(k, i)``), then row, then column."""

    pattern: Sparsity
    layout: Layout
    rows: tuple[np.ndarray, ...]    # per output leaf: flat row within the leaf
    cols: tuple[np.ndarray, ...]    # per output leaf: flat column within the input leaf
    colors: tuple[np.ndarray, ...]  # per output leaf: colour of the entry's column
    spans: tuple[tuple[tuple[int, int], ...], ...]
    entries: tuple[np.ndarray, ...]  # per output leaf: the entry's index in ``pattern``

    @classmethod
    def build(cls, pattern: Sparsity, layout: Layout) -> SparsePlan:
        row_offsets = np.cumsum([0] + [int(np.prod(s)) for s in layout.out_shapes])
        col_offsets = np.asarray(layout.basis.offsets + (layout.basis.n,))
        leaf_of_col = np.searchsorted(col_offsets, pattern.cols, side="right") - 1
        rows, cols, colors, spans, entries = [], [], [], [], []
        for k in range(len(layout.out_shapes)):
            lo, hi = np.searchsorted(pattern.rows, row_offsets[k:k + 2])
            order = lo + np.argsort(leaf_of_col[lo:hi], kind="stable")
            leaves = leaf_of_col[order]
            entries.append(order)
            rows.append(pattern.rows[order] - row_offsets[k])
            cols.append(pattern.cols[order] - col_offsets[leaves])
            colors.append(pattern.colors[pattern.cols[order]])
            bounds = np.searchsorted(leaves, np.arange(len(layout.basis.sizes) + 1))
            spans.append(tuple(zip(bounds[:-1].tolist(), bounds[1:].tolist())))
        return cls(pattern, layout, tuple(rows), tuple(cols), tuple(colors), tuple(spans),
                   tuple(entries))

    @property
    def num_colors(self) -> int:
        return self.pattern.num_colors

    @functools.cached_property
    def by_color(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per output leaf: its entries sorted by colour, and where each colour's run starts."""
        out = []
        for colors in self.colors:
            order = np.argsort(colors, kind="stable")
            starts = np.searchsorted(colors[order], np.arange(self.num_colors + 1))
            out.append((order, starts))
        return tuple(out)

    def positions(self, k: int, start: int, stop: int) -> np.ndarray:
        """The entries of output leaf ``k`` whose colour is in ``[start, stop)``."""
        order, starts = self.by_color[k]
        return order[starts[start]:starts[stop]]

    def decompress(self, compressed: list[np.ndarray], start: int) -> list[np.ndarray]:
        """The values of the entries of colours ``[start, start + len)`` (in ``positions``
        order) from the compressed rows of those colours (``(len, *out_shape)`` per leaf)."""
        stop = start + compressed[0].shape[0]
        out = []
        for k, block in enumerate(compressed):
            pos = self.positions(k, start, stop)
            flat = block.reshape(block.shape[0], -1)
            out.append(flat[self.colors[k][pos] - start, self.rows[k][pos]])
        return out

    def indices(self, k: int, i: int) -> np.ndarray:
        """The N-D BCOO indices of block ``(k, i)`` (output dims, then input dims)."""
        lo, hi = self.spans[k][i]
        out_shape, in_shape = self.layout.out_shapes[k], self.layout.basis.shapes[i]
        parts = (np.unravel_index(self.rows[k][lo:hi], out_shape) if out_shape else ()) + (
            np.unravel_index(self.cols[k][lo:hi], in_shape) if in_shape else ())
        return np.stack(parts, axis=-1).astype(np.int32) if parts else np.zeros(
            (hi - lo, 0), np.int32)


def detect_pattern(program: Any, diff: list, const: list, state: list) -> Sparsity:
    """The global pattern of the flat Jacobian that ``program``'s kernels compute, read from
    the jaxpr of exactly that function (only the differentiated leaves seeded)."""
    import jax

    from ._sparsity import detect

    spec = lambda x: jax.ShapeDtypeStruct(  # noqa: E731
        x.shape, x.dtype, weak_type=bool(getattr(x, "weak_type", False)))
    begin = time.perf_counter()
    outputs = lambda d, c, s: jax.tree_util.tree_leaves(program.pure(d, c, s)[0])  # noqa
    jaxpr = jax.make_jaxpr(outputs)(*jax.tree_util.tree_map(spec, (diff, const, state)))
    found = detect(jaxpr, [True] * len(diff) + [False] * (len(const) + len(state))).tocoo()
    detect_s = time.perf_counter() - begin
    pattern = Sparsity(found.row, found.col, found.shape)
    pattern.times = {"detect_s": detect_s, **pattern.times}
    return pattern


def make_plan(program: Any, option: Any, diff: list, const: list, state: list) -> SparsePlan:
    """The decompression plan of one call signature: the detected (``"auto"``) or given
    pattern, coloured, laid out over the blocks of ``program.layout``."""
    layout = program.layout
    shape = (sum(math.prod(s) for s in layout.out_shapes), layout.basis.n)
    if isinstance(option, str):
        pattern = detect_pattern(program, diff, const, state)
    else:
        pattern = coerce(option, shape)
    warn_if_dense(pattern)
    return SparsePlan.build(pattern, layout)
