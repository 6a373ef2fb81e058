"""The spectrum and stability files of a job with an analysis (SPEC 2, "Spectra in a job") read
by polars and duckdb, without rayjac, as plain columns of the SPEC's types, holding exactly what
``rayjac.load`` gives. duckdb reads Parquet by path and Arrow IPC through pyarrow."""

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from rayjac.runs import parse_config, run_one
from rayjac.store import load

REPO = Path(__file__).resolve().parents[1]

SPECTRUM = {"point": pl.Int64, "index": pl.Int32, "real": pl.Float64, "imag": pl.Float64}
STABILITY = {"point": pl.Int64, "abscissa": pl.Float64, "radius": pl.Float64,
             "stable": pl.Boolean, "unstable": pl.Int32}
SQL_TYPES = {"spectrum": ["BIGINT", "INTEGER", "DOUBLE", "DOUBLE"],
             "stability": ["BIGINT", "DOUBLE", "DOUBLE", "BOOLEAN", "INTEGER"]}


@pytest.fixture(scope="module", params=["arrow", "parquet"])
def result(request, tmp_path_factory):
    """A 4-point map (6 units, every eigenvalue) and a single point (its 3 leading ones),
    both in process, Jacobians not kept; returns (format, {name: folder})."""
    fmt, root = request.param, tmp_path_factory.mktemp(request.param)
    jobs = {"map": ({"points": 4}, "all"), "single": ({"along_trajectory": False}, 3)}
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the jobs package
        for name, (params, spectrum) in jobs.items():
            config = parse_config({
                "problem": "jobs.rate_network:make",
                "params": {"n": 6, "p_connect": 0.5, "gain": 1.5, **params},
                "jacfwd": {"grad_vars": "state"}, "execution": {"shards": None},
                "analysis": {"spectrum": spectrum, "keep_jacobian": False},
                "output": {"path": str(root / name), "format": fmt}})
            folders[name] = Path(run_one(config))
    return fmt, folders


def _spectrum_of(columns: dict, points: int) -> np.ndarray:
    """The (points, k) complex eigenvalues of a spectrum file's columns in (point, index) order."""
    order = np.lexsort((columns["index"], columns["point"]))
    lam = (np.asarray(columns["real"]) + 1j * np.asarray(columns["imag"]))[order]
    return lam.reshape(points, -1)


def _expected(folder: Path):
    res = load(folder)
    return np.atleast_2d(res.spectrum), res.stability


@pytest.mark.parametrize("name", ["map", "single"])
def test_polars_reads_both_files_as_plain_columns(result, name):
    fmt, folders = result
    folder = folders[name]
    read = pl.read_ipc if fmt == "arrow" else pl.read_parquet
    spectrum, stability = read(folder / f"spectrum.{fmt}"), read(folder / f"stability.{fmt}")
    assert dict(spectrum.schema) == SPECTRUM
    assert dict(stability.schema) == STABILITY
    lam, table = _expected(folder)
    assert spectrum.height == lam.size
    got = _spectrum_of(spectrum.to_dict(as_series=False), len(lam))
    np.testing.assert_array_equal(got, lam)
    assert stability.sort("point").to_dict(as_series=False) == table.to_pydict()


@pytest.mark.parametrize("name", ["map", "single"])
def test_duckdb_reads_both_files_as_plain_columns(result, name):
    fmt, folders = result
    folder = folders[name]
    relations = {}
    for kind in ("spectrum", "stability"):
        path = folder / f"{kind}.{fmt}"
        if fmt == "parquet":
            relations[kind] = duckdb.sql(f"SELECT * FROM '{path}'")
        else:  # duckdb opens no .arrow file by path: pyarrow reads it, duckdb scans the table
            relations[kind] = duckdb.from_arrow(pa.ipc.open_file(path).read_all())
        assert [str(t) for t in relations[kind].types] == SQL_TYPES[kind]
    assert relations["spectrum"].columns == list(SPECTRUM)
    assert relations["stability"].columns == list(STABILITY)
    lam, table = _expected(folder)
    got = _spectrum_of(relations["spectrum"].fetchnumpy(), len(lam))
    np.testing.assert_array_equal(got, lam)
    rows = relations["stability"].order("point").fetchall()
    assert rows == [tuple(row.values()) for row in table.to_pylist()]
    largest = relations["spectrum"].aggregate("point, max(real)", "point").order("point")
    assert [a for _, a in largest.fetchall()] == table.column("abscissa").to_pylist()
