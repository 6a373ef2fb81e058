"""Results of many points on disk (rayjac.store._points): the ``point`` column, parts in any
order, dense and sparse, IPC and Parquet, against ``jax.vmap(jax.jacfwd)``; incomplete or
overlapping parts publish nothing; the flat matrix of a point; other readers."""

import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest
from jax.experimental import sparse

import rayjac
from rayjac.store import ResultError, holds_result, load, read_sparsity, write_result

FORMATS = ["arrow", "parquet"]
_is_bcoo = lambda x: isinstance(x, sparse.BCOO)  # noqa: E731


@dataclasses.dataclass
class FakeMapStream:
    """A map stream built from ``jax.vmap(jax.jacfwd)``: the storage contract alone."""

    layout: Any
    points: int
    value: Any
    aux: Any
    plan: Any
    parts: Iterator
    cancel: Callable[[], None] = lambda: None


def _stencil(x):
    return {"d": x[2:] - 2 * x[1:-1] + x[:-2], "s": x[0] * x[-1]}


def _two_leaves(x):
    return jnp.tanh(x) * x[::-1], (x[:3] ** 2).reshape(3, 1)


def _flat_jacobians(f, xs):
    """(B, m, n): each point's flat Jacobian in rayjac.Sparsity's order."""
    def flat(x):
        outs = jax.tree_util.tree_leaves(jax.jacfwd(f)(x))
        return jnp.concatenate([o.reshape(-1, x.size) for o in outs])
    return np.asarray(jax.vmap(flat)(xs))


def _parts(stream_of_one, xs, f, rects):
    """Parts over rectangles (p0, p1, start, stop) with values from the dense oracle."""
    layout, plan = stream_of_one.layout, stream_of_one.plan
    flat = _flat_jacobians(f, xs)
    sizes = [int(np.prod(s)) for s in layout.out_shapes]
    offsets = np.cumsum([0] + sizes)
    for p0, p1, start, stop in rects:
        if plan is None:
            values = [np.moveaxis(flat[p0:p1, offsets[k]:offsets[k + 1], start:stop], 1, 2)
                      .reshape((p1 - p0, stop - start) + s).astype(d)
                      for k, (s, d) in enumerate(zip(layout.out_shapes, layout.out_dtypes))]
        else:
            values = []
            for k in range(len(sizes)):
                entries = plan.entries[k][plan.positions(k, start, stop)]
                rows, cols = plan.pattern.rows[entries], plan.pattern.cols[entries]
                values.append(flat[p0:p1, rows, cols].astype(layout.out_dtypes[k]))
        yield (p0, p1, start, stop, values)


def _stream(f, xs, sparsity, rects, return_value=True):
    jf = rayjac.jacfwd(f, return_value=return_value, sparsity=sparsity)
    one = jf.stream((xs[0],))
    list(one.shards)
    value = jax.vmap(f)(xs) if return_value else None
    return FakeMapStream(one.layout, len(xs), value, None, one.plan,
                         _parts(one, xs, f, rects(one, len(xs))))


