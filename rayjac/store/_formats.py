"""Storage formats, one record each: a name (also the files' extension), how to write a table's
record batches to a stream, and how to read a file back as a table. A new format is one new
``Format`` in ``FORMATS``; nothing else in rayjac branches on the format."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclasses.dataclass(frozen=True)
class Format:
    """One file format of result tables.

    Attributes:
      name: the format's name in configs and metadata, also the files' extension.
      writer: ``(sink, schema) -> writer`` with ``write_batch`` and ``write_table``, usable as a
        context manager that completes the file on exit.
      reader: ``(fs, file, columns, local) -> pyarrow.Table``; ``local``: a local file system,
        where files may be memory-mapped.

    Example:
      >>> import pyarrow as pa, pyarrow.fs as pafs, tempfile
      >>> fs, file = pafs.LocalFileSystem(), tempfile.mkdtemp() + "/t.arrow"
      >>> table = pa.table({"x": [1, 2]})
      >>> with FORMATS["arrow"].open(fs, file, table.schema) as writer:
      ...     writer.write_table(table)
      >>> FORMATS["arrow"].read(fs, file).column("x").to_pylist()
      [1, 2]
    """

    name: str
    writer: Callable[[Any, pa.Schema], Any]
    reader: Callable[[Any, str, Any, bool], pa.Table]

    @contextlib.contextmanager
    def open(self, fs: pafs.FileSystem, file: str, schema: pa.Schema) -> Iterator[Any]:
        """A writer of ``schema`` batches into ``file``, closed (the file complete) on exit."""
        with fs.open_output_stream(file) as sink:
            with self.writer(sink, schema) as writer:
                yield writer

    def read(self, fs: pafs.FileSystem, file: str, columns: list | None = None) -> pa.Table:
        """``file`` as a table (only ``columns``, when given)."""
        return self.reader(fs, file, columns, isinstance(fs, pafs.LocalFileSystem))


def _read_ipc(fs, file: str, columns: list | None, local: bool) -> pa.Table:
    source = pa.memory_map(file) if local else fs.open_input_file(file)
    table = pa.ipc.open_file(source).read_all()
    return table if columns is None else table.select(columns)


def _read_parquet(fs, file: str, columns: list | None, local: bool) -> pa.Table:
    return pq.read_table(file, filesystem=fs, memory_map=local, columns=columns)


# Measured by benchmarks/bench_storage.py (README: Parquet settings): dictionary pages never
# help float tensors; zstd(1) shrinks sparse Jacobians ~100-fold, and byte-stream-split of
# float32/float64 values (duckdb reads no other) takes dense ones from 92% to 85%.
_PARQUET = {"use_dictionary": False, "compression": "zstd", "compression_level": 1}
_BYTE_STREAM_SPLIT = (pa.float32(), pa.float64())
# The coordinate table's row/col: delta encoding (SPARSE_PARQUET, measured in
# bench_storage.py) stores their slowly growing runs in a few bits per entry.
_DELTA = ("row", "col")


def parquet_options(schema: pa.Schema) -> dict:
    """The ``ParquetWriter`` options of a table with this schema."""
    split = [f"{f.name}.list.element" for f in schema
             if isinstance(f.type, pa.FixedShapeTensorType)
             and f.type.value_type in _BYTE_STREAM_SPLIT]
    split += [f.name for f in schema if f.type in _BYTE_STREAM_SPLIT]
    delta = {f.name: "DELTA_BINARY_PACKED" for f in schema if f.name in _DELTA
             and f.type == pa.int64()}
    return {**_PARQUET, "use_byte_stream_split": split or False,
            **({"column_encoding": delta} if delta else {})}


def _parquet_writer(sink: Any, schema: pa.Schema) -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, schema, **parquet_options(schema))


ARROW = Format("arrow", pa.ipc.new_file, _read_ipc)  # IPC file: uncompressed, memory-mappable
PARQUET = Format("parquet", _parquet_writer, _read_parquet)
FORMATS = {f.name: f for f in (ARROW, PARQUET)}
