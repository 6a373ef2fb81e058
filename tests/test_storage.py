"""Result storage: round trips of every structure, atomic writes, load errors, interop."""

import collections
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import rayjac
from helpers import (expected_result, make_vars, model_args, readme_recipe, stateful_model,
                     tree_allclose)
from rayjac._jacobian import JacStream
from rayjac.store import check_destination, load, result_path, write_result

FORMATS = ["arrow", "parquet"]


def _parts(out, return_value, has_aux):
    """Splits what ``rayjac.jacfwd`` returns into (jacobian, value, aux)."""
    if not (return_value or has_aux):
        return out, None, None
    jac, *rest = out
    return jac, rest.pop(0) if return_value else None, rest.pop(0) if has_aux else None


def _roundtrip(folder, jf, args, fmt, **kwargs):
    return load(write_result(folder, jf.stream(args), format=fmt, **kwargs))


def _check_roundtrip(folder, func, args, fmt, chunk_size=None, **options):
    """``load(write_result(stream))`` equals the in-memory result of ``rayjac.jacfwd``."""
    jf = rayjac.jacfwd(func, chunk_size=chunk_size, **options)
    res = _roundtrip(folder, jf, args, fmt)
    expected = _parts(rayjac.jacfwd(func, **options)(*args), jf.return_value, jf.has_aux)
    tree_allclose((res.jacobian, res.value, res.aux), expected)
    return res


# ------------------------------------------------------------------------------- round trips

def _pytree(x):
    return {"a": jnp.sin(x["p"]) * x["q"][0], "s": jnp.sum(x["q"][1] ** 2), "n": [x["p"][:2]]}


def _mixed(x16, x32):
    return (x16 * x32[:2].astype(jnp.float16), jnp.sum(x32) * x16.astype(jnp.float32)[0])


def _with_aux(x):
    return x ** 2, {"count": jnp.int32(3), "flag": x > 1, "none": None, "c": x[0] * 1j}


CASES = {  # name: (func, args, options)
    "pytree": (_pytree, ({"p": jnp.arange(3.0), "q": (jnp.ones(3), jnp.ones((2, 2)))},),
               {"return_value": True}),
    "scalar_in": (lambda s: s * jnp.arange(3.0), (jnp.float32(2.0),), {}),
    "scalar_out": (lambda x: jnp.sum(x ** 3), (jnp.arange(3.0),), {"return_value": True}),
    "holomorphic": (lambda z: z ** 2 + 1j * z, (jnp.array([1 + 1j, 0.5 - 2j], jnp.complex64),),
                    {"holomorphic": True, "return_value": True}),
    "complex_out": (lambda x: jnp.exp(1j * x), (jnp.arange(3.0),), {}),
    "float16_mixed": (_mixed, (jnp.ones(2, jnp.float16), jnp.arange(3.0)),
                      {"argnums": (0, 1), "return_value": True}),
    "int_and_bool_out": (lambda x: (jnp.round(x).astype(jnp.int32), x > 1, x.astype(
        jnp.bfloat16)), (jnp.arange(3.0),), {"return_value": True}),
    "aux": (_with_aux, (jnp.arange(1.0, 4.0),), {"has_aux": True, "return_value": True}),
    "argnums_one_tuple": (lambda x, y: x * y, (jnp.ones(2), jnp.arange(2.0)), {"argnums": (1,)}),
    "zero_size": (lambda x, e: (x * 2, e, x[:0]), (jnp.ones(2), jnp.ones(0)),
                  {"argnums": (0, 1)}),
}


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_roundtrip_equals_in_memory(tmp_path, case, fmt, chunk_size):
    func, args, options = CASES[case]
    _check_roundtrip(tmp_path / "run", func, args, fmt, chunk_size, **options)