def _rects_mixed(one, points):
    n = one.layout.basis.n if one.plan is None else one.plan.num_colors
    half, cut = max(n // 2, 1), points // 2
    return [(cut, points, 0, n), (0, cut, half, n), (0, cut, 0, half)]  # any order, split


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("f, n", [(_stencil, 7), (_two_leaves, 5)])
def test_dense_map_result_round_trips(tmp_path, fmt, f, n):
    xs = jax.random.normal(jax.random.key(0), (5, n))
    folder = write_result(tmp_path / "r", _stream(f, xs, None, _rects_mixed), format=fmt)
    res = load(folder)
    assert res.points == 5 and res.metadata["points"] == 5 and res.sparsity is None
    want = jax.vmap(jax.jacfwd(f))(xs)
    for a, b in zip(jax.tree_util.tree_leaves(res.jacobian), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(res.value),
                    jax.tree_util.tree_leaves(jax.vmap(f)(xs))):
        np.testing.assert_array_equal(a, b)
    flat = _flat_jacobians(f, xs)
    np.testing.assert_allclose(res.matrix(point=3), flat[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("f, n", [(_stencil, 9), (_two_leaves, 6)])
def test_sparse_map_result_round_trips_as_batched_bcoo(tmp_path, fmt, f, n):
    xs = jax.random.normal(jax.random.key(1), (5, n))
    folder = write_result(tmp_path / "r", _stream(f, xs, "auto", _rects_mixed), format=fmt)
    res = load(folder)
    assert res.points == 5 and res.sparsity is not None
    want = jax.vmap(jax.jacfwd(f))(xs)
    for a, b in zip(jax.tree_util.tree_leaves(res.jacobian, is_leaf=_is_bcoo),
                    jax.tree_util.tree_leaves(want)):
        assert isinstance(a, sparse.BCOO) and a.n_batch == 1
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a.todense(), b, rtol=1e-6, atol=1e-6)
    flat = _flat_jacobians(f, xs)
    got = res.matrix(point=4)
    assert got.format == "csr"
    np.testing.assert_allclose(got.toarray(), flat[4], rtol=1e-6, atol=1e-6)
    pattern = read_sparsity(folder)
    assert pattern.nnz == res.sparsity.nnz and pattern.shape == flat.shape[1:]


def test_the_tables_have_a_point_column_that_polars_and_duckdb_read(tmp_path):
    import duckdb
    import polars as pl

    xs = jax.random.normal(jax.random.key(2), (4, 7))
    folder = write_result(tmp_path / "r", _stream(_stencil, xs, "auto", _rects_mixed),
                          format="parquet")
    frame = pl.read_parquet(f"{folder}/jacobian.parquet")
    assert frame.columns[:3] == ["point", "row", "col"]
    nnz = load(folder).sparsity.nnz
    assert frame.group_by("point").len().sort("point")["len"].to_list() == [nnz] * 4
    count = duckdb.sql(f"SELECT count(DISTINCT point) FROM '{folder}/value_aux.parquet'")
    assert count.fetchall() == [(4,)]


def test_incomplete_parts_publish_nothing(tmp_path):
    xs = jnp.ones((4, 7))
    stream = _stream(_stencil, xs, None, lambda one, b: [(0, 3, 0, one.layout.basis.n)])
    with pytest.raises(ValueError, match=r"covered 21 of the 28 \(point, tangent column\)"):
        write_result(tmp_path / "r", stream)
    assert not holds_result(tmp_path / "r") and not (tmp_path / "r").exists()


def test_overlapping_parts_are_refused(tmp_path):
    xs = jnp.ones((4, 7))
    stream = _stream(_stencil, xs, "auto", lambda one, b: [(0, 4, 0, 2), (2, 3, 1, 2)])
    with pytest.raises(ValueError, match=r"points \[2, 3\) and colours \[1, 2\) overlaps"):
        write_result(tmp_path / "r", stream)
    assert not (tmp_path / "r").exists()


def test_matrix_needs_a_valid_point_for_a_map_and_none_for_one_point(tmp_path):
    xs = jnp.ones((3, 7))
    res = load(write_result(tmp_path / "m", _stream(_stencil, xs, None, _rects_mixed)))
    with pytest.raises(ValueError, match=r"holds 3 points: pass point=i with 0 <= i < 3"):
        res.matrix()
    single = load(write_result(tmp_path / "s", rayjac.jacfwd(_stencil).stream((xs[0],))))
    assert single.points is None
    np.testing.assert_allclose(single.matrix(), _flat_jacobians(_stencil, xs[:1])[0])
    with pytest.raises(ValueError, match="holds one point"):
        single.matrix(point=0)


def test_a_map_table_that_lost_rows_is_a_clear_error(tmp_path):
    xs = jax.random.normal(jax.random.key(3), (3, 7))
    folder = write_result(tmp_path / "r", _stream(_stencil, xs, None, _rects_mixed))
    path = f"{folder}/jacobian.arrow"
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    cut = table.slice(0, table.num_rows - 1)
    with pa.OSFile(path + ".new", "wb") as sink, pa.ipc.new_file(sink, cut.schema) as writer:
        writer.write_table(cut)
    os.replace(path + ".new", path)
    with pytest.raises(ResultError, match=r"jacobian.arrow is truncated or corrupt .*3 points"):
        load(folder)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_pyarrow_and_scipy_alone_rebuild_point_i(tmp_path, fmt, sparsity):
    import subprocess
    import sys

    import scipy.sparse as sp

    from helpers import readme_recipe

    xs = jax.random.normal(jax.random.key(4), (4, 9))
    folder = write_result(tmp_path / "r", _stream(_two_leaves, xs, sparsity, _rects_mixed),
                          format=fmt)
    driver = readme_recipe("points recipe:", """
        import sys
        matrix = jacobian_at(sys.argv[1], int(sys.argv[2]))
        assert "rayjac" not in sys.modules and "jax" not in sys.modules
        dense = matrix.toarray() if scipy.sparse.issparse(matrix) else matrix
        np.save(sys.argv[3], dense)
    """)
    out = tmp_path / "m.npy"
    subprocess.run([sys.executable, "-c", driver, folder, "2", str(out)], check=True,
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    np.testing.assert_allclose(np.load(out), _flat_jacobians(_two_leaves, xs)[2], rtol=1e-6,
                               atol=1e-6)
    assert sp.issparse(load(folder).matrix(point=2)) == (sparsity is not None)
