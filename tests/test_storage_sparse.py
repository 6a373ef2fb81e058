"""Sparse results on disk: the coordinate table, its round trips (in process and sharded),
atomic and complete writes, load errors, reuse of a stored pattern, and other readers."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from jax.experimental import sparse

import rayjac
from helpers import readme_recipe
from rayjac.runs import ConfigError, parse_config
from rayjac._jacobian import JacStream
from rayjac.runs import run, run_one
from rayjac.store import holds_result, load, read_sparsity, write_result

FORMATS = ["arrow", "parquet"]
_is_bcoo = lambda x: isinstance(x, sparse.BCOO)  # noqa: E731


def _dense(tree):
    return jax.tree_util.tree_map(lambda b: np.asarray(b.todense()), tree, is_leaf=_is_bcoo)


def _check_equal(loaded, expected):
    """Loaded BCOO blocks equal the in-memory ones: structure, shapes, dtypes, entries."""
    got, want = (jax.tree_util.tree_leaves(t, is_leaf=_is_bcoo) for t in (loaded, expected))
    assert jax.tree_util.tree_structure(loaded, is_leaf=_is_bcoo) == \
        jax.tree_util.tree_structure(expected, is_leaf=_is_bcoo)
    for a, b in zip(got, want):
        assert isinstance(a, sparse.BCOO) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


def _stencil(x):
    return {"d": x[2:] - 2 * x[1:-1] + x[:-2], "s": x[0] * x[-1]}


def _two_inputs(w, x):
    return w[:, None] * jnp.roll(x, 1, axis=1), jnp.tanh(x).T


def _mixed_dtypes(x):
    return {"f16": (x[:3] ** 2).astype(jnp.float16), "bf": x.astype(jnp.bfloat16) * 2,
            "f32": jnp.diff(x), "int": jnp.arange(2), "flag": x > 0.5}


def _holo(z):
    return jnp.exp(1j * z[::-1]) * z


def _with_vars():
    a = rayjac.Variable(jnp.linspace(0.5, 1.5, 5))
    b = rayjac.Variable(jnp.ones((2, 3)))

    def f(x):
        out = a.value * jnp.roll(x, -1) + jnp.sum(b.value)
        a.value = a.value + 1.0
        return out, {"aux": x[0] * 2}

    return f, a, b


CASES = {
    "stencil": (_stencil, (jnp.linspace(0.0, 1.0, 9),), {}),
    "two_inputs": (_two_inputs, (jnp.arange(3.0), jnp.linspace(0.1, 0.9, 12).reshape(3, 4)),
                   {"argnums": (0, 1)}),
    "mixed_dtypes": (_mixed_dtypes, (jnp.linspace(0.0, 1.0, 4),), {}),
    "holomorphic": (_holo, (jnp.linspace(0.0, 1.0, 5) + 0.5j,), {"holomorphic": True}),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_roundtrip_equals_the_in_memory_blocks(tmp_path, fmt, case):
    func, args, options = CASES[case]
    jf = rayjac.jacfwd(func, sparsity="auto", return_value=True, chunk_size=2, **options)
    res = load(write_result(tmp_path / "run", jf.stream(args), format=fmt))
    expected, value = jf(*args)
    _check_equal(res.jacobian, expected)
    jax.tree_util.tree_map(np.testing.assert_array_equal, res.value, value)
    dense = rayjac.jacfwd(func, **options)(*args)  # = jax.jacfwd (test_jacobian), int outputs too
    for got, want in zip(jax.tree_util.tree_leaves(_dense(res.jacobian)),
                         jax.tree_util.tree_leaves(dense)):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.complex128),
                                       np.asarray(want, np.complex128),
                                   rtol=1e-2 if want.dtype.itemsize <= 2 else 1e-6)
    assert isinstance(res.sparsity, rayjac.Sparsity)
    pattern = jf.sparsity(*args)
    np.testing.assert_array_equal(res.sparsity.rows, pattern.rows)
    np.testing.assert_array_equal(res.sparsity.cols, pattern.cols)
    np.testing.assert_array_equal(res.sparsity.colors, pattern.colors)
    meta = res.metadata
    assert meta["kind"] == "sparse" and meta["schema_version"] == 2
    assert meta["sparsity"]["nnz"] == pattern.nnz
    assert meta["sparsity"]["num_colors"] == pattern.num_colors
    assert set(meta["sparsity"]["times"]) == {"detect_s", "color_s"}
    blocks = jax.tree_util.tree_leaves(expected, is_leaf=_is_bcoo)
    assert [b["nnz"] for b in meta["jacobian"]["blocks"]] == [b.nse for b in blocks]
    assert [tuple(b["shape"]) for b in meta["jacobian"]["blocks"]] == [b.shape for b in blocks]


def test_state_grad_vars_and_aux_roundtrip(tmp_path):
    f, a, b = _with_vars()
    x = jnp.linspace(0.0, 1.0, 5)
    jf = rayjac.jacfwd(f, grad_vars=[a, b], argnums=0, has_aux=True, sparsity="auto")
    res = load(write_result(tmp_path / "run", jf.stream((x,))))
    np.testing.assert_allclose(a.value, jnp.linspace(0.5, 1.5, 5) + 1.0)  # written once
    a.value = jnp.linspace(0.5, 1.5, 5)
    expected, aux = jf(x)
    _check_equal(res.jacobian, expected)
    np.testing.assert_allclose(res.aux["aux"], aux["aux"])
    out_ndims = [b["out_ndim"] for b in res.metadata["jacobian"]["blocks"]]
    assert out_ndims == [1, 1, 1]


def test_complex_values_are_stored_as_real_and_imaginary_parts(tmp_path):
    z = jnp.linspace(0.0, 1.0, 5).astype(jnp.complex64) + 0.25j
    jf = rayjac.jacfwd(_holo, holomorphic=True, sparsity="auto")
    path = write_result(tmp_path / "run", jf.stream((z,)))
    table = pa.ipc.open_file(pa.memory_map(f"{path}/jacobian.arrow")).read_all()
    assert table.column_names == ["row", "col", "value_real", "value_imag"]
    assert table.schema.field("value_real").type == pa.float32()
    values = table["value_real"].to_numpy() + 1j * table["value_imag"].to_numpy()
    dense = np.asarray(jax.jacfwd(_holo, holomorphic=True)(z))
    np.testing.assert_allclose(values, dense[table["row"].to_numpy(), table["col"].to_numpy()],
                               rtol=1e-6)


def test_one_record_batch_per_shard_in_any_order(tmp_path):
    x = jnp.linspace(0.0, 1.0, 30)
    jf = rayjac.jacfwd(lambda x: jnp.roll(x, 1) * x - jnp.roll(x, -2), sparsity="auto")
    stream = jf.stream((x,))
    items = list(stream.shards)
    assert len(items) == 1 and items[0].stop == stream.plan.num_colors
    plan = stream.plan
    parts = [(c, c + 1) for c in reversed(range(plan.num_colors))]
    starts = plan.by_color[0][1]  # the whole shard's values are in colour order
    shards = [type(items[0])(a, b, [items[0].values[0][starts[a]:starts[b]]]) for a, b in parts]
    path = write_result(tmp_path / "run", JacStream(stream.layout, None, None, iter(shards),
                                                   lambda: None, plan))
    file = pa.ipc.open_file(pa.memory_map(f"{path}/jacobian.arrow"))
    assert file.num_record_batches == plan.num_colors
    _check_equal(load(path).jacobian, jf(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_sharded_sparse_result_equals_in_process(ray_local, tmp_path, fmt):
    x = jnp.linspace(0.0, 1.0, 40)
    f = lambda x: {"a": jnp.roll(x, 1) * x - jnp.roll(x, -2), "b": x[::2] ** 2}  # noqa: E731
    local = rayjac.jacfwd(f, sparsity="auto")
    sharded = rayjac.jacfwd(f, sparsity="auto", shards=3)
    path = write_result(tmp_path / "run", sharded.stream((x,)), format=fmt)
    res = load(path)
    _check_equal(res.jacobian, local(x))
    if fmt == "arrow":
        file = pa.ipc.open_file(pa.memory_map(f"{path}/jacobian.arrow"))
        assert file.num_record_batches == 3  # one per shard, as they arrived
    else:
        assert pq.ParquetFile(f"{path}/jacobian.parquet").metadata.num_row_groups == 3


def _missing_colour_stream():
    x = jnp.linspace(0.0, 1.0, 12)
    jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto", chunk_size=1)
    stream = jf.stream((x,))
    shards = list(stream.shards)[1:]  # the first colour never arrives
    return JacStream(stream.layout, None, None, iter(shards), lambda: None, stream.plan)


def test_an_incomplete_stream_publishes_nothing_and_keeps_the_old_result(tmp_path):
    jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto")
    path = write_result(tmp_path / "run", jf.stream((jnp.ones(12),)))
    before = {name: open(f"{path}/{name}", "rb").read() for name in os.listdir(path)}
    with pytest.raises(ValueError, match=r"covered 1 of the 2 colours .* not written"):
        write_result(path, _missing_colour_stream(), overwrite=True)
    assert {name: open(f"{path}/{name}", "rb").read() for name in os.listdir(path)} == before
    assert os.listdir(tmp_path) == ["run"]  # no temporary folder left behind


def test_the_table_is_three_plain_columns_for_polars_and_duckdb(tmp_path):
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    x = jnp.linspace(0.0, 1.0, 6)
    jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto")
    expected = np.asarray(jax.jacfwd(lambda x: x[1:] * x[:-1])(x))
    for fmt in FORMATS:
        path = write_result(tmp_path / fmt, jf.stream((x,)), format=fmt)
        file = f"{path}/jacobian.{fmt}"
        frame = pl.read_ipc(file) if fmt == "arrow" else pl.read_parquet(file)
        assert frame.columns == ["row", "col", "value"]
        assert frame.dtypes == [pl.Int64, pl.Int64, pl.Float32]
        dense = np.zeros(expected.shape, np.float32)
        dense[frame["row"].to_numpy(), frame["col"].to_numpy()] = frame["value"].to_numpy()
        np.testing.assert_allclose(dense, expected)
        if fmt == "parquet":
            rows = duckdb.sql(f"SELECT row, col, value FROM '{file}' ORDER BY row, col").fetchall()
            r, c, v = map(np.asarray, zip(*rows))
            assert list(zip(r, c)) == sorted(zip(frame["row"], frame["col"]))
            np.testing.assert_allclose(v, expected[r, c])


# ------------------------------------------------------------------ the README's scipy recipe

def _documented_recipe() -> str:
    """The scipy recipe of the README, plus a driver that saves its matrix."""
    return readme_recipe("sparse recipe:", """
        import sys
        import scipy.sparse
        matrix = sparse_jacobian(sys.argv[1])
        assert "rayjac" not in sys.modules and "jax" not in sys.modules
        scipy.sparse.save_npz(sys.argv[2], scipy.sparse.csr_matrix(matrix))
    """)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", ["two_inputs", "holomorphic"])
def test_pyarrow_and_scipy_alone_rebuild_the_flat_jacobian(tmp_path, fmt, case):
    func, args, options = CASES[case]
    jf = rayjac.jacfwd(func, sparsity="auto", **options)
    path = write_result(tmp_path / "run", jf.stream(args), format=fmt)
    out = tmp_path / "matrix.npz"
    subprocess.run([sys.executable, "-c", _documented_recipe(), path, str(out)], check=True,
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    matrix = sp.load_npz(out)
    np.testing.assert_allclose(matrix.toarray(), _flat_jacobian(func, args, options), rtol=1e-6)
    assert matrix.shape == tuple(load(path).sparsity.shape)


def _flat_jacobian(func, args, options):
    """The flat (m, n) Jacobian: output leaves stacked (each row-major), inputs side by side."""
    from jax.flatten_util import ravel_pytree

    nums = options.get("argnums", 0)
    nums = nums if isinstance(nums, tuple) else (nums,)
    flat, unravel = ravel_pytree(tuple(args[i] for i in nums))

    def f_flat(v):
        full = list(args)
        for i, x in zip(nums, unravel(v)):
            full[i] = x
        return ravel_pytree(func(*full))[0]

    return np.asarray(jax.jacfwd(f_flat, holomorphic=options.get("holomorphic", False))(flat))


# --------------------------------------------------------------------------- load errors

def _sparse_result(tmp_path, fmt="arrow"):
    jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto")
    return write_result(tmp_path / "run", jf.stream((jnp.ones(8),)), format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_coordinate_table_is_a_clear_error(tmp_path, fmt):
    path = _sparse_result(tmp_path, fmt)
    file = f"{path}/jacobian.{fmt}"
    data = open(file, "rb").read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"jacobian.{fmt} is truncated or corrupt"):
        load(path)


def test_missing_colours_file_is_a_clear_error(tmp_path):
    path = _sparse_result(tmp_path)
    os.remove(f"{path}/colors.arrow")
    with pytest.raises(ValueError, match=r"not a complete rayjac result: colors.arrow is missing"):
        load(path)


def _read_ipc(file: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(file)).read_all()


def _rewrite_ipc(file: str, table: pa.Table) -> None:
    with pa.OSFile(file, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def test_repeated_entries_are_refused(tmp_path):
    path = _sparse_result(tmp_path)
    file = f"{path}/jacobian.arrow"
    table = _read_ipc(file)
    # the first entry again in place of the last: the count of entries stays right
    _rewrite_ipc(file, pa.concat_tables([table.slice(0, table.num_rows - 1), table.slice(0, 1)]))
    with pytest.raises(ValueError, match=r"jacobian.arrow is truncated or corrupt .*repeated"):
        load(path)


def test_invalid_stored_colours_are_refused(tmp_path):
    path = _sparse_result(tmp_path)
    file = f"{path}/colors.arrow"
    table = _read_ipc(file)
    _rewrite_ipc(file, pa.Table.from_arrays([pa.array(np.zeros(table.num_rows, np.int64))],
                                            schema=table.schema))
    with pytest.raises(ValueError, match=r"not a valid colouring"):
        load(path)


def test_read_sparsity_of_a_dense_result_says_so(tmp_path):
    path = write_result(tmp_path / "run", rayjac.jacfwd(jnp.sin).stream((jnp.ones(3),)))
    with pytest.raises(ValueError, match=r"holds a dense result, which has no sparsity"):
        read_sparsity(path)
    assert load(path).sparsity is None
    assert [b["out_ndim"] for b in load(path).metadata["jacobian"]["blocks"]] == [1]


# ----------------------------------------------------------------------- configs and runs

def _config(tmp_path, **jacfwd):
    return parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 16},
                         "jacfwd": {"argnums": 0, "grad_vars": "forcing", **jacfwd},
                         "output": {"path": str(tmp_path / jacfwd.get("sparsity", "dense")
                                                .replace("/", "_"))}})


def test_a_config_with_sparsity_auto_runs_and_stores_a_sparse_result(tmp_path):
    path = run_one(_config(tmp_path, sparsity="auto"))
    dense = load(run_one(_config(tmp_path)))
    res = load(path)
    assert res.sparsity.shape == (16, 17) and res.sparsity.nnz == 16 * 4 + 16
    for got, want in zip(jax.tree_util.tree_leaves(_dense(res.jacobian)),
                         jax.tree_util.tree_leaves(dense.jacobian)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_config_reuses_the_pattern_of_an_earlier_sparse_result(tmp_path):
    first = run_one(_config(tmp_path, sparsity="auto"))
    again = load(run_one(_config(tmp_path, sparsity=first)))
    np.testing.assert_array_equal(again.sparsity.colors, load(first).sparsity.colors)
    assert set(again.metadata["sparsity"]["times"]) == {"read_s"}  # nothing detected again
    _check_equal(again.jacobian, load(first).jacobian)


@pytest.mark.parametrize("folder", ["missing", "dense"])
def test_a_folder_without_a_sparse_result_is_a_config_error(tmp_path, folder):
    if folder == "dense":
        folder = run_one(_config(tmp_path))
    else:
        folder = str(tmp_path / folder)
    with pytest.raises(ConfigError, match=r"jacfwd.sparsity: .* is not 'auto' and not the "
                                          r"folder of a sparse rayjac result"):
        run_one(_config(tmp_path, sparsity=folder))


def test_a_sweep_over_sparsity_gives_equal_jacobians(tmp_path):
    config = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 12},
                           "jacfwd": {"argnums": 0},
                           "sweep": {"jacfwd.sparsity": [None, "auto"]},
                           "output": {"path": str(tmp_path / "sweep")}})
    records = run(config)
    assert [r.status for r in records] == ["done", "done"]
    dense, sparse_ = (load(tmp_path / "sweep" / r.path) for r in records)
    assert dense.sparsity is None and sparse_.sparsity is not None
    np.testing.assert_allclose(_dense(sparse_.jacobian), dense.jacobian, rtol=1e-6)
    assert [r.status for r in run(config)] == ["done", "done"]  # a rerun skips both


def test_the_cli_runs_shows_and_plots_a_sparse_config(tmp_path):
    out = tmp_path / "l96"
    env = {**os.environ, "RAYJAC_QUIET": "1"}
    repo = os.path.join(os.path.dirname(__file__), os.pardir)
    subprocess.run(["rayjac", "run", "configs/lorenz96_sparse.yaml", "--set", "params.n=64",
                    "--set", f"output.path={out}"], check=True, cwd=repo, env=env)
    shown = subprocess.run(["rayjac", "show", str(out)], check=True, cwd=repo, env=env,
                           capture_output=True, text=True).stdout
    assert "nnz" in shown and "colours" in shown
    subprocess.run(["rayjac", "plot", str(out), "-o", str(tmp_path / "l96.png")], check=True,
                   cwd=repo, env=env)
    assert (tmp_path / "l96.png").read_bytes()[:4] == b"\x89PNG"
    res = load(out)
    assert res.sparsity.nnz == 64 * 4 + 64 and holds_result(out)


@pytest.mark.parametrize("where", ["jacfwd", "sweep"])
def test_submit_refuses_a_relative_sparsity_folder(where):
    from rayjac.runs._submit import submit

    raw = {"problem": "jobs.lorenz96:make", "output": {"path": "/shared/l96"}}
    if where == "jacfwd":
        raw["jacfwd"] = {"sparsity": "results/l96"}
    else:
        raw["sweep"] = {"jacfwd.sparsity": ["auto", "results/l96"]}
    with pytest.raises(ConfigError, match=r"jacfwd.sparsity: 'results/l96' is a relative "
                                          r"folder.*absolute path on shared storage or a URI"):
        submit(parse_config(raw), "http://127.0.0.1:1")
