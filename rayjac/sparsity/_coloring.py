"""Greedy partial distance-2 colouring of the columns of a sparsity pattern."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

# SciPy's compiled Curtis-Powell-Reid grouping, private but unchanged since SciPy 0.17: it fills one
# colour at a time over the columns in order, which gives the same colours as first-fit greedy.
from scipy.optimize._group_columns import group_sparse

_MAX_EDGES = 1 << 27  # largest column-intersection graph (sum of squared row degrees) to build
# Largest graph (edges) for the smallest-last order: its sequential kernel costs ~0.15 us per
# edge (9 s for the 6.4e7 edges of a 10^4-unit network with 1 % connectivity, where it gave no
# fewer colours than largest-first, a sort).
_MAX_SMALLEST_LAST = 1 << 24
_MAX_WIDTH = 64  # neighbours that one step of the smallest-last kernel visits
# Keys per array in that kernel: XLA runs gathers from larger arrays over several threads, which
# costs far more than the gather (3x slower in all at 2^17 keys in one array).
_PIECE = 1 << 16


def color_columns(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Colours the columns of a sparsity pattern so that columns sharing a row differ.

    Greedy partial distance-2 colouring (Curtis-Powell-Reid): every colour is one seed of a
    compressed forward-mode Jacobian. It tries the natural, largest-first and smallest-last vertex
    orders of the column-intersection graph and keeps the fewest colours (ties go to the earlier
    order). It stops early when a row has as many entries as there are colours, since no colouring
    can use fewer; a dense row is therefore cheap. The other orders need the column-intersection
    graph, so they are skipped when it could have more than 2**27 edges (smallest-last when it
    has more than 2**24). Columns with no entries get colour 0. It runs on concrete NumPy and
    CPU arrays, also while an outer ``jax.jit`` traces the caller.

    Args:
        rows: Row index of each entry of the pattern (any order, duplicates allowed).
        cols: Column index of each entry, the same length as ``rows``.
        shape: ``(m, n)``, the shape of the pattern.

    Returns:
        An int32 array of length ``n`` with the colours ``0, ..., num_colors - 1``.

    Raises:
        ValueError: If ``shape`` is not two non-negative ints, or the indices are not 1-D integer
            arrays of one length inside ``shape``.

    Example:
        >>> import numpy as np
        >>> n = 6
        >>> i = np.arange(n)
        >>> rows = np.concatenate([i, i[1:], i[:-1]])
        >>> cols = np.concatenate([i, i[1:] - 1, i[:-1] + 1])
        >>> color_columns(rows, cols, (n, n))
        array([0, 1, 2, 0, 1, 2], dtype=int32)
    """
    pattern = _pattern(rows, cols, shape)
    degrees = _row_degrees(pattern)
    bound = max(int(degrees.max(initial=0)), min(shape[1], 1))
    best = _greedy(pattern, np.arange(shape[1]))
    if num_colors(best) > bound and np.sum(degrees**2) <= _MAX_EDGES:
        for order in _orders(_intersection_graph(pattern)):
            colors = _greedy(pattern, order)
            if num_colors(colors) < num_colors(best):
                best = colors
            if num_colors(best) == bound:
                break
    return best


def num_colors(colors: np.ndarray) -> int:
    """Returns the number of colours of a colouring from ``color_columns``.

    Example:
        >>> num_colors(np.array([0, 2, 1, 0], np.int32)), num_colors(np.zeros(0, np.int32))
        (3, 0)
    """
    return int(np.max(colors, initial=-1)) + 1


def _pattern(rows, cols, shape) -> sp.csc_array:
    """Checks the entries and returns them as a boolean CSC array without duplicates."""
    shape = _check_shape(shape)
    rows, cols = _check_index(rows, "rows"), _check_index(cols, "cols")
    if rows.shape != cols.shape:
        raise ValueError(
            f"rows and cols must have one length, but got {rows.size} and {cols.size}.")
    for name, index, size in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        if index.size and (index.min() < 0 or index.max() >= size):
            raise ValueError(f"{name} must lie in [0, {size}) for shape {shape}, but got "
                             f"values in [{index.min()}, {index.max()}].")
    return sp.csc_array((np.ones(rows.size, bool), (rows, cols)), shape=shape)


def _check_shape(shape) -> tuple[int, int]:
    """The pattern shape as two non-negative ints."""
    if (len(np.shape(shape)) != 1 or len(shape) != 2
            or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)):
        raise ValueError(f"shape must be two non-negative ints (m, n), but got {shape!r}.")
    return int(shape[0]), int(shape[1])


def _check_index(index, name: str) -> np.ndarray:
    """One index array of the entries, 1-D and integer."""
    index = np.asarray(index)
    if index.ndim != 1 or not (index.size == 0 or np.issubdtype(index.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer array, but got {index.dtype} of shape "
                         f"{index.shape}.")
    return index.astype(np.int64)


def _row_degrees(pattern: sp.csc_array) -> np.ndarray:
    """Entries per row; the largest is a lower bound on the number of colours."""
    return np.bincount(pattern.indices, minlength=pattern.shape[0]).astype(np.int64)


def _greedy(pattern: sp.csc_array, order: np.ndarray) -> np.ndarray:
    """First-fit colours of the columns of a CSC pattern, visited in ``order``."""
    m, n = pattern.shape
    used = np.diff(pattern.indptr) > 0
    colors = np.zeros(n, np.int32)
    if _row_degrees(pattern).max(initial=0) == used.sum():  # a row meets every used column
        colors[order[used[order]]] = np.arange(used.sum())
        return colors
    permuted = pattern[:, order]
    colors[order] = group_sparse(m, n, permuted.indices.astype(np.int32),
                                 permuted.indptr.astype(np.int32))
    return colors


def _intersection_graph(pattern: sp.csc_array) -> sp.csr_array:
    """Column-intersection graph (columns adjacent when they share a row), without self-loops."""
    n = pattern.shape[1]
    product = (pattern.T @ pattern.tocsr()).tocsr()
    owner = np.repeat(np.arange(n), np.diff(product.indptr))
    keep = product.indices != owner
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=n))])
    return sp.csr_array((np.ones(keep.sum(), bool), product.indices[keep], indptr), shape=(n, n))


