"""``rayjac.Sparsity`` (a flat Jacobian pattern and its column colouring) and the patterns a
user may pass as ``sparsity=``."""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ._coloring import color_columns

_FORMS = ("None (dense), 'auto' (detect from the jaxpr), a rayjac.Sparsity, or a flat (m, n) "
          "pattern as a boolean numpy array, a scipy.sparse array or matrix, or a 2-D BCOO")


class DenseColoringWarning(UserWarning):
    """Colouring the pattern saves little: more than half as many colours (JVPs) as columns,
    or more than half the entries of the dense block."""


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
    if is_bcoo(sparsity):
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
            sparsity) or is_bcoo(sparsity) or (isinstance(sparsity, str) and sparsity == "auto"):
        return
    error = ValueError if isinstance(sparsity, str) else TypeError
    raise error(f"sparsity={sparsity!r:.60} is not valid: use {_FORMS}.")


def _check_shape(got: tuple, shape: tuple[int, int]) -> None:
    if tuple(got) != tuple(shape):
        raise ValueError(
            f"The sparsity pattern has shape {tuple(got)}, but this call's flat Jacobian is "
            f"(m, n) = {shape}: m is the total output size, n the total size of the "
            "differentiated inputs (grad_vars leaves, then argnums leaves).")


def is_bcoo(x: Any) -> bool:
    from jax.experimental import sparse
    return isinstance(x, sparse.BCOO)


def saves_little(pattern: Sparsity) -> bool:
    """More than half as many colours (JVPs) as columns, or more than half the entries of the
    dense block: the sparse call costs about as much as the dense one, or more."""
    (m, n), colors = pattern.shape, pattern.num_colors
    return n > 1 and (2 * colors > n or 2 * pattern.nnz > m * n)


def warn_if_dense(pattern: Sparsity, causes: Sequence[str] = (), better: int | None = None
                  ) -> None:
    """Warns ``DenseColoringWarning`` when colouring saves little (``saves_little``), with the
    colours, columns and density; ``causes`` name the values detection could not read that
    would have pruned the pattern to ``better`` colours."""
    if not saves_little(pattern):
        return
    (m, n), colors = pattern.shape, pattern.num_colors
    if causes:
        why = (f"Detection could not see through the value of {_listed(causes)}; with "
               f"{'it' if len(causes) == 1 else 'them'} known the pattern would need {better} "
               "colours. Keep such constants (e.g. a connectivity) in a Variable that func "
               "only reads, or close over them, or pass sparsity= a pattern.")
    else:
        why = ("The Jacobian itself may be this dense (e.g. a row or a column that depends "
               "on every input), or a primitive without an exact sparsity rule widened the "
               "pattern (see any ConservativeRuleWarning).")
    warnings.warn(
        f"rayjac.jacfwd(sparsity=...): colouring saves little: the pattern needs {colors} "
        f"colours for {n} columns ({colors / n:.0%} of the JVPs of the dense call) and holds "
        f"{pattern.nnz} of {m * n} entries (density {pattern.nnz / (m * n):.3g}). {why} The "
        "result is still returned as BCOO blocks; sparsity=None gives the dense path.",
        DenseColoringWarning, stacklevel=_outside_rayjac())


def _outside_rayjac() -> int:
    """The stacklevel of the innermost caller outside the rayjac package (the user's call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
