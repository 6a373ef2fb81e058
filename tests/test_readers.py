"""The README's recipe for reading results without rayjac: duckdb reads Parquet by path and
Arrow IPC through pyarrow (it cannot open ``.arrow`` files by path), polars reads both."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import jax
import numpy as np
import pytest

import rayjac
from helpers import readme_recipe
from rayjac.runs import load_problem, run

REPO = Path(__file__).resolve().parents[1]


def _documented_recipe() -> str:
    """The README's duckdb/polars recipe, plus a driver that saves what it read."""
    return readme_recipe("duckdb recipe:", """
        import sys
        import numpy as np
        assert "rayjac" not in sys.modules and "jax" not in sys.modules
        flat_index, out_0 = zip(*columns.fetchall())
        np.savez(sys.argv[1], per_row=np.array(per_row.fetchall()),
                 flat_index=np.array(flat_index), out_0=np.array(out_0),
                 relation=relation.order("flat_index").fetchnumpy()["flat_index"],
                 dense_columns=np.array(dense.columns), dense_rows=dense.height,
                 sparse_columns=np.array(sparse.columns), sparse_rows=sparse.height)
    """)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """``results/quickstart`` (dense, IPC) and ``results/gray_scott_sparse`` (sparse, Parquet)
    of the shipped configs, small and in process, in ``tmp_path``."""
    monkeypatch.chdir(REPO)  # the jobs package
    for config, extra in (("quickstart", ["params.n=16"]), ("gray_scott_sparse", ["params.n=8"])):
        run(f"configs/{config}.yaml", [f"output.path={tmp_path / 'results' / config}",
                                       "execution.shards=null", *extra])
    return tmp_path


def test_duckdb_cannot_open_an_ipc_result_by_path(results):
    with pytest.raises(duckdb.BinderException, match="No extension found"):
        duckdb.sql(f"SELECT * FROM '{results}/results/quickstart/jacobian.arrow'")


def test_the_duckdb_and_polars_recipe_reads_both_formats(results):
    out = results / "read.npz"
    subprocess.run([sys.executable, "-c", _documented_recipe(), str(out)], check=True,
                   cwd=results, env={**os.environ, "PYTHONPATH": ""})
    got = np.load(out)

    problem = load_problem("jobs.lorenz96:make", {"n": 16, "forcing": 8.0})
    jac = np.asarray(jax.jacfwd(problem.func)(*problem.args))
    np.testing.assert_array_equal(got["flat_index"], np.arange(16))
    np.testing.assert_allclose(got["out_0"], jac.T, rtol=1e-6, atol=1e-6)  # rows of J^T
    np.testing.assert_array_equal(got["relation"], np.arange(16))
    assert list(got["dense_columns"]) == ["flat_index", "input_leaf", "input_index", "out_0"]
    assert got["dense_rows"] == 16

    matrix = rayjac.load(results / "results" / "gray_scott_sparse").matrix()  # scipy CSR
    rows = np.flatnonzero(np.diff(matrix.indptr))
    np.testing.assert_array_equal(got["per_row"][:, 0], rows)
    np.testing.assert_array_equal(got["per_row"][:, 1], np.diff(matrix.indptr)[rows])
    np.testing.assert_allclose(got["per_row"][:, 2], abs(matrix).sum(axis=1)[rows], rtol=1e-5)
    assert list(got["sparse_columns"]) == ["row", "col", "value"]
    assert got["sparse_rows"] == matrix.nnz
