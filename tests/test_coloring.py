"""Tests of rayjac.sparsity._coloring: validity, the three orders against pure-Python references, counts."""

import doctest
import time

import jax
import numpy as np
import pytest

from rayjac.sparsity import _coloring
from rayjac.sparsity._coloring import color_columns, num_colors


# Patterns as (rows, cols, shape).
def tridiagonal(n):
    i = np.arange(n)
    return np.r_[i, i[1:], i[:-1]], np.r_[i, i[1:] - 1, i[:-1] + 1], (n, n)


def diagonal(n):
    return np.arange(n), np.arange(n), (n, n)


def lorenz96(n):
    """Row i depends on i-2, i-1, i, i+1 (mod n)."""
    cols = (np.arange(n)[:, None] + np.arange(-2, 2)).ravel() % n
    return np.repeat(np.arange(n), 4), cols, (n, n)


def block_diagonal(k, blocks):
    r, c = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    offset = k * np.arange(blocks)[:, None]
    return (r.ravel() + offset).ravel(), (c.ravel() + offset).ravel(), (k * blocks, k * blocks)


def dense(m, n):
    r, c = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    return r.ravel(), c.ravel(), (m, n)


def brusselator(N):
    """2-D Brusselator on an N x N periodic grid: each species' 5-point stencil, plus the other
    species at the cell (u first, then v; cells row-major)."""
    cell = np.arange(N * N).reshape(N, N)
    stencil = [cell] + [np.roll(cell, s, a) for s in (1, -1) for a in (0, 1)]
    rows, cols, M = [], [], N * N
    for own, other in ((0, M), (M, 0)):
        for neighbour in stencil:
            rows.append(own + cell.ravel()), cols.append(own + neighbour.ravel())
        rows.append(own + cell.ravel()), cols.append(other + cell.ravel())
    return np.concatenate(rows), np.concatenate(cols), (2 * M, 2 * M)


