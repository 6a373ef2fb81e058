"""Result folders: the on-disk schema (``SCHEMA``), streaming atomic writes, and ``load``.

A run's folder holds ``jacobian.arrow`` (one row per tangent column), ``value_aux.arrow`` (one
row: the primal value and aux leaves) and ``metadata.json``, or ``.parquet`` files on request.
``_treespec`` turns pytrees and shards into those tables; the README documents them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import posixpath
import re
import time
from importlib import metadata as _importlib_metadata
from typing import Any, Iterator

import jax
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import _folders
from . import _treespec as ts


@dataclasses.dataclass(frozen=True)
class _Schema:
    version: int = 1
    key: str = "rayjac"  # schema-metadata key of every file's JSON description
    index: tuple = ts.INDEX  # the Jacobian table's first columns, then out_0, out_1, ...
    jacobian: str = "jacobian"
    value_aux: str = "value_aux"
    metadata: str = "metadata.json"
    formats: tuple = ("arrow", "parquet")
    # Measured by benchmarks/bench_storage.py (README: Parquet settings): dictionary pages never
    # help float tensors; zstd(1) shrinks sparse Jacobians ~100-fold, and byte-stream-split of
    # float32/float64 values (duckdb reads no other) takes dense ones from 92% to 85%.
    parquet: tuple = (("use_dictionary", False), ("compression", "zstd"),
                      ("compression_level", 1))
    byte_stream_split: tuple = (pa.float32(), pa.float64())

    def files(self, fmt: str) -> tuple[str, str, str]:
        return f"{self.jacobian}.{fmt}", f"{self.value_aux}.{fmt}", self.metadata


SCHEMA = _Schema()
_FOLDERS = _folders.Folders(files=frozenset(f for fmt in SCHEMA.formats for f in SCHEMA.files(fmt)),
                            last=SCHEMA.metadata)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True, repr=False)
class Result:
    """A stored Jacobian, as returned by ``rayjac.load``.

    Attributes:
      jacobian: ``var_jac``, ``arg_jac`` or ``(var_jac, arg_jac)``, as ``rayjac.jacfwd`` returns
        them, with numpy leaves (memory-mapped from Arrow IPC files where possible).
      value: the primal output (``None`` unless the run used ``return_value``).
      aux: the auxiliary output (``None`` unless the run used ``has_aux``).
      metadata: the run's description: resolved config, versions, timings, and the shape and
        dtype of every leaf.
      path: the folder it was loaded from.
      sparsity: the ``rayjac.Sparsity`` of a sparse result (its blocks are BCOO arrays);
        ``None`` for a dense result.

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> folder = tempfile.mkdtemp() + "/run"
      >>> stream = rayjac.jacfwd(lambda x: x ** 2).stream((jnp.arange(3.0),))
      >>> _ = rayjac._storage.write_result(folder, stream)
      >>> rayjac.load(folder).jacobian.diagonal()
      array([0., 2., 4.], dtype=float32)
    """

    jacobian: Any
    value: Any
    aux: Any
    metadata: dict
    path: str
    sparsity: Any = None

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={_summary(getattr(self, k))}" for k in ("jacobian", "value", "aux"))
        return f"Result(path={self.path!r}, {parts})"


def _summary(tree: Any) -> str:
    """The tree with each array shown as ``dtype[shape]``."""
    return repr(jax.tree_util.tree_map(lambda a: _Text(f"{a.dtype}{list(a.shape)}"), tree))


class _Text(str):
    __repr__ = str.__str__


def result_path(root: str | os.PathLike, name: str) -> str:
    """``root/name`` for a run's folder, refusing names that could leave ``root``.

    Args:
      root: the output folder (a local path or a ``pyarrow.fs`` URI such as ``s3://bucket/x``).
      name: a run name: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``.

    Returns:
      The joined path.

    Example:
      >>> result_path("results", "lorenz96-n40")
      'results/lorenz96-n40'
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"Invalid result name {name!r}: use letters, digits, '_', '-' and '.', "
                         "not starting with '.' (so no '/', '..' or hidden names).")
    return f"{os.fspath(root).rstrip('/')}/{name}"