def _orders(graph: sp.csr_array):
    """Yields the largest-first and then (unless ``graph`` is too large) the smallest-last
    vertex order of ``graph``."""
    yield np.argsort(-np.diff(graph.indptr), kind="stable")
    if graph.nnz <= _MAX_SMALLEST_LAST:
        yield _smallest_last(graph)


def _smallest_last(graph: sp.csr_array) -> np.ndarray:
    """Matula-Beck order: reversed removals of the lowest-index vertex of minimum degree."""
    n = graph.shape[0]
    degree = np.diff(graph.indptr)
    width = min(_pow2(degree.max(initial=1)), _MAX_WIDTH)
    size = _pow2(n)  # powers of two, so that similar patterns reuse one compiled kernel
    count = -(-degree // width)
    start = np.concatenate([[0], np.cumsum(count)])
    nbrs = np.full((_pow2(start[-1] + 1), width), size, np.int32)  # `size`: no vertex
    slot = np.arange(graph.nnz) - np.repeat(graph.indptr[:-1], degree)
    nbrs[np.repeat(start[:-1], degree) + slot // width, slot % width] = graph.indices
    key = np.full(size, size + 1, np.int32)
    key[:n] = degree
    seg_start = np.full(size + 1, start[-1], np.int32)
    seg_start[: n + 1] = start
    steps = np.int32(np.maximum(count, 1).sum())
    key = key.reshape(-1, min(size, _PIECE))
    # Concrete CPU arrays even while an outer jax.jit traces the caller: the kernel then runs
    # now, on these values, instead of being staged into that trace as tracers.
    with jax.ensure_compile_time_eval():
        args = jax.device_put((key, nbrs, seg_start, steps), _cpu())
        return np.asarray(_removal_kernel(*args))[:n][::-1]


def _pow2(x) -> int:
    """The smallest power of two that is at least ``x`` (and at least 1)."""
    return 1 << max(int(x) - 1, 0).bit_length()


def _cpu():
    """The CPU device, where a sequential loop runs fastest; None (the default) if JAX has none."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


@jax.jit
def _removal_kernel(key, nbrs, seg_start, steps):
    """Removal order; a step pops a vertex if the last one is done, then lowers one segment."""
    size = key.size
    big = size + 1
    block = min(_pow2(np.sqrt(size)), key.shape[1])  # blocks of keys never straddle pieces
    bmin = key.reshape(-1, block).min(axis=1)

    def step(_, state):
        key, bmin, out, v, s, e, i = state
        pick = s == e
        b = jnp.argmin(bmin).astype(jnp.int32)
        window = _read(key, b * block, block)
        j = jnp.argmin(window).astype(jnp.int32)
        rest = jnp.min(jnp.where(jnp.arange(block) == j, big, window))
        v = jnp.where(pick, b * block + j, v)
        s, e = jnp.where(pick, seg_start[v], s), jnp.where(pick, seg_start[v + 1], e)
        row = lax.dynamic_index_in_dim(nbrs, jnp.where(s < e, s, nbrs.shape[0] - 1), keepdims=False)
        slots = jnp.concatenate([jnp.where(pick, v, size)[None], row])
        k = _gather(key, slots, big)
        # maximum(big, rest) is big, but it orders the reads of `key` before its writes (in place)
        k = jnp.where(k < big, k - 1, k).at[0].set(jnp.maximum(big, rest))
        key = _scatter(key, slots, k)
        bmin = _update(bmin, b, jnp.where(pick, rest, bmin[b]))
        bmin = bmin.at[row // block].min(k[1:], mode="drop")
        out = _update(out, i, jnp.where(pick, v, out[i]))
        return key, bmin, out, v, s + (s < e), e, i + pick

    zero = jnp.int32(0)
    state = (tuple(key), bmin, jnp.zeros(size, jnp.int32), zero, zero, zero, zero)
    return lax.fori_loop(0, steps, step, state)[2]


def _read(pieces, start, width):
    """``width`` keys from ``start`` of the keys held in ``pieces`` (one piece holds them all)."""
    length = pieces[0].shape[0]
    options = jnp.stack([lax.dynamic_slice(p, (start % length,), (width,)) for p in pieces])
    return options[start // length]


def _local(index, q, length):
    """Offsets of ``index`` in piece ``q``, with ``length`` (out of bounds) for the others."""
    local = index - q * length
    return jnp.where((local >= 0) & (local < length), local, length)


def _gather(pieces, index, fill):
    """The keys at ``index``, and ``fill`` (at least any key) where an index is out of bounds."""
    return functools.reduce(jnp.minimum, [p.at[_local(index, q, p.shape[0])].get(
        mode="fill", fill_value=fill) for q, p in enumerate(pieces)])


def _scatter(pieces, index, values):
    """Writes ``values`` at ``index`` (distinct or out of bounds) into the pieces."""
    return tuple(p.at[_local(index, q, p.shape[0])].set(values, mode="drop")
                 for q, p in enumerate(pieces))


def _update(array, index, value):
    """``array.at[index].set(value)`` as an in-place dynamic-update-slice."""
    return lax.dynamic_update_slice(array, jnp.reshape(value, (1,)).astype(array.dtype), (index,))