def test_roundtrip_complex128_under_x64(tmp_path):
    with jax.enable_x64(True):
        z = jnp.array([1 + 2j, 3 - 1j], jnp.complex128)
        res = _check_roundtrip(tmp_path / "run", lambda z: z ** 3, (z,), "arrow",
                               holomorphic=True)
    assert res.jacobian.dtype == np.complex128


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("argnums", [None, 0, (1, 0)])
@pytest.mark.parametrize("kind", ["none", "single", "list", "tuple", "dict"])
def test_roundtrip_grad_vars_containers(tmp_path, kind, argnums, fmt):
    vs, container = make_vars(kind)
    args = model_args()
    jf = rayjac.jacfwd(stateful_model(vs, True), grad_vars=container, argnums=argnums,
                       has_aux=True, return_value=True, chunk_size=5)
    res = _roundtrip(tmp_path / "run", jf, args, fmt)
    expected = expected_result(kind, argnums, True, True, vs, container, args)
    tree_allclose((res.jacobian, res.value, res.aux), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_tangent_columns(tmp_path, fmt):
    res = _check_roundtrip(tmp_path / "run", lambda x: (x * 2, jnp.sum(x)), (jnp.ones(0),), fmt,
                           chunk_size=1, return_value=True)
    assert res.jacobian[0].shape == (0, 0) and res.metadata["jacobian"]["columns"] == 0


def test_result_jax_jacfwd_oracle(tmp_path):
    x = {"p": jnp.linspace(0.1, 1.0, 4), "q": (jnp.ones(4), jnp.ones((2, 2)))}
    res = _roundtrip(tmp_path / "run", rayjac.jacfwd(_pytree, chunk_size=3), (x,), "arrow")
    tree_allclose(res.jacobian, jax.jacfwd(_pytree)(x))


# ------------------------------------------------------------------------ streams and shards

def _hand_stream(func, x, order, **options):
    """A JacStream whose shards (of 2 columns) arrive in the given order."""
    stream = rayjac.jacfwd(func, chunk_size=2, **options).stream((x,))
    shards = list(stream.shards)
    return JacStream(stream.layout, stream.value, stream.aux,
                     iter([shards[i] for i in order(len(shards))]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("order", [lambda k: range(k)[::-1], lambda k: [*range(1, k, 2),
                                                                        *range(0, k, 2)]])
def test_shards_in_any_order(tmp_path, fmt, order):
    x = jnp.linspace(0.0, 1.0, 7)
    path = write_result(tmp_path / "run", _hand_stream(jnp.sin, x, order), format=fmt)
    tree_allclose(load(path).jacobian, jax.jacfwd(jnp.sin)(x))


@pytest.mark.parametrize("shards, match", [
    (lambda s: [s[0], s[0]], "overlaps another shard"),
    (lambda s: s[:1], "covered 2 of the 5 tangent columns"),
    (lambda s: [(0, [np.zeros((2, 5), np.float64)])], "expected"),
    (lambda s: [(4, [np.zeros((2, 5), np.float32)])], "outside the 5 tangent columns"),
])
def test_bad_shards_are_refused(tmp_path, shards, match):
    stream = rayjac.jacfwd(jnp.sin, chunk_size=2).stream((jnp.ones(5),))
    stream.shards = iter(shards(list(stream.shards)))
    with pytest.raises(ValueError, match=match):
        write_result(tmp_path / "run", stream)
    assert os.listdir(tmp_path) == []


def test_writer_streams_and_closes_the_shard_generator(tmp_path):
    seen = []

    def shards():
        try:
            for start, rows in stream_rows:
                seen.append(start)
                yield start, rows
                raise RuntimeError("worker lost")
        finally:
            seen.append("closed")

    stream = rayjac.jacfwd(jnp.sin, chunk_size=2).stream((jnp.ones(5),))
    stream_rows = list(stream.shards)
    stream.shards = shards()
    with pytest.raises(RuntimeError, match="worker lost"):
        write_result(tmp_path / "run", stream)
    assert seen == [0, "closed"] and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------- atomicity

def _stream(scale=1.0, n=4):
    return rayjac.jacfwd(lambda x: scale * jnp.sin(x), chunk_size=2).stream((jnp.ones(n),))


def test_existing_result_is_kept_without_overwrite(tmp_path):
    path = write_result(tmp_path / "run", _stream(1.0))
    with pytest.raises(FileExistsError, match=r"Pass overwrite=True .*output.overwrite: true"):
        write_result(path, _stream(2.0))
    with pytest.raises(FileExistsError, match="already exists"):
        check_destination(path)
    np.testing.assert_allclose(load(path).jacobian, jnp.diag(jnp.cos(jnp.ones(4))))


def test_overwrite_replaces_only_after_success(tmp_path):
    path = write_result(tmp_path / "run", _stream(1.0))
    failing = _stream(2.0)
    failing.shards = (1 / 0 for _ in range(1))
    with pytest.raises(ZeroDivisionError):
        write_result(path, failing, overwrite=True)
    np.testing.assert_allclose(load(path).jacobian, jnp.diag(jnp.cos(jnp.ones(4))))
    write_result(path, _stream(2.0), overwrite=True, format="parquet")
    np.testing.assert_allclose(load(path).jacobian, jnp.diag(2 * jnp.cos(jnp.ones(4))))
    assert os.listdir(tmp_path) == ["run"]
    assert sorted(os.listdir(path)) == ["jacobian.parquet", "metadata.json", "value_aux.parquet"]


def test_other_content_is_never_replaced(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is not a rayjac result"):
            write_result(tmp_path / "notes", _stream(), overwrite=overwrite)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    load(write_result(tmp_path / "empty", _stream()))


def test_crash_leaves_nothing_that_looks_complete(tmp_path):
    script = textwrap.dedent(f"""
        import os, jax.numpy as jnp, rayjac
        from rayjac.store import write_result
        stream = rayjac.jacfwd(jnp.sin, chunk_size=2).stream((jnp.ones(6),))
        def dying(shards):
            for shard in shards:
                yield shard
                os._exit(3)
        stream.shards = dying(stream.shards)
        write_result({str(tmp_path / "run")!r}, stream)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    leftovers = os.listdir(tmp_path)
    assert "run" not in leftovers and all(n.startswith(".run.tmp-") for n in leftovers)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "run")
    for name in leftovers:
        with pytest.raises(ValueError, match="not a complete rayjac result"):
            load(tmp_path / name)


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/abs", ".hidden", "", "a b", None])
def test_result_names_cannot_escape(name):
    with pytest.raises(ValueError, match="Invalid result name"):
        result_path("results", name)


def test_result_path_joins_valid_names():
    assert result_path("s3://bucket/sweep/", "n-40_x.1") == "s3://bucket/sweep/n-40_x.1"


@pytest.mark.parametrize("path", ["/", "."])
def test_destination_must_be_a_named_folder(path):
    with pytest.raises((ValueError, FileExistsError)):
        check_destination(path)


def test_unstorable_structures_fail_before_computing(tmp_path):
    point = collections.namedtuple("Point", "x y")
    f = lambda x: (2 * x, point(x, x))  # noqa: E731
    stream = rayjac.jacfwd(f, has_aux=True).stream((jnp.ones(2),))
    stream.shards = (pytest.fail("computed") for _ in range(1))
    with pytest.raises(TypeError, match=r"Point node .* namedtuple._asdict"):
        write_result(tmp_path / "run", stream)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        write_result(tmp_path / "run", _stream(), metadata={"bad": object()})
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------- filesystems and loading

def test_file_uri_and_metadata(tmp_path):
    uri = f"file://{tmp_path}/run"
    path = write_result(uri, _stream(), metadata={"config": {"name": "sin"},
                                                  "timings": {"primal_s": 0.5}})
    assert path == uri
    res = load(uri)
    meta = res.metadata
    assert meta["config"] == {"name": "sin"} and meta["timings"]["primal_s"] == 0.5
    assert {"shards_wait_s", "jacobian_write_s", "write_total_s"} <= set(meta["timings"])
    assert {"jax", "pyarrow", "numpy", "python"} <= set(meta["versions"])
    assert meta["jacobian"]["inputs"][0]["shape"] == [4]
    assert json.loads((tmp_path / "run" / "metadata.json").read_text()) == meta
    assert "Result(path=" in repr(res) and "jacobian=float32[4, 4]" in repr(res)


class _NoRenameFileSystem:
    """A local filesystem without directory rename, as on object stores (S3, GCS)."""

    def __init__(self):
        self._fs = pafs.LocalFileSystem()

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dest):
        raise pa.ArrowNotImplementedError("moving directories is not supported")


def test_filesystem_without_rename_copies_with_metadata_last(tmp_path):
    fs = _NoRenameFileSystem()
    write_result(str(tmp_path / "run"), _stream(), filesystem=fs)
    write_result(str(tmp_path / "run2"), _stream(), filesystem=fs, format="parquet")
    assert sorted(os.listdir(tmp_path)) == ["run", "run2"]
    tree_allclose(load(tmp_path / "run").jacobian, load(tmp_path / "run2").jacobian)


def test_single_shard_ipc_loads_zero_copy(tmp_path):
    x = jnp.arange(6.0).reshape(2, 3)
    res = _roundtrip(tmp_path / "run", rayjac.jacfwd(jnp.sin), (x,), "arrow")
    jac = res.jacobian
    assert not jac.flags.writeable and not jac.flags.owndata  # a view of the mapped file
    tree_allclose(jac, jax.jacfwd(jnp.sin)(x))


def _written(tmp_path, fmt="arrow"):
    return write_result(tmp_path / "run", _stream(n=64), format=fmt)


def test_load_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No rayjac result at .*nope: the path does"):
        load(tmp_path / "nope")


def test_load_not_a_result(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"file.txt is a file, not a rayjac result folder"):
        load(tmp_path / "file.txt")
    with pytest.raises(ValueError, match=r"has no metadata.json"):
        load(tmp_path)
    pq.write_table(pa.table({"run_id": [0]}), tmp_path / "runs.parquet")
    with pytest.raises(ValueError, match=r"sweep's folder: load one of the runs"):
        load(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["jacobian", "value_aux"])
def test_load_truncated_file(tmp_path, fmt, name):
    path = _written(tmp_path, fmt)
    file = os.path.join(path, f"{name}.{fmt}")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)
    with pytest.raises(ValueError, match=rf"run: {name}.{fmt} is truncated or corrupt .*Re-run"):
        load(path)


def test_load_missing_rows(tmp_path):
    path = _written(tmp_path)
    file = os.path.join(path, "jacobian.arrow")
    table = pa.ipc.open_file(file).read_all()
    with pa.ipc.new_file(file, table.schema) as writer:
        writer.write_table(table.slice(0, 10))
    with pytest.raises(ValueError, match=r"truncated or corrupt \(its rows cover 10 of the 64"):
        load(path)


def test_load_corrupt_metadata(tmp_path):
    path = _written(tmp_path)
    with open(os.path.join(path, "metadata.json"), "w") as f:
        f.write('{"schema_version": 1, "form')
    with pytest.raises(ValueError, match=r"metadata.json is truncated or corrupt"):
        load(path)


def test_load_newer_schema_version(tmp_path):
    path = _written(tmp_path)
    meta_file = os.path.join(path, "metadata.json")
    meta = json.loads(open(meta_file).read())
    with open(meta_file, "w") as f:
        json.dump({**meta, "schema_version": 99}, f)
    with pytest.raises(ValueError, match=r"schema version 99, newer .*Upgrade rayjac"):
        load(path)


# ---------------------------------------------------------------------------------- interop

def _documented_recipe() -> str:
    """The pyarrow-only recipe of the README, plus a driver that saves its blocks."""
    return readme_recipe("recipe:", """
        import sys
        blocks = jacobian_blocks(sys.argv[1])
        assert "rayjac" not in sys.modules and "jax" not in sys.modules
        np.savez(sys.argv[2], *blocks.values())
    """)


def _interop_case(x):
    return {"a": jnp.tanh(x["p"]) * jnp.sum(x["q"]), "b": x["p"] > 0.5,
            "c": jnp.exp(1j * x["q"])[0], "e": x["p"][:0], "s": jnp.sum(x["p"] ** 2)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_pyarrow_alone_rebuilds_the_jacobian(tmp_path, fmt):
    x = {"p": jnp.linspace(0.1, 1.0, 3), "q": jnp.ones((2, 2))}
    path = write_result(tmp_path / "run", rayjac.jacfwd(_interop_case, chunk_size=3).stream(
        (x,)), format=fmt)
    out = tmp_path / "blocks.npz"
    subprocess.run([sys.executable, "-c", _documented_recipe(), path, str(out)], check=True,
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    blocks = np.load(out)
    expected = jax.tree_util.tree_leaves(rayjac.jacfwd(_interop_case)(x))  # jax.jacfwd: no bool
    assert len(blocks.files) == len(expected)
    for k, e in enumerate(expected):
        assert blocks[f"arr_{k}"].dtype == e.dtype
        np.testing.assert_allclose(blocks[f"arr_{k}"], e, rtol=1e-6)


def _jac_rows(x):
    """Rows of J^T of ``jnp.sin(x).reshape(2, 2)``, flattened per row, as readers see them."""
    return np.asarray(jax.jacfwd(lambda x: jnp.sin(x).reshape(2, 2))(x)).reshape(4, 4).T


@pytest.mark.parametrize("fmt", FORMATS)
def test_polars_reads_results(tmp_path, fmt):
    pl = pytest.importorskip("polars")
    x = jnp.arange(4.0)
    path = write_result(tmp_path / "run", rayjac.jacfwd(
        lambda x: jnp.sin(x).reshape(2, 2), chunk_size=3, return_value=True).stream((x,)),
        format=fmt)
    read = pl.read_ipc if fmt == "arrow" else pl.read_parquet
    df = read(f"{path}/jacobian.{fmt}").sort("flat_index")
    assert df.columns == ["flat_index", "input_leaf", "input_index", "out_0"]
    np.testing.assert_allclose(np.array(df["out_0"].to_list()), _jac_rows(x), rtol=1e-6)
    value = read(f"{path}/value_aux.{fmt}")
    np.testing.assert_allclose(np.array(value["value_0"].to_list()[0]), np.sin(x), rtol=1e-6)


def test_duckdb_reads_parquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    x = jnp.arange(4.0)
    path = write_result(tmp_path / "run", rayjac.jacfwd(
        lambda x: (jnp.sin(x).reshape(2, 2), x.astype(jnp.float16)), chunk_size=3).stream(
        (x,)), format="parquet")
    rows = duckdb.sql(f"SELECT flat_index, out_0, out_1 FROM '{path}/jacobian.parquet' "
                      "ORDER BY flat_index").fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose(np.array([r[1] for r in rows]), _jac_rows(x), rtol=1e-6)
    np.testing.assert_array_equal(np.array([r[2] for r in rows]), np.eye(4))


def test_overwrite_and_partial_folders_without_rename(tmp_path):
    fs = _NoRenameFileSystem()
    write_result(str(tmp_path / "run"), _stream(), filesystem=fs)
    write_result(str(tmp_path / "run"), _stream(), filesystem=fs, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the old copy was removed
    load(tmp_path / "run")
    (tmp_path / "run" / "metadata.json").unlink()  # as an interrupted copy leaves it
    write_result(str(tmp_path / "run"), _stream(), filesystem=fs)  # not a result: replaced
    assert sorted(os.listdir(tmp_path)) == ["run"]
    load(tmp_path / "run")