def check_destination(path: str | os.PathLike, overwrite: bool = False, *,
                      filesystem: pafs.FileSystem | None = None) -> str:
    """Fails early, before any computing, where ``write_result(path, ...)`` would refuse.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).
      overwrite: whether an existing rayjac result there may be replaced.
      filesystem: a ``pyarrow.fs.FileSystem`` to use instead of the one ``path`` names.

    Returns:
      The resolved destination (absolute for local paths).

    Raises:
      FileExistsError: ``path`` holds a result and ``overwrite`` is false, or holds anything
        that is not a rayjac result (never replaced).

    Example:
      >>> import tempfile
      >>> check_destination(tempfile.mkdtemp() + "/run").endswith("/run")
      True
    """
    fs, final = _folders.resolve(path, filesystem)
    _FOLDERS.check(fs, final, path, overwrite)
    return _folders.shown(path, final, filesystem)


def write_result(path: str | os.PathLike, stream: Any, *, format: str = "arrow",
                 overwrite: bool = False, metadata: dict | None = None,
                 filesystem: pafs.FileSystem | None = None) -> str:
    """Writes a ``JacStream`` to a result folder, one record batch per shard as it arrives.

    The files are written into a hidden sibling folder that is renamed to ``path`` only when
    complete, so a reader never sees a partial result; an existing result is replaced, after
    the new one is complete, only with ``overwrite=True``.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).
      stream: a ``JacStream`` (``rayjac.jacfwd(...).stream(args, kwargs)``); its shards may
        arrive in any order.
      format: ``"arrow"`` (IPC file, uncompressed, memory-mappable) or ``"parquet"``.
      overwrite: replace an existing result at ``path``.
      metadata: JSON-serialisable run information (resolved config, options, timings) stored
        with the result; its ``timings`` and ``versions`` are merged with rayjac's own.
      filesystem: a ``pyarrow.fs.FileSystem`` to use instead of the one ``path`` names.

    Returns:
      The resolved path of the result folder.

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> stream = rayjac.jacfwd(jnp.sin).stream((jnp.zeros(2),))
      >>> write_result(tempfile.mkdtemp() + "/run", stream).endswith("/run")
      True
    """
    if format not in SCHEMA.formats:
        raise ValueError(f"Unknown result format {format!r}; use one of {list(SCHEMA.formats)}.")
    if getattr(stream, "plan", None) is not None:
        stream.cancel()
        raise ValueError("Storing sparse results (sparsity=...) is not supported yet: use "
                         "sparsity=None to store the dense Jacobian, or keep the BCOO blocks "
                         "that rayjac.jacfwd returns in memory.")
    fs, final = _folders.resolve(path, filesystem)
    try:
        _FOLDERS.check(fs, final, path, overwrite)
        desc = _describe(stream, format, dict(metadata or {}))
    except BaseException:
        stream.cancel()  # no shard keeps a worker busy for nothing
        raise
    tmp = _folders.sibling(final, "tmp")
    fs.create_dir(tmp, recursive=True)
    try:
        _write_files(fs, tmp, stream, desc)
        _FOLDERS.publish(fs, tmp, final, path, overwrite)
    except BaseException:
        stream.cancel()
        _folders.remove(fs, tmp)
        raise
    return _folders.shown(path, final, filesystem)


def holds_result(path: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None) -> bool:
    """Whether ``path`` is a complete rayjac result folder (readable or not): only rayjac's
    files, ``metadata.json`` (written last) among them."""
    fs, final = _folders.resolve(path, filesystem)
    return _FOLDERS.state(fs, final) == "result"


# ------------------------------------------------------------------------------------- writing

def _describe(stream: Any, fmt: str, extra: dict) -> dict:
    """The JSON description kept in every file's schema metadata and in ``metadata.json``."""
    desc = {**extra, "schema_version": SCHEMA.version, "format": fmt,
            "files": dict(zip(("jacobian", "value_aux", "metadata"), SCHEMA.files(fmt))),
            "encodings": ts.ENCODINGS, "jacobian": ts.describe_layout(stream.layout),
            "value": ts.describe_tree(stream.value, "value"),
            "aux": ts.describe_tree(stream.aux, "aux")}
    desc["versions"] = {**extra.get("versions", {}), **_versions()}
    desc["timings"] = dict(extra.get("timings", {}))
    try:
        json.dumps(desc)
    except (TypeError, ValueError) as err:
        raise TypeError(f"write_result(metadata=...) must be JSON-serialisable: {err}") from None
    return desc


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in ("rayjac", "jax", "jaxlib", "numpy", "pyarrow"):
        with contextlib.suppress(_importlib_metadata.PackageNotFoundError):
            found[dist] = _importlib_metadata.version(dist)
    return found


