"""The abstract value of the sparsity interpreter and the sparse-row algebra its rules share.

Each array element carries the set of input columns it depends on; an array's sets are the rows
of one boolean CSR matrix (size x n), or ``None`` when it depends on nothing. Rows are kept
canonical (sorted, no duplicates) so that two patterns compare by their arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import jax
import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, slots=True)
class Val:
    """An array of the program: its shape and dtype, its dependencies and, if known, its value.

    A known value is constant with respect to the inputs, so it never comes with ``deps``.
    Where it comes from (see ``_known``): ``src``, the known inputs it derives from (``FIXED``:
    none, a true constant; ``None``: untracked, so possibly any); ``nz``, a superset of its
    nonzeros that holds for every value of those inputs with their current zeros; ``level``,
    how much of it their zeros fix (``SUPERSET`` < ``MASK`` < ``VALUE``).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    deps: sp.csr_array | None = None
    value: np.ndarray | None = None
    src: frozenset | None = None
    nz: np.ndarray | None = None
    level: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def ids(shape: Sequence[int]) -> np.ndarray:
    """Element numbers of an array of this shape, row-major."""
    return np.arange(math.prod(shape), dtype=np.int64).reshape(tuple(shape))


def _index_dtype(n: int, nnz: int) -> type:
    return np.int32 if max(n, nnz) < 2**31 - 1 else np.int64


def csr(indptr: np.ndarray, indices: np.ndarray, n: int) -> sp.csr_array | None:
    """A bool CSR from canonical arrays; ``None`` when it has no entries."""
    if len(indices) == 0:
        return None
    dt = _index_dtype(n, len(indices))
    m = sp.csr_array((np.ones(len(indices), dtype=bool), indices.astype(dt, copy=False),
                      indptr.astype(dt, copy=False)), shape=(len(indptr) - 1, n))
    m.has_canonical_format = True
    return m


def identity(offset: int, size: int, n: int) -> sp.csr_array | None:
    """Rows of the seeded elements ``offset .. offset+size-1`` (one column each)."""
    return csr(np.arange(size + 1), np.arange(offset, offset + size), n)


def empty(rows: int, n: int) -> sp.csr_array:
    """A CSR without entries (only for stacking)."""
    return sp.csr_array((rows, n), dtype=bool)