def random_pattern(seed, m, n, density):
    """Random entries with duplicates, empty rows and empty columns, in shuffled order."""
    rng = np.random.default_rng(seed)
    nnz = int(density * m * n)
    rows, cols = rng.integers(0, max(m, 1), nnz), rng.integers(0, max(n // 2, 1), nnz) * 2
    return np.r_[rows, rows[: nnz // 4]], np.r_[cols, cols[: nnz // 4]], (m, n)


# Pure-Python references.
def reference_adjacency(rows, cols, n):
    """Column-intersection graph as a list of neighbour sets."""
    by_row = {}
    for r, c in zip(rows.tolist(), cols.tolist()):
        by_row.setdefault(r, set()).add(c)
    adjacency = [set() for _ in range(n)]
    for members in by_row.values():
        for c in members:
            adjacency[c] |= members - {c}
    return adjacency


def reference_greedy(adjacency, order):
    """Each vertex in order takes the smallest colour that no coloured neighbour has."""
    colors = {}
    for v in order:
        taken = {colors[u] for u in adjacency[v] if u in colors}
        colors[v] = next(c for c in range(len(adjacency) + 1) if c not in taken)
    return [colors[v] for v in range(len(adjacency))]


def reference_largest_first(adjacency):
    """networkx's largest_first: a stable sort by degree, descending."""
    return sorted(range(len(adjacency)), key=lambda v: len(adjacency[v]), reverse=True)


def reference_smallest_last(adjacency):
    """Repeatedly removes the lowest-index vertex of minimum remaining degree; reversed."""
    degree, alive, removed = [len(a) for a in adjacency], set(range(len(adjacency))), []
    while alive:
        v = min(alive, key=lambda u: (degree[u], u))
        alive.remove(v), removed.append(v)
        for u in adjacency[v] & alive:
            degree[u] -= 1
    return removed[::-1]


def assert_valid(colors, rows, cols, shape):
    assert colors.dtype == np.int32 and colors.shape == (shape[1],)
    assert np.array_equal(np.unique(colors), np.arange(num_colors(colors)))
    entries = np.unique(np.stack([rows, cols]), axis=1)  # columns sharing a row differ in colour:
    assert np.unique(np.stack([entries[0], colors[entries[1]]]), axis=1).shape == entries.shape
    assert np.all(colors[np.setdiff1d(np.arange(shape[1]), cols)] == 0)


RANDOM = [(seed, m, n, d) for seed, (m, n, d) in enumerate(
    [(40, 40, 0.05), (30, 60, 0.08), (60, 30, 0.1), (50, 50, 0.3), (10, 60, 0.2), (64, 64, 0.02)])]


@pytest.mark.parametrize("seed, m, n, density", RANDOM)
def test_random_patterns_are_validly_colored_and_deterministic(seed, m, n, density):
    rows, cols, shape = random_pattern(seed, m, n, density)
    colors = color_columns(rows, cols, shape)
    assert_valid(colors, rows, cols, shape)
    assert np.array_equal(colors, color_columns(rows[::-1], cols[::-1], shape))


@pytest.mark.parametrize("seed, m, n, density", RANDOM)
def test_each_order_matches_the_reference_greedy(seed, m, n, density):
    rows, cols, shape = random_pattern(seed, m, n, density)
    pattern, adjacency = _coloring._pattern(rows, cols, shape), reference_adjacency(rows, cols, n)
    graph = _coloring._intersection_graph(pattern)
    assert [set(graph.indices[graph.indptr[v]:graph.indptr[v + 1]]) for v in range(n)] == adjacency
    largest, smallest = _coloring._orders(graph)
    assert largest.tolist() == reference_largest_first(adjacency)
    assert smallest.tolist() == reference_smallest_last(adjacency)
    for order in (np.arange(n), largest, smallest):
        assert _coloring._greedy(pattern, order).tolist() == reference_greedy(adjacency, order)
    best = min((_coloring._greedy(pattern, o) for o in (np.arange(n), largest, smallest)),
               key=num_colors)  # min keeps the first of equals
    assert np.array_equal(color_columns(rows, cols, shape), best)


@pytest.mark.parametrize("width, piece", [(1, 32), (2, 16), (64, 16)])
def test_smallest_last_over_several_segments_and_pieces(monkeypatch, width, piece):
    # Vertices with more neighbours than `width` take several steps; `piece` splits the keys.
    monkeypatch.setattr(_coloring, "_MAX_WIDTH", width)
    monkeypatch.setattr(_coloring, "_PIECE", piece)
    rows, cols, shape = random_pattern(7, 40, 50, 0.1)
    graph = _coloring._intersection_graph(_coloring._pattern(rows, cols, shape))
    adjacency = reference_adjacency(rows, cols, shape[1])
    assert _coloring._smallest_last(graph).tolist() == reference_smallest_last(adjacency)


@pytest.mark.parametrize("pattern, expected", [
    (tridiagonal(1), 1), (tridiagonal(2), 2), (tridiagonal(16384), 3),
    (diagonal(1000), 1), (lorenz96(64), 4), (lorenz96(65536), 4),
    (block_diagonal(5, 40), 5), (block_diagonal(1, 3), 1), (dense(7, 9), 9), (dense(1, 5), 5),
])
def test_known_color_counts(pattern, expected):
    colors = color_columns(*pattern)
    assert num_colors(colors) == expected
    assert_valid(colors, *pattern)


@pytest.mark.parametrize("N", [4, 16])
def test_brusselator_uses_no_more_colors_than_largest_first(N):
    rows, cols, shape = brusselator(N)
    colors = color_columns(rows, cols, shape)
    assert_valid(colors, rows, cols, shape)
    adjacency = reference_adjacency(rows, cols, shape[1])
    reference = reference_greedy(adjacency, reference_largest_first(adjacency))
    assert num_colors(colors) <= max(reference) + 1


def test_brusselator_64_meets_the_published_count():
    assert num_colors(color_columns(*brusselator(64))) <= 12


def test_a_dense_row_is_fast_and_needs_every_color():
    n = 20000
    rows, cols = np.r_[np.arange(n), np.full(n, n)], np.r_[np.arange(n), np.arange(n)]
    start = time.perf_counter()
    colors = color_columns(rows, cols, (n + 1, n))
    assert time.perf_counter() - start < 2.0
    assert np.array_equal(np.sort(colors), np.arange(n))
    rows, cols = np.r_[np.arange(n), np.full(n - 1, n)], np.r_[np.arange(n), np.arange(1, n)]
    assert num_colors(color_columns(rows, cols, (n + 1, n))) == n - 1  # no shortcut


def test_a_graph_too_large_to_build_leaves_the_natural_order(monkeypatch):
    monkeypatch.setattr(_coloring, "_MAX_EDGES", 0)
    monkeypatch.setattr(_coloring, "_intersection_graph", None)  # calling it would fail
    rows, cols, shape = brusselator(4)
    natural = _coloring._greedy(_coloring._pattern(rows, cols, shape), np.arange(shape[1]))
    assert np.array_equal(color_columns(rows, cols, shape), natural)


@pytest.mark.parametrize("rows, cols, shape, expected", [
    ([], [], (3, 4), [0, 0, 0, 0]),
    ([], [], (0, 2), [0, 0]),
    ([], [], (3, 0), []),
    ([0, 0, 0], [1, 1, 1], (1, 3), [0, 0, 0]),
    ([0, 0, 1, 1], [3, 1, 1, 3], (2, 4), [0, 0, 0, 1]),
])
def test_empty_and_degenerate_patterns(rows, cols, shape, expected):
    colors = color_columns(np.array(rows, int), np.array(cols, int), shape)
    assert colors.dtype == np.int32 and colors.tolist() == expected


@pytest.mark.parametrize("rows, cols, shape, match", [
    ([0], [0], (3,), r"shape must be two non-negative ints \(m, n\), but got \(3,\)"),
    ([0], [0], (3, -1), "shape must be two non-negative ints"),
    ([0], [0], (3.0, 2), "shape must be two non-negative ints"),
    ([[0]], [0], (3, 3), r"rows must be a 1-D integer array, but got int64 of shape \(1, 1\)"),
    ([0], [0.5], (3, 3), "cols must be a 1-D integer array, but got float64"),
    ([0, 1], [0], (3, 3), "rows and cols must have one length, but got 2 and 1"),
    ([0, 3], [0, 0], (3, 3),
     r"rows must lie in \[0, 3\) for shape \(3, 3\), but got values in \[0, 3\]"),
    ([0], [-1], (3, 3), r"cols must lie in \[0, 3\)"),
])
def test_bad_input_is_a_value_error(rows, cols, shape, match):
    with pytest.raises(ValueError, match=match):
        color_columns(np.array(rows), np.array(cols), shape)


def test_x64_mode_gives_the_same_colors():
    pattern = brusselator(8)
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        expected = color_columns(*pattern)
        jax.config.update("jax_enable_x64", True)
        assert np.array_equal(color_columns(*pattern), expected)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_docstring_examples_run():
    assert doctest.testmod(_coloring).failed == 0


def _random(seed, n=300, per_row=5):
    """A pattern whose colouring needs the smallest-last kernel (above the row-degree bound)."""
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(n), per_row), rng.integers(0, n, n * per_row), (n, n)


def test_coloring_inside_an_outer_jit_runs_on_concrete_values(monkeypatch):
    rows, cols, shape = _random(0)
    eager = color_columns(rows, cols, shape)
    calls = []
    smallest_last = _coloring._smallest_last
    monkeypatch.setattr(_coloring, "_smallest_last", lambda g: calls.append(1) or smallest_last(g))
    found = {}

    @jax.jit
    def traced(x):
        found["colors"] = color_columns(rows, cols, shape)  # while jit traces: no tracers
        return x

    traced(1.0)
    assert calls and isinstance(found["colors"], np.ndarray)
    assert np.array_equal(found["colors"], eager)


def test_smallest_last_is_skipped_on_large_graphs(monkeypatch):
    monkeypatch.setattr(_coloring, "_MAX_SMALLEST_LAST", 0)
    monkeypatch.setattr(_coloring, "_smallest_last", None)  # calling it would fail
    rows, cols, shape = _random(1)
    pattern = _coloring._pattern(rows, cols, shape)
    largest = next(_coloring._orders(_coloring._intersection_graph(pattern)))
    best = min((_coloring._greedy(pattern, o) for o in (np.arange(shape[1]), largest)),
               key=num_colors)
    assert num_colors(color_columns(rows, cols, shape)) == num_colors(best)


@pytest.mark.parametrize("pattern, warns", [
    (tridiagonal(8), False),          # 3 colours for 8 columns
    (block_diagonal(2, 3), False),    # 2 colours for 6 columns: exactly a third
    (lorenz96(6), True),              # 4 colours for 6 columns: more than half
    (dense(1, 2), True),
    (diagonal(1), False),             # one column: nothing to save
])
def test_warning_when_colouring_saves_little(pattern, warns):
    import warnings

    from rayjac.sparsity import DenseColoringWarning, Sparsity
    from rayjac.sparsity._pattern import warn_if_dense
    sparsity = Sparsity(*pattern)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_dense(sparsity)
    assert [w.category for w in caught] == ([DenseColoringWarning] if warns else [])
    if warns:
        c, (m, n) = sparsity.num_colors, sparsity.shape
        message = str(caught[0].message)
        assert f"{c} colours for {n} columns" in message
        assert f"{sparsity.nnz} of {m * n} entries" in message


def test_warning_names_the_values_detection_could_not_read():
    from rayjac.sparsity import DenseColoringWarning, Sparsity
    from rayjac.sparsity._pattern import warn_if_dense
    with pytest.warns(DenseColoringWarning, match=r"(?s)value of the Variable `W` \(shape "
                      r"\(4, 4\)\) and argument 1; with them known the pattern would need 2 "
                      "colours"):
        warn_if_dense(Sparsity(*dense(4, 4)), ["the Variable `W` (shape (4, 4))",
                                                "argument 1"], 2)
