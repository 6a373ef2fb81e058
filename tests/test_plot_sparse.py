"""``rayjac show`` / ``rayjac plot`` of sparse results (rayjac.cli._show, rayjac.cli._plot): the summary's numbers, the
binned pattern, the sparse singular values, and dense results old and new, all checked against
dense numpy of small blocks."""

import functools
import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import rayjac
from rayjac.cli import _plot, _show
from rayjac.store import _matrix
from rayjac.store import Result

matplotlib.use("Agg")
PNG = b"\x89PNG\r\n\x1a\n"
_is_bcoo = lambda x: isinstance(x, jsparse.BCOO)  # noqa: E731


def block_list(jac):
    return jax.tree_util.tree_leaves(jac, is_leaf=_is_bcoo)


def describe_blocks(jac, out_ndims):
    """``metadata["jacobian"]["blocks"]`` as storage writes it, for leaves in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(jac, is_leaf=_is_bcoo)[0]
    return [{"path": jax.tree_util.keystr(p) or "(root)", "shape": list(b.shape),
             "out_ndim": d, "dtype": str(b.dtype), "nnz": b.nse if _is_bcoo(b) else None}
            for (p, b), d in zip(flat, out_ndims)]


def sparse_result(f, args, out_ndims, argnums=0, holomorphic=False, drop_detect=False):
    """A Result made like ``load`` makes one, from ``rayjac.jacfwd(f, sparsity="auto")``."""
    jf = rayjac.jacfwd(f, argnums=argnums, holomorphic=holomorphic, sparsity="auto")
    jac, pattern = jf(*args), jf.sparsity(*args)
    m, n = pattern.shape
    times = {k: v for k, v in pattern.times.items() if not (drop_detect and k == "detect_s")}
    meta = {"config": {"name": "t", "problem": "tests:f", "jacfwd": {"argnums": argnums}},
            "jacobian": {"blocks": describe_blocks(jac, out_ndims)},
            "sparsity": {"shape": [m, n], "nnz": pattern.nnz, "num_colors": pattern.num_colors,
                         "density": pattern.nnz / (m * n), "times": times}}
    return Result(jac, None, None, meta, "results/t", pattern)


def bcoo(dense):
    """A BCOO of a numpy array's nonzeros, built with numpy (int32 indices, as stored)."""
    index, data = np.argwhere(dense != 0), dense[dense != 0]  # both in row-major order
    return jsparse.BCOO((data, index.astype(np.int32)), shape=dense.shape,
                        indices_sorted=True, unique_indices=True)


def lorenz96_bcoo(n, x):
    """The Lorenz-96 Jacobian at ``x``: entries at i-2, i-1, i, i+1 (mod n) of each row i."""
    i = np.arange(n)
    cols = np.stack([(i - 2) % n, (i - 1) % n, i, (i + 1) % n], 1).ravel()
    vals = np.stack([-x[(i - 1) % n], x[(i + 1) % n] - x[(i - 2) % n], -np.ones(n, x.dtype),
                     x[(i - 1) % n]], 1).ravel()
    index = np.stack([np.repeat(i, 4), cols], 1).astype(np.int32)
    return jsparse.BCOO((vals, index), shape=(n, n), unique_indices=True)


def pytree_f(p):
    h = jnp.tanh(p["w"] @ jnp.arange(1.0, 5.0) + p["b"])
    return {"h": h, "s": jnp.sum(p["b"] ** 2)}