def take(deps: sp.csr_array | None, src: np.ndarray) -> sp.csr_array | None:
    """Row gather: output row o is ``deps[src[o]]``, or empty where ``src[o] < 0``."""
    if deps is None:
        return None
    src = np.asarray(src, dtype=np.int64).ravel()
    if len(src) == deps.shape[0] and np.array_equal(src, np.arange(len(src))):
        return deps
    valid = src >= 0
    safe = np.where(valid, src, 0)
    starts = deps.indptr[safe].astype(np.int64)
    lens = np.where(valid, deps.indptr[safe + 1] - starts, 0)
    indptr = np.zeros(len(src) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    total = int(indptr[-1])
    if total == 0:
        return None
    pos = np.repeat(starts - indptr[:-1], lens) + np.arange(total)
    return csr(indptr, deps.indices[pos], deps.shape[1])


def rows(deps: sp.csr_array | None, start: int, stop: int) -> sp.csr_array | None:
    """The contiguous rows ``start:stop``."""
    if deps is None:
        return None
    lo, hi = deps.indptr[start], deps.indptr[stop]
    return csr(deps.indptr[start:stop + 1] - lo, deps.indices[lo:hi], deps.shape[1])


def union(parts: Iterable[sp.csr_array | None]) -> sp.csr_array | None:
    """Element-wise union of same-shaped row sets."""
    present = []
    for p in parts:
        if p is not None and not any(p is q for q in present):
            present.append(p)
    if not present:
        return None
    out = present[0]
    for p in present[1:]:
        out = out + p  # scipy's bool addition is an OR merge of sorted rows
    return _canonical(out)


def _canonical(m: sp.csr_array) -> sp.csr_array | None:
    """Sorted rows, bool data; ``None`` when empty."""
    if m.nnz == 0:
        return None
    if not m.has_sorted_indices:
        m.sort_indices()
    return csr(m.indptr, m.indices, m.shape[1])


def spread(deps: sp.csr_array | None, out_rows: np.ndarray, in_rows: np.ndarray,
           m: int) -> sp.csr_array | None:
    """Output row ``out_rows[k]`` gets the union of ``deps[in_rows[k]]`` over all k."""
    if deps is None or len(out_rows) == 0:
        return None
    p = sp.csr_array((np.ones(len(out_rows), dtype=bool), (out_rows, in_rows)),
                     shape=(m, deps.shape[0]))
    return _canonical(p @ deps)


def group(deps: sp.csr_array | None, group_of: np.ndarray, groups: int) -> sp.csr_array | None:
    """Row g of the result is the union of the rows i with ``group_of[i] == g`` (-1: none)."""
    group_of = np.asarray(group_of, dtype=np.int64).ravel()
    keep = np.flatnonzero(group_of >= 0)
    return spread(deps, group_of[keep], keep, groups)


def stack(parts: Sequence[tuple[sp.csr_array | None, int]], n: int) -> sp.csr_array | None:
    """Rows of several arrays one after another; each part is ``(deps, rows)``."""
    if all(d is None for d, _ in parts):
        return None
    if len(parts) == 1:
        return parts[0][0]
    mats = [d if d is not None else empty(r, n) for d, r in parts]
    return _canonical(sp.vstack(mats, format="csr"))


def same(a: sp.csr_array | None, b: sp.csr_array | None) -> bool:
    """Whether two canonical row sets are equal."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    return (a.shape == b.shape and a.nnz == b.nnz and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices))


def everything(vals: Iterable[Val], n: int) -> sp.csr_array | None:
    """One row: the union of all dependencies of all elements of ``vals``."""
    cols = [v.deps.indices for v in vals if v.deps is not None]
    if not cols:
        return None
    cols = np.unique(np.concatenate(cols))
    return csr(np.array([0, len(cols)]), cols, n)


def repeat(row: sp.csr_array | None, size: int) -> sp.csr_array | None:
    """``size`` copies of a one-row set."""
    if row is None or size == 0:
        return None
    k = row.nnz
    return csr(np.arange(size + 1, dtype=np.int64) * k, np.tile(row.indices, size), row.shape[1])


def join(ctx, vals: Sequence[Val]) -> Val:
    """What any one of ``vals`` may be: their dependencies united, their value if all agree
    (a comparison that reads every value: ``ctx.value``)."""
    first = vals[0]
    deps = union(v.deps for v in vals)
    if len(vals) == 1:
        return first
    agree = deps is None and all(same_value(ctx.value(first), ctx.value(v)) for v in vals[1:])
    if not agree:
        return Val(first.shape, first.dtype, deps)
    src = None if any(v.src is None for v in vals) else frozenset().union(*(v.src for v in vals))
    nz = None if any(v.nz is None for v in vals) else np.logical_or.reduce([v.nz for v in vals])
    return Val(first.shape, first.dtype, None, first.value, src, nz,
               min(v.level for v in vals) if nz is not None else 0)


def same_value(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two known values are equal (NaNs equal); unknown never equals anything."""
    if a is None or b is None:
        return False
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.inexact)))


def bind_params(primitive, params: dict) -> tuple[tuple, dict]:
    """``(subfuns, params)`` to bind an equation's primitive (the split moved in jax 0.7)."""
    out = primitive.get_bind_params(params)
    return out if isinstance(out, tuple) else ((), out)


def bind(primitive, params: dict, values: Sequence) -> list:
    """Evaluate a primitive eagerly, even when ``detect`` runs inside an outer trace."""
    subfuns, kwargs = bind_params(primitive, params)
    with jax.ensure_compile_time_eval():
        out = primitive.bind(*subfuns, *values, **kwargs)
    return list(out) if primitive.multiple_results else [out]