def _write_files(fs, folder: str, stream: Any, desc: dict) -> None:
    jac_file, value_aux_file, meta_file = SCHEMA.files(desc["format"])
    start = time.perf_counter()
    try:
        timings = _write_jacobian(fs, f"{folder}/{jac_file}", stream, desc)
    finally:  # on failure, lets a generator of shards (the engine) cancel its work
        getattr(stream.shards, "close", lambda: None)()
    desc["timings"].update(timings, write_total_s=time.perf_counter() - start)
    leaves = [leaf for part in ("value", "aux") if desc[part] for leaf in desc[part]["leaves"]]
    schema = ts.table_schema(leaves, _metadata(desc), index=False)
    with _table_writer(fs, f"{folder}/{value_aux_file}", schema, desc["format"]) as writer:
        batch = ts.tree_batch(schema, leaves, [stream.value, stream.aux])
        if batch is not None:
            writer.write_batch(batch)
    with fs.open_output_stream(f"{folder}/{meta_file}") as out:
        out.write(json.dumps(desc, indent=2).encode())


def _write_jacobian(fs, file: str, stream: Any, desc: dict) -> dict:
    """Writes each shard as it arrives; returns the time spent waiting for shards and writing."""
    jac = desc["jacobian"]
    schema = ts.table_schema(jac["outputs"], _metadata(desc), index=True)
    covered = np.zeros(jac["columns"], dtype=bool)
    waited = written = 0.0
    with _table_writer(fs, file, schema, desc["format"]) as writer:
        ready = time.perf_counter()
        for start, rows in stream.shards:
            arrived = time.perf_counter()
            batch = ts.shard_batch(schema, stream.layout, jac["outputs"], covered, start, rows)
            if batch.num_rows:
                writer.write_batch(batch)
            del batch, rows  # hold no shard while waiting for the next one
            waited += arrived - ready
            ready = time.perf_counter()
            written += ready - arrived
    if not covered.all():
        raise ValueError(f"The shards covered {int(covered.sum())} of the {covered.size} "
                         "tangent columns; the result is incomplete and was not written.")
    return {"shards_wait_s": waited, "jacobian_write_s": written}


@contextlib.contextmanager
def _table_writer(fs, file: str, schema: pa.Schema, fmt: str) -> Iterator[Any]:
    with fs.open_output_stream(file) as sink:
        writer = (pa.ipc.new_file(sink, schema) if fmt == "arrow"
                  else pq.ParquetWriter(sink, schema, **_parquet_options(schema)))
        with writer:
            yield writer


def _parquet_options(schema: pa.Schema) -> dict:
    split = [f"{f.name}.list.element" for f in schema
             if isinstance(f.type, pa.FixedShapeTensorType)
             and f.type.value_type in SCHEMA.byte_stream_split]
    return {**dict(SCHEMA.parquet), "use_byte_stream_split": split or False}


def _metadata(desc: dict) -> dict[str, str]:
    return {SCHEMA.key: json.dumps(desc)}


# ------------------------------------------------------------------------------------- loading