PYTREE_ARGS = ({"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.array([0.5, -1.0, 0.0])},)
# h: (3,) and s: () against b: (3,) and w: (3, 4); tree order {h: {b, w}, s: {b, w}}
PYTREE_OUT_NDIMS = [1, 1, 0, 0]
CASES = {
    "stencil": (lambda x: x[1:] * x[:-1] - jnp.roll(x, 2)[1:], (jnp.arange(1.0, 9.0),), [1], {}),
    "pytree": (pytree_f, PYTREE_ARGS, PYTREE_OUT_NDIMS, {}),
    "complex": (lambda z: z * jnp.roll(z, 1) + 1j * z,
                (jnp.arange(6.0).astype(jnp.complex64) * (1 + 0.5j),), [1],
                {"holomorphic": True}),
    # x[0] = 0 makes 2 x[0] an explicit zero; the second argument is an empty block
    "zeros_and_empty": (lambda x, y: (x ** 2).reshape(2, 3), (jnp.arange(6.0), jnp.ones(4)),
                        [2, 2], {"argnums": (0, 1)}),
}


@functools.lru_cache(maxsize=None)
def case_result(name, **kw):
    f, args, ndims, options = CASES[name]
    return sparse_result(f, args, ndims, **options, **kw)


# --- summarize ---

@pytest.mark.parametrize("name", sorted(CASES))
def test_summarize_sparse_numbers_match_dense_numpy(name):
    result = case_result(name)
    text = _show.summarize(result).splitlines()
    s = result.sparsity
    m, n = s.shape
    assert text[2] == (f"sparsity ({m}, {n})  nnz {s.nnz}  density {s.nnz / (m * n):.3g}  "
                       f"colours {s.num_colors}  detect {s.times['detect_s']:.3g} s  "
                       f"colour {s.times['color_s']:.3g} s")
    lines = [line for line in text if line.startswith("jacobian")]
    assert len(lines) == len(block_list(result.jacobian))
    for line, block in zip(lines, block_list(result.jacobian)):
        dense = np.asarray(block.todense())
        size = dense.size
        assert f"{str(block.dtype):10} {str(tuple(block.shape)):18}" in line
        assert line.endswith(f"nnz {block.nse}  density {block.nse / size:.3g}")
        if block.nse:
            assert (f"|.|_F {np.linalg.norm(np.abs(dense)):.4g}  "
                    f"max|.| {np.abs(dense).max():.4g}") in line
    assert sum(b.nse for b in block_list(result.jacobian)) == s.nnz


def test_summarize_counts_explicit_zeros_and_says_when_the_pattern_was_given():
    result = case_result("zeros_and_empty", drop_detect=True)
    x_block, y_block = block_list(result.jacobian)
    assert x_block.nse == 6 and np.count_nonzero(x_block.todense()) == 5  # d(x0^2) = 0 at 0
    assert y_block.nse == 0
    text = _show.summarize(result)
    assert "detect given  colour" in text
    assert "(2, 3, 6)          |.|_F" in text and "nnz 6  density 0.167" in text
    assert "(2, 3, 4)          |.|_F 0  max|.| 0  nnz 0  density 0" in text


def test_summarize_without_stored_sparsity_uses_the_pattern():
    result = case_result("stencil")
    meta = {k: v for k, v in result.metadata.items() if k != "sparsity"}
    text = _show.summarize(Result(result.jacobian, None, None, meta, "r", result.sparsity))
    assert f"sparsity (7, 8)  nnz {result.sparsity.nnz}  density" in text


def test_summarize_sums_repeated_indices_like_bcoo():
    index = np.array([[0, 1], [0, 1], [1, 0]], np.int32)
    block = jsparse.BCOO((np.array([1.0, 2.0, -4.0]), index), shape=(2, 2))
    line = _show._leaf_line(block)
    assert line.endswith("|.|_F 5  max|.| 4  nnz 2  density 0.5")


def test_summarize_dense_results_unchanged():
    jac = {"b": np.array([[1.0, 0.0], [0.0, -2.0]], np.float32)}
    meta = {"config": {"problem": "p:f"}, "jacobian": {"outputs": [{"shape": [2]}]}}
    text = _show.summarize(Result(jac, None, None, meta, "r"))
    label = "['b']"
    assert text.splitlines()[2] == (f"jacobian {label:20} float32    (2, 2)             "
                                    "|.|_F 2.236  max|.| 2  nonzero 50.0%")
    assert "sparsity" not in text


# --- the matrix view, binning, singular values ---

@pytest.mark.parametrize("shape, out_ndim", [((2, 3, 4), 1), ((2, 3, 4), 2), ((3, 4), 0),
                                             ((4,), 1), ((), 0), ((5, 0), 1)])
def test_sparse_matrix_is_the_dense_reshape(shape, out_ndim):
    dense = (np.random.default_rng(0).standard_normal(shape) * (
        np.random.default_rng(1).random(shape) < 0.4)).astype(np.float32)
    matrix = _matrix.sparse_matrix(bcoo(dense), out_ndim)
    np.testing.assert_array_equal(matrix.toarray(), dense.reshape(matrix.shape))
    assert matrix.shape == (math.prod(shape[:out_ndim]), math.prod(shape[out_ndim:]))


def test_sparse_matrix_refuses_batched_blocks():
    block = jsparse.BCOO((np.ones((3, 1), np.float32), np.arange(3, dtype=np.int32).reshape(
        3, 1, 1)), shape=(3, 3))  # the identity, one entry per batch row
    with pytest.raises(ValueError, match="n_batch=0 and n_dense=0, got n_batch=1"):
        _matrix.sparse_matrix(block, 1)


def reference_counts(pattern, bins_m, bins_n):
    """Per-cell counts of a dense pattern: cell k of an axis of length L holds the indices
    ceil(k L / B) <= i < ceil((k + 1) L / B)."""
    m, n = pattern.shape
    starts = lambda size, b: [(k * size + b - 1) // b for k in range(b)]  # noqa: E731
    by_rows = np.add.reduceat(pattern.astype(np.int64), starts(m, bins_m), axis=0)
    return np.add.reduceat(by_rows, starts(n, bins_n), axis=1)


@pytest.mark.parametrize("shape, bins", [((10, 10), 10), ((10, 10), 4), ((37, 91), 7),
                                         ((5, 300), 300), ((1000, 3), (13, 2)),
                                         ((1, 1), 5), ((64, 48), (8, 48))])
def test_binned_counts_equal_true_nonzero_counts_per_cell(shape, bins):
    pattern = np.random.default_rng(sum(shape)).random(shape) < 0.2
    rows, cols = np.nonzero(pattern)
    counts = _plot.binned_counts(rows, cols, shape, bins)
    bins_m, bins_n = (bins, bins) if isinstance(bins, int) else bins
    bins_m, bins_n = min(bins_m, shape[0]), min(bins_n, shape[1])
    assert counts.shape == (bins_m, bins_n)
    np.testing.assert_array_equal(counts, reference_counts(pattern, bins_m, bins_n))
    assert counts.sum() == rows.size


def random_sparse(m, n, density, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random_array((m, n), density=density, rng=rng)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * sp.random_array((m, n), density=density, rng=rng)
    return sp.csr_array(a.astype(dtype))


@pytest.mark.parametrize("m, n, dtype", [(300, 250, np.float64), (260, 400, np.float32),
                                         (300, 300, np.complex128), (250, 300, np.complex64),
                                         (40, 60, np.float64), (1000, 3, np.float32),
                                         (15, 12, np.complex64)])
def test_top_singular_values_match_numpy_svd(m, n, dtype):
    matrix = random_sparse(m, n, 0.05, dtype)
    values = _plot.top_singular_values(matrix)
    expected = np.linalg.svd(matrix.toarray().astype(np.complex128), compute_uv=False)
    k = min(_plot._TOP_K, m, n)
    assert values.shape == (k,)
    np.testing.assert_allclose(values, expected[:k], rtol=1e-4, atol=1e-6 * expected[0])


def test_top_singular_values_of_empty_and_zero_blocks():
    assert _plot.top_singular_values(sp.csr_array((5, 0))).shape == (0,)
    np.testing.assert_array_equal(_plot.top_singular_values(sp.csr_array((30, 40))),
                                  np.zeros(20))


# --- plot ---

@pytest.fixture
def no_densify(monkeypatch):
    """Any BCOO made dense while plotting fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("plot made a BCOO block dense")
    monkeypatch.setattr(jsparse.BCOO, "todense", refuse)


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_sparse_writes_a_png(tmp_path, name, no_densify):
    out = _plot.plot(case_result(name), tmp_path / "j.png")
    assert (tmp_path / "j.png").read_bytes()[:8] == PNG and out == str(tmp_path / "j.png")


def reference_extremes(dense, bins_m, bins_n):
    """Per cell, the entry of largest magnitude (signed), by a loop over the entries."""
    m, n = dense.shape
    best = {}
    for r, c in zip(*np.nonzero(dense)):
        cell = (r * bins_m // m, c * bins_n // n)
        if cell not in best or abs(dense[r, c]) > abs(best[cell]):
            best[cell] = dense[r, c]
    out = np.full((bins_m, bins_n), np.nan)
    for (i, j), value in best.items():
        out[i, j] = value
    return out


def test_plot_draws_the_binned_signed_values_and_the_top_singular_values():
    import matplotlib.pyplot as plt

    dense = (np.random.default_rng(3).standard_normal((400, 350)) * (
        np.random.default_rng(4).random((400, 350)) < 0.01)).astype(np.float32)
    matrix = _matrix.sparse_matrix(bcoo(dense), 1)
    fig, (left, right) = plt.subplots(1, 2)
    _plot._draw_pattern(left, matrix, "x")
    values = _plot.top_singular_values(matrix)
    _plot._draw_top_singular_values(right, values, matrix.shape, "x")
    shown = left.images[0].get_array()
    want = reference_extremes(dense, 300, 300)
    np.testing.assert_array_equal(shown.filled(np.nan), want)
    assert shown.mask.sum() == np.isnan(want).sum() > 0
    assert (want < 0).any() and (want > 0).any()  # both signs shown
    assert left.get_xlabel() == "input index (column)"
    assert left.get_ylabel() == "output index (row)"
    np.testing.assert_allclose(right.lines[0].get_ydata(),
                               np.linalg.svd(dense, compute_uv=False)[:20], rtol=1e-6)
    assert f"x: 400 x 350, nnz {np.count_nonzero(dense)}, density" in left.get_title()
    assert right.get_title() == "x: singular values (top 20 of 350)"
    plt.close(fig)


def test_plot_small_and_empty_blocks(tmp_path, no_densify):
    blocks = {"empty": jsparse.BCOO((np.zeros(0, np.float32), np.zeros((0, 2), np.int32)),
                                    shape=(5, 0)),
              "none": jsparse.BCOO((np.zeros(0, np.float32), np.zeros((0, 2), np.int32)),
                                   shape=(3, 4)),
              "scalar": bcoo(np.array(2.5, np.float32)),
              "one": bcoo(np.array([[0.0, -1.0]], np.float32))}
    meta = {"config": {}, "jacobian": {"blocks": describe_blocks(blocks, [1, 1, 0, 1])}}
    _plot.plot(Result(blocks, None, None, meta, "r"), tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
    assert "nnz 0  density 0" in _show.summarize(Result(blocks, None, None, meta, "r"))


def test_plot_lorenz96_of_20000_sites(tmp_path, no_densify):
    n, forcing = 20000, 8.0
    block = lorenz96_bcoo(n, np.full(n, forcing, np.float32))
    rows, cols = np.asarray(block.indices).T  # at x = F the (i, i-1) entries are 0, but stored
    counts = _plot.binned_counts(rows, cols, (n, n), _plot._BINS)
    assert counts.sum() == 4 * n and counts.trace() > 0.9 * 4 * n
    matrix = _matrix.sparse_matrix(block, 1)
    # At x = F the Jacobian is circulant: its singular values are |sum_d c_d w^(j d)|.
    w = np.exp(2j * np.pi * np.arange(n) / n)
    exact = np.sort(np.abs(-forcing * w ** -2 - 1 + forcing * w))[::-1][:_plot._TOP_K]
    values = _plot.top_singular_values(matrix)
    np.testing.assert_allclose(values, exact, atol=1e-2 * exact[0])  # all within 0.1% of 17
    meta = {"config": {"name": "l96"}, "jacobian": {"blocks": describe_blocks(block, [1])}}
    _plot.plot(Result(block, None, None, meta, "r"), tmp_path / "l96.png")
    assert (tmp_path / "l96.png").read_bytes()[:8] == PNG


# --- dense results, with and without the stored out_ndim ---

def test_plot_dense_with_and_without_block_metadata(tmp_path):
    jac = {"w": np.arange(24.0, dtype=np.float32).reshape(2, 3, 4),
           "b": np.eye(2, 3, dtype=np.float32)[:, :2]}
    old = {"config": {}, "jacobian": {"outputs": [{"shape": [2]}]}}
    new = {**old, "jacobian": {**old["jacobian"], "blocks": describe_blocks(jac, [1, 1])}}
    for meta in (old, new):
        assert _plot._out_ndims(Result(jac, None, None, meta, "r")) == [1, 1]
        _plot.plot(Result(jac, None, None, meta, "r"), tmp_path / "d.png")
        assert (tmp_path / "d.png").read_bytes()[:8] == PNG


def test_stored_out_ndim_wins_over_the_guess():
    jac = np.zeros((2, 3, 6))  # a (6, 6) matrix of a (2, 3) output; the guess says (2, 18)
    meta = {"jacobian": {"outputs": [], "blocks": describe_blocks(jac, [2])}}
    assert _plot._out_ndims(Result(jac, None, None, meta, "r")) == [2]
    assert _plot._output_ndims(Result(jac, None, None, {"jacobian": {}}, "r")) == [1]


def test_top_singular_values_when_arpack_stops_early(monkeypatch):
    monkeypatch.setattr(_plot, "_SVDS_MAXITER", 1)
    n = 3000
    matrix = _matrix.sparse_matrix(lorenz96_bcoo(n, np.full(n, 8.0, np.float32)), 1)
    values = _plot.top_singular_values(matrix)
    assert values.size <= _plot._TOP_K and np.all(values <= 17.0 + 1e-3)


def test_sparse_matrix_of_half_precision_blocks():
    dense = np.array([[0.0, 1.5], [2.0, 0.0]], jnp.bfloat16)
    matrix = _matrix.sparse_matrix(bcoo(dense), 1)
    assert matrix.dtype == np.float32 and matrix.toarray().tolist() == [[0, 1.5], [2, 0]]
    assert _show._leaf_line(bcoo(dense)).endswith("|.|_F 2.5  max|.| 2  nnz 2  density 0.5")
