"""``runs.parquet``: one row per run of a sweep. As runs end, their rows go to an append-only
log (``runs.log/``, one small file per flush), compacted into ``runs.parquet`` atomically every
few seconds and at the end: the table is rewritten O(seconds), not O(runs), times a sweep.
Readers and a resumed sweep read the table and the log together (newest row per run wins)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..store import _folders
from ..store._schema import SCHEMA

RUNS_TABLE = SCHEMA.runs_table
RUNS_LOG = "runs.log"  # a folder of parquet files, one per flush


def column_types(runs: list) -> dict[str, pa.DataType]:
    """The Arrow type of each swept key's column (``None``: mixed types, stored as JSON)."""
    types = {}
    for key in runs[0].point:
        try:
            types[key] = pa.array([r.point[key] for r in runs]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: store JSON text
            types[key] = None
    return types


def runs_table(records: list, types: dict) -> pa.Table:
    """One row per record (a ``RunRecord``)."""
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
    return pa.table(columns)


def write_runs_table(folder: str, records: list, types: dict) -> None:
    """Rewrites ``<folder>/runs.parquet`` with one row per record (a ``RunRecord``)."""
    _write_atomic(runs_table(records, types), f"{folder.rstrip('/')}/{RUNS_TABLE}")


def read_runs_table(folder: str) -> pa.Table | None:
    """A sweep folder's runs (local or a URI): ``runs.parquet`` with the rows of its log that
    a running (or killed) sweep has not compacted yet; None when it has neither."""
    fs, root = _folders.resolve(folder, None)
    path = f"{root}/{RUNS_TABLE}"
    for attempt in range(3):
        try:  # the log's files go away as a running sweep compacts them: read again then
            tables = [pq.read_table(path, filesystem=fs)] if _is_file(fs, path) else []
            tables += [pq.read_table(f, filesystem=fs) for f in _log_files(fs, root)]
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    last = {run_id: i for i, run_id in enumerate(table.column("run_id").to_pylist())}
    if len(last) == table.num_rows:
        return table
    return table.take(list(last.values()))  # each run where it first appeared, newest row


class RunsLog:
    """The runs of one sweep as they end: ``add`` logs each (a flush at most every
    ``flush_s``), and ``runs.parquet`` is compacted from every record every ``compact_s`` and
    at ``close``."""

    def __init__(self, folder: str, types: dict, *, flush_s: float = 0.5, compact_s: float = 5.0):
        self.folder, self.types = folder.rstrip("/"), types
        self.fs, self.root = _folders.resolve(folder, None)
        self.flush_s, self.compact_s = flush_s, compact_s
        self.pending: list = []
        self.logged = False  # runs in the log, not yet in runs.parquet
        self.flushed = self.compacted = time.monotonic()
        self.seq = 0

    def resume(self) -> None:
        """Compacts what an earlier driver logged but did not compact (it was killed)."""
        if _log_files(self.fs, self.root):
            _write_atomic(read_runs_table(self.folder), f"{self.folder}/{RUNS_TABLE}")
            self._clear()

    def add(self, record, records) -> None:
        """Logs a finished run; ``records()`` gives every record when it is time to compact."""
        self.pending.append(record)
        self.tick(records)

    def tick(self, records) -> None:
        """Flushes and compacts when it is time (called as runs end, and about once a second
        while none does, so a run that ends before a long wait is in the table soon)."""
        now = time.monotonic()
        if self.dirty and now - self.compacted >= self.compact_s:
            self.close(records())
        elif self.pending and now - self.flushed >= self.flush_s:
            self._flush()

    @property
    def dirty(self) -> bool:
        """Whether some run is not in ``runs.parquet`` yet."""
        return bool(self.pending) or self.logged

    def close(self, records: list) -> None:
        """``runs.parquet`` from every record, atomically, and the log emptied."""
        if records:
            write_runs_table(self.folder, records, self.types)
        if self.logged:
            self._clear()
        self.pending, self.compacted, self.logged = [], time.monotonic(), False

    def _flush(self) -> None:
        if self.pending:
            self.seq += 1
            name = f"{self.folder}/{RUNS_LOG}/{time.time_ns():020d}-{self.seq:06d}.parquet"
            _write_atomic(runs_table(self.pending, self.types), name)
            self.logged = True
        self.pending, self.flushed = [], time.monotonic()

    def _clear(self) -> None:
        """Deletes the log (and what a killed flush left in it)."""
        folder = f"{self.root}/{RUNS_LOG}"
        if self.fs.get_file_info(folder).type == pafs.FileType.Directory:
            self.fs.delete_dir(folder)


def _log_files(fs, root: str) -> list[str]:
    selector = pafs.FileSelector(f"{root}/{RUNS_LOG}", allow_not_found=True)
    return sorted(info.path for info in fs.get_file_info(selector)
                  if info.type == pafs.FileType.File and info.path.endswith(".parquet"))


def _is_file(fs, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _write_atomic(table: pa.Table, path: str) -> None:
    """Write then rename, so a reader (or a crash) never sees a half-written table."""
    fs, inner = _folders.resolve(path, None)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    tmp = _folders.sibling(inner, "tmp")
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, inner)