def load(path: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None) -> Result:
    """Loads a result folder written by ``rayjac run`` (or ``write_result``).

    Arrow IPC files are memory-mapped: the Jacobian's arrays are views of the file (no copy)
    when it holds one shard in order, and one copy otherwise.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).
      filesystem: a ``pyarrow.fs.FileSystem`` to use instead of the one ``path`` names.

    Returns:
      A ``Result`` with ``.jacobian``, ``.value``, ``.aux`` and ``.metadata``.

    Raises:
      FileNotFoundError: nothing exists at ``path``.
      ValueError: ``path`` is not a complete rayjac result, a file is truncated or corrupt, or
        it was written by a newer rayjac.

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> folder = tempfile.mkdtemp() + "/run"
      >>> _ = rayjac._storage.write_result(folder, rayjac.jacfwd(jnp.sin).stream((jnp.ones(2),)))
      >>> rayjac.load(folder).metadata["jacobian"]["columns"]
      2
    """
    fs, root = _folders.resolve(path, filesystem)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    jac_file, value_aux_file, _ = SCHEMA.files(desc["format"])
    table = _read_table(fs, f"{root}/{jac_file}", desc["format"], shown)
    jac = _check_description(_table_description(table, shown, jac_file), shown, jac_file)
    with _reading(shown, jac_file):
        jacobian = ts.layout_from_json(jac["jacobian"]).assemble(
            ts.read_rows(table, jac["jacobian"]), xp=np)
    parts = _read_table(fs, f"{root}/{value_aux_file}", desc["format"], shown)
    with _reading(shown, value_aux_file):
        batch = parts.to_batches()[0] if parts.num_rows else None
        value, aux = (ts.read_tree(batch, desc[part]) for part in ("value", "aux"))
    return Result(jacobian, value, aux, desc, shown)


class _ResultError(ValueError):
    """A result folder that cannot be read; the message says why."""


@contextlib.contextmanager
def _reading(shown: str, name: str) -> Iterator[None]:
    """Low-level read failures -> one error that names the result and the file."""
    try:
        yield
    except _ResultError:
        raise
    except (pa.ArrowException, OSError, KeyError, IndexError, TypeError, ValueError) as err:
        raise _ResultError(f"{shown}: {name} is truncated or corrupt ({err}). Re-run the job "
                           "to write the result again.") from err


def _read_description(fs, root: str, shown: str) -> dict:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"No rayjac result at {shown}: the path does not exist.")
    if info.type != pafs.FileType.Directory:
        raise _ResultError(f"{shown} is a file, not a rayjac result folder; pass the run's "
                           "folder (the output.path of its config).")
    marker = f"{root}/{SCHEMA.metadata}"
    if fs.get_file_info(marker).type == pafs.FileType.NotFound:
        sweep = fs.get_file_info(f"{root}/runs.parquet").type == pafs.FileType.File
        hint = (" It is a sweep's folder: load one of the runs listed in its runs.parquet."
                if sweep else " A run that crashed or is still writing leaves no result.")
        raise _ResultError(f"{shown} is not a complete rayjac result: it has no "
                           f"{SCHEMA.metadata}.{hint}")
    with _reading(shown, SCHEMA.metadata), fs.open_input_stream(marker) as src:
        desc = json.loads(src.read())
    return _check_description(desc, shown, SCHEMA.metadata)


def _table_description(table: pa.Table, shown: str, name: str) -> dict:
    raw = (table.schema.metadata or {}).get(SCHEMA.key.encode())
    if raw is None:
        raise _ResultError(f"{shown}: {name} is not a rayjac table (its schema metadata has no "
                           f"{SCHEMA.key!r} key).")
    with _reading(shown, name):
        return json.loads(raw)


def _check_description(desc: Any, shown: str, name: str) -> dict:
    if not isinstance(desc, dict) or not isinstance(desc.get("schema_version"), int):
        raise _ResultError(f"{shown} is not a rayjac result: {name} has no schema_version.")
    if desc["schema_version"] > SCHEMA.version:
        raise _ResultError(
            f"{shown} was written with result schema version {desc['schema_version']}, newer "
            f"than this rayjac reads (up to {SCHEMA.version}). Upgrade rayjac "
            "(pip install -U rayjac) to load it.")
    if desc.get("format") not in SCHEMA.formats:
        raise _ResultError(f"{shown}: {name} names an unknown format {desc.get('format')!r}.")
    return desc


def _read_table(fs, file: str, fmt: str, shown: str) -> pa.Table:
    name = posixpath.basename(file)
    if fs.get_file_info(file).type == pafs.FileType.NotFound:
        raise _ResultError(f"{shown} is not a complete rayjac result: {name} is missing.")
    local = isinstance(fs, pafs.LocalFileSystem)
    with _reading(shown, name):
        if fmt == "parquet":
            return pq.read_table(file, filesystem=fs, memory_map=local)
        source = pa.memory_map(file) if local else fs.open_input_file(file)
        return pa.ipc.open_file(source).read_all()
