"""``runs.parquet``: one row per run of a sweep, rewritten atomically as each run ends."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..store import _folders
from ..store._schema import SCHEMA

RUNS_TABLE = SCHEMA.runs_table


def column_types(runs: list) -> dict[str, pa.DataType]:
    """The Arrow type of each swept key's column (``None``: mixed types, stored as JSON)."""
    types = {}
    for key in runs[0].point:
        try:
            types[key] = pa.array([r.point[key] for r in runs]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: store JSON text
            types[key] = None
    return types


def write_runs_table(folder: str, records: list, types: dict) -> None:
    """Rewrites ``<folder>/runs.parquet`` with one row per record (a ``RunRecord``)."""
    columns = {"run_id": pa.array([r.run_id for r in records], pa.string())}
    for key, type_ in types.items():
        values = [r.point[key] for r in records]
        columns[key] = (pa.array(values, type_) if type_ is not None
                        else pa.array([json.dumps(v) for v in values], pa.string()))
    for name in ("status", "error", "path"):
        columns[name] = pa.array([getattr(r, name) for r in records], pa.string())
    if any(r.stability for r in records):  # runs with a spectrum: the stability diagram
        for name, type_ in (("abscissa", pa.float64()), ("radius", pa.float64()),
                            ("stable", pa.bool_())):
            columns[name] = pa.array([(r.stability or {}).get(name) for r in records], type_)
    _write_atomic(pa.table(columns), f"{folder.rstrip('/')}/{RUNS_TABLE}")


def read_runs_table(folder: str) -> pa.Table | None:
    """A sweep folder's ``runs.parquet`` (local or a URI), or None when it has none."""
    fs, root = _folders.resolve(folder, None)
    path = f"{root}/{RUNS_TABLE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_table(path, filesystem=fs)


def _write_atomic(table: pa.Table, path: str) -> None:
    """Write then rename, so a reader (or a crash) never sees a half-written table."""
    fs, inner = _folders.resolve(path, None)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    tmp = _folders.sibling(inner, "tmp")
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, inner)
