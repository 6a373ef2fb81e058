"""Result folders: the on-disk schema (``SCHEMA``), streaming atomic writes, and ``load``.

A run's folder holds ``jacobian.arrow`` (one row per tangent column), ``value_aux.arrow`` (one
row: the primal value and aux leaves) and ``metadata.json``; ``.parquet`` instead of ``.arrow``
on request. docs/storage.md documents every field.
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
import uuid
from importlib import metadata as _importlib_metadata
from typing import Any, Iterator

import jax
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import _treespec as ts
from ._basis import Layout, TangentBasis


@dataclasses.dataclass(frozen=True)
class _Schema:
    version: int = 1
    key: str = "rayjac"  # schema-metadata key of every file's JSON description
    index: tuple = (("column", pa.int64()), ("input_leaf", pa.int32()),
                    ("input_index", pa.int64()))
    jacobian: str = "jacobian"
    value_aux: str = "value_aux"
    metadata: str = "metadata.json"
    formats: tuple = ("arrow", "parquet")
    # Measured in benchmarks/bench_storage.py: byte-stream-split + zstd(1) shrinks dense float
    # Jacobians by ~10% and sparse ones by 5-20x; dictionary pages never help float tensors.
    parquet: tuple = (("use_dictionary", False), ("compression", "zstd"),
                      ("compression_level", 1), ("use_byte_stream_split", True))

    def files(self, fmt: str) -> tuple[str, str, str]:
        return f"{self.jacobian}.{fmt}", f"{self.value_aux}.{fmt}", self.metadata


SCHEMA = _Schema()
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True, repr=False)
class Result:
    """A stored Jacobian, as returned by ``rayjac.load``.

    Attributes:
      jacobian: ``var_jac``, ``arg_jac`` or ``(var_jac, arg_jac)``, as ``rayjac.jacfwd`` returns
        them (numpy arrays, memory-mapped from Arrow IPC files where possible).
      value: the primal output (``None`` unless the run used ``return_value``).
      aux: the auxiliary output (``None`` unless the run used ``has_aux``).
      metadata: the run's description: resolved config, versions, timings, every leaf's shape
        and dtype.
      path: the folder it was loaded from.

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

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={_summary(getattr(self, k))}" for k in ("jacobian", "value", "aux"))
        return f"Result(path={self.path!r}, {parts})"


def _summary(tree: Any) -> str:
    shapes = jax.tree_util.tree_map(lambda a: _Shape(f"{a.dtype}{list(a.shape)}"), tree)
    return repr(shapes)


class _Shape(str):
    __repr__ = str.__str__


def result_path(root: str | os.PathLike, name: str) -> str:
    """``root/name`` for a run folder, refusing names that could leave ``root``.

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
                         "not starting with '.' (a name cannot contain '/' or be '..').")
    return f"{os.fspath(root).rstrip('/')}/{name}"


def check_destination(path: str | os.PathLike, overwrite: bool = False) -> str:
    """Fails early, before any computing, if ``write_result(path, ...)`` would refuse ``path``.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).
      overwrite: whether an existing rayjac result there may be replaced.

    Returns:
      The resolved destination (absolute for local paths).

    Raises:
      FileExistsError: ``path`` holds a result and ``overwrite`` is false, or holds something
        that is not a rayjac result (never replaced).

    Example:
      >>> import tempfile
      >>> check_destination(tempfile.mkdtemp() + "/run").endswith("/run")
      True
    """
    fs, final = _resolve(path)
    _check_destination(fs, final, path, overwrite)
    return _display(path, final)


def write_result(path: str | os.PathLike, stream: Any, *, format: str = "arrow",
                 overwrite: bool = False, metadata: dict | None = None) -> str:
    """Writes a ``JacStream`` to a result folder, one record batch per shard as it arrives.

    Everything is written into a hidden sibling folder that is renamed to ``path`` only when
    complete, so readers never see a partial result; an existing result is replaced (after the
    new one is complete) only with ``overwrite=True``.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).
      stream: a ``JacStream`` (``rayjac.jacfwd(...).stream(args, kwargs)``); its shards may
        arrive in any order.
      format: ``"arrow"`` (IPC file, uncompressed, memory-mappable) or ``"parquet"``.
      overwrite: replace an existing result at ``path``.
      metadata: JSON-serialisable run information (resolved config, options, timings) stored
        with the result; its ``timings`` and ``versions`` are merged with rayjac's own.

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
    fs, final = _resolve(path)
    _check_destination(fs, final, path, overwrite)
    desc = _describe(stream, format, dict(metadata or {}))
    tmp = _sibling(final, "tmp")
    fs.create_dir(tmp, recursive=True)
    try:
        _write_files(fs, tmp, stream, desc)
        _publish(fs, tmp, final, path, overwrite)
    except BaseException:
        _remove(fs, tmp)
        raise
    return _display(path, final)


def _resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    text = os.fspath(path)
    if "://" in text:
        fs, inner = pafs.FileSystem.from_uri(text)
    else:
        fs, inner = pafs.LocalFileSystem(), os.path.abspath(text)
    return fs, inner.rstrip("/")


def _display(path: str | os.PathLike, final: str) -> str:
    text = os.fspath(path)
    return text.rstrip("/") if "://" in text else final


def _check_destination(fs, final: str, path, overwrite: bool) -> None:
    name = posixpath.basename(final)
    if not name or name in (".", "..") or "/" not in final:
        raise ValueError(f"Invalid result path {os.fspath(path)!r}: name a folder inside an "
                         "existing or creatable parent folder, e.g. results/run.")
    state = _state(fs, final)
    if state == "other":
        raise FileExistsError(
            f"{os.fspath(path)} exists and is not a rayjac result; rayjac never replaces it, "
            "even with overwrite. Choose another output path or remove it.")
    if state == "result" and not overwrite:
        raise FileExistsError(
            f"A result already exists at {os.fspath(path)}. Pass overwrite=True (in a config: "
            "output.overwrite: true) to replace it, or choose another output path.")


def _state(fs, final: str) -> str:
    """``absent``, ``empty`` (a folder), ``result`` (only rayjac files) or ``other``."""
    info = fs.get_file_info(final)
    if info.type == pafs.FileType.NotFound:
        return "absent"
    if info.type != pafs.FileType.Directory:
        return "other"
    names = {posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(final))}
    ours = {f for fmt in SCHEMA.formats for f in SCHEMA.files(fmt)}
    return "empty" if not names else "result" if names <= ours else "other"


def _sibling(final: str, tag: str) -> str:
    parent, name = posixpath.split(final)
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:12]}"


def _remove(fs, folder: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_dir(folder)


def _publish(fs, tmp: str, final: str, path, overwrite: bool) -> None:
    """Puts the complete ``tmp`` folder at ``final``; an old result goes only after that."""
    state = _state(fs, final)  # again: another writer may have finished meanwhile
    _check_destination(fs, final, path, overwrite)
    old = None
    if state == "result":
        old = _sibling(final, "old")
        fs.move(final, old)
    elif state == "empty":
        fs.delete_dir(final)
    try:
        _move_dir(fs, tmp, final)
    except BaseException:
        if old is not None:
            fs.move(old, final)
        raise
    if old is not None:
        _remove(fs, old)


def _move_dir(fs, tmp: str, final: str) -> None:
    """A rename where the filesystem has one; else copy with ``metadata.json`` last (a folder
    without it is not a result), as on object stores."""
    try:
        fs.move(tmp, final)
        return
    except (OSError, NotImplementedError, pa.ArrowNotImplementedError):
        if isinstance(fs, pafs.LocalFileSystem):
            raise
    fs.create_dir(final, recursive=True)
    names = sorted((posixpath.basename(i.path) for i in
                    fs.get_file_info(pafs.FileSelector(tmp))),
                   key=lambda n: n == SCHEMA.metadata)
    for name in names:
        fs.copy_file(f"{tmp}/{name}", f"{final}/{name}")
    _remove(fs, tmp)


# ---------------------------------------------------------------------------------- describing

def _describe(stream: Any, fmt: str, extra: dict) -> dict:
    """The JSON description stored in every file's schema metadata and in ``metadata.json``."""
    layout = stream.layout
    desc = {**extra, "schema_version": SCHEMA.version, "format": fmt,
            "files": dict(zip(("jacobian", "value_aux", "metadata"), SCHEMA.files(fmt))),
            "encodings": ts.ENCODINGS, "jacobian": _describe_layout(layout),
            "value": ts.describe_tree(stream.value, "value"),
            "aux": ts.describe_tree(stream.aux, "aux")}
    desc["versions"] = {**extra.get("versions", {}), **_versions()}
    desc["timings"] = dict(extra.get("timings", {}))
    json.dumps(desc)  # fail now, before computing, on metadata that JSON cannot hold
    return desc


def _describe_layout(layout: Layout) -> dict:
    basis = layout.basis
    inputs = [{"path": p, "shape": list(s), "dtype": np.dtype(d).name, "offset": o, "size": n}
              for p, s, d, o, n in zip(ts.leaf_paths(layout.in_tree), basis.shapes,
                                       basis.dtypes, basis.offsets, basis.sizes)]
    outputs = [ts.describe_leaf(f"out_{k}", p, s, d, "output")
               for k, (p, s, d) in enumerate(zip(ts.leaf_paths(layout.out_tree),
                                                 layout.out_shapes, layout.out_dtypes))]
    return {"columns": basis.n, "inputs": inputs, "outputs": outputs,
            "in_tree": ts.treedef_to_json(layout.in_tree, "input structure"),
            "out_tree": ts.treedef_to_json(layout.out_tree, "output")}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in ("rayjac", "jax", "jaxlib", "numpy", "pyarrow"):
        with contextlib.suppress(_importlib_metadata.PackageNotFoundError):
            found[dist] = _importlib_metadata.version(dist)
    return found


# ------------------------------------------------------------------------------------- writing

def _write_files(fs, folder: str, stream: Any, desc: dict) -> None:
    jac_file, value_aux_file, meta_file = SCHEMA.files(desc["format"])
    start = time.perf_counter()
    with contextlib.closing(_Closable(stream.shards)):
        timings = _write_jacobian(fs, f"{folder}/{jac_file}", stream, desc)
    desc["timings"].update(timings, total_s=time.perf_counter() - start)
    _write_value_aux(fs, f"{folder}/{value_aux_file}", stream, desc)
    with fs.open_output_stream(f"{folder}/{meta_file}") as out:
        out.write(json.dumps(desc, indent=2).encode())


class _Closable:
    """Closes a shard generator when writing stops early, so the engine can cancel its work."""

    def __init__(self, shards: Any):
        self.shards = shards

    def close(self) -> None:
        getattr(self.shards, "close", lambda: None)()


def _write_jacobian(fs, file: str, stream: Any, desc: dict) -> dict:
    """Streams shards into ``file``; returns the time spent waiting for them and writing."""
    jac = desc["jacobian"]
    schema = _jacobian_schema(jac, desc)
    covered = np.zeros(jac["columns"], dtype=bool)
    waited = written = 0.0
    with _table_writer(fs, file, schema, desc["format"]) as writer:
        shards = iter(stream.shards)
        while True:
            t0 = time.perf_counter()
            shard = next(shards, None)
            t1 = time.perf_counter()
            if shard is None:
                break
            batch = _shard_batch(schema, stream.layout, jac, covered, *shard)
            if batch.num_rows:
                writer.write_batch(batch)
            waited, written = waited + t1 - t0, written + time.perf_counter() - t1
    if not covered.all():
        raise ValueError(f"The shards covered {int(covered.sum())} of {covered.size} tangent "
                         "columns; the result is incomplete and was not written.")
    return {"shards_wait_s": waited, "jacobian_write_s": written}


@contextlib.contextmanager
def _table_writer(fs, file: str, schema: pa.Schema, fmt: str) -> Iterator[Any]:
    with fs.open_output_stream(file) as sink:
        writer = (pa.ipc.new_file(sink, schema) if fmt == "arrow"
                  else pq.ParquetWriter(sink, schema, **dict(SCHEMA.parquet)))
        with writer:
            yield writer


def _metadata(desc: dict) -> dict[str, str]:
    return {SCHEMA.key: json.dumps(desc)}


def _jacobian_schema(jac: dict, desc: dict) -> pa.Schema:
    fields = [pa.field(name, type_, nullable=False) for name, type_ in SCHEMA.index]
    fields += [ts.leaf_field(leaf) for leaf in jac["outputs"] if leaf["column"]]
    return pa.schema(fields, metadata=_metadata(desc))


def _shard_batch(schema: pa.Schema, layout: Layout, jac: dict, covered: np.ndarray,
                 start: int, rows: list) -> pa.RecordBatch:
    """One shard's rows of J^T as a record batch, after checking them against the layout."""
    length = _check_shard(layout, covered, start, rows)
    covered[start:start + length] = True
    cols = np.arange(start, start + length, dtype=np.int64)
    leaf = np.searchsorted(np.cumsum(layout.basis.sizes), cols, side="right").astype(np.int32)
    index = cols - np.asarray(layout.basis.offsets, dtype=np.int64)[leaf]
    arrays = [pa.array(cols), pa.array(leaf), pa.array(index)]
    arrays += [ts.to_array(r, o, schema.field(o["column"]).type)
               for r, o in zip(rows, jac["outputs"]) if o["column"]]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _check_shard(layout: Layout, covered: np.ndarray, start: int, rows: list) -> int:
    length = len(rows[0]) if rows else 0
    expected = [(length,) + tuple(s) for s in layout.out_shapes]
    got = [(tuple(np.shape(r)), np.dtype(r.dtype).name) for r in rows]
    want = [(s, np.dtype(d).name) for s, d in zip(expected, layout.out_dtypes)]
    if got != want:
        raise ValueError(f"Shard at column {start} has rows (shape, dtype) {got}, expected "
                         f"{want} (one array per output leaf).")
    if not 0 <= start <= start + length <= covered.size or covered[start:start + length].any():
        raise ValueError(f"Shard of columns [{start}, {start + length}) overlaps another shard "
                         f"or leaves the {covered.size} tangent columns.")
    return length


def _write_value_aux(fs, file: str, stream: Any, desc: dict) -> None:
    leaves = [leaf for part in ("value", "aux") if desc[part] for leaf in desc[part]["leaves"]]
    arrays = [np.asarray(x) for part in (stream.value, stream.aux) if part is not None
              for x in jax.tree_util.tree_leaves(part)]
    fields = [ts.leaf_field(leaf) for leaf in leaves if leaf["column"]]
    schema = pa.schema(fields, metadata=_metadata(desc))
    columns = [ts.to_array(x[None], leaf, schema.field(leaf["column"]).type)
               for x, leaf in zip(arrays, leaves) if leaf["column"]]
    with _table_writer(fs, file, schema, desc["format"]) as writer:
        if columns:
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))


# ------------------------------------------------------------------------------------- loading

def load(path: str | os.PathLike) -> Result:
    """Loads a result folder written by ``rayjac run`` or ``write_result``.

    Arrow IPC files are memory-mapped: the Jacobian's arrays are views of the file (no copy)
    when it was written as one shard, and one copy otherwise.

    Args:
      path: the run's folder: a local path or a ``pyarrow.fs`` URI (``s3://``, ``file://``).

    Returns:
      A ``Result`` with ``.jacobian``, ``.value``, ``.aux`` and ``.metadata``.

    Raises:
      FileNotFoundError: nothing exists at ``path``.
      ValueError: ``path`` is not a complete rayjac result, a file is truncated or corrupt, or
        it was written by a newer rayjac.

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> folder = tempfile.mkdtemp() + "/run"
      >>> _ = rayjac._storage.write_result(folder, rayjac.jacfwd(jnp.sin).stream((jnp.zeros(2),)))
      >>> rayjac.load(folder).metadata["jacobian"]["columns"]
      2
    """
    fs, root = _resolve(path)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    jac_file, value_aux_file, _ = SCHEMA.files(desc["format"])
    jac_table = _read_table(fs, f"{root}/{jac_file}", desc["format"], shown)
    jac = _check_version(jac_table.schema, shown, jac_file)["jacobian"]
    with _reading(shown, jac_file):
        jacobian = _layout(jac).assemble(_read_rows(jac_table, jac), xp=np)
    parts = _read_table(fs, f"{root}/{value_aux_file}", desc["format"], shown)
    batch = parts.to_batches()[0] if parts.num_rows else None
    with _reading(shown, value_aux_file):
        value, aux = (ts.read_tree(batch, desc[p]) for p in ("value", "aux"))
    return Result(jacobian, value, aux, desc, shown)


@contextlib.contextmanager
def _reading(shown: str, name: str) -> Iterator[None]:
    """Turns low-level read failures into one error that names the result and the file."""
    try:
        yield
    except (pa.ArrowException, OSError, KeyError, IndexError, TypeError, ValueError,
            json.JSONDecodeError) as err:
        if isinstance(err, (FileNotFoundError, _ResultError)):
            raise
        raise _ResultError(f"{shown}: {name} is truncated or corrupt ({err}). Re-run the job to "
                           "write the result again.") from err


class _ResultError(ValueError):
    """A result folder that cannot be read (the message says why)."""


def _read_description(fs, root: str, shown: str) -> dict:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"No rayjac result at {shown}: the path does not exist.")
    if info.type != pafs.FileType.Directory:
        raise _ResultError(f"{shown} is a file, not a rayjac result folder; pass the run's "
                           "folder (the output.path of its config).")
    marker = f"{root}/{SCHEMA.metadata}"
    if fs.get_file_info(marker).type == pafs.FileType.NotFound:
        hint = (" It looks like a sweep folder: load one of the runs listed in runs.parquet."
                if fs.get_file_info(f"{root}/runs.parquet").type == pafs.FileType.File else
                " A run that crashed or is still writing leaves no result; re-run it.")
        raise _ResultError(f"{shown} is not a complete rayjac result: it has no "
                           f"{SCHEMA.metadata}.{hint}")
    with _reading(shown, SCHEMA.metadata), fs.open_input_stream(marker) as src:
        desc = json.loads(src.read())
    return _check_description(desc, shown, SCHEMA.metadata)


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


def _check_version(schema: pa.Schema, shown: str, name: str) -> dict:
    raw = (schema.metadata or {}).get(SCHEMA.key.encode())
    if raw is None:
        raise _ResultError(f"{shown}: {name} is not a rayjac table (its schema metadata has no "
                           f"{SCHEMA.key!r} key).")
    with _reading(shown, name):
        return _check_description(json.loads(raw), shown, name)


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


def _layout(jac: dict) -> Layout:
    shapes = lambda leaves: tuple(tuple(x["shape"]) for x in leaves)  # noqa: E731
    dtypes = lambda leaves: tuple(ts.dtype_of(x) for x in leaves)  # noqa: E731
    basis = TangentBasis(shapes(jac["inputs"]), dtypes(jac["inputs"]))
    return Layout(basis, ts.treedef_from_json(jac["in_tree"]),
                  ts.treedef_from_json(jac["out_tree"]), shapes(jac["outputs"]),
                  dtypes(jac["outputs"]))


def _read_rows(table: pa.Table, jac: dict) -> list[np.ndarray]:
    """Rows of J^T in column order: views of the file when it holds one ordered batch."""
    n, outputs = jac["columns"], [leaf for leaf in jac["outputs"]]
    batches = table.to_batches()
    if len(batches) == 1 and _is_arange(batches[0].column("column"), n):
        stored = [_stored(batches[0], leaf, n) for leaf in outputs]
    else:
        stored = _gather(batches, outputs, n)
    return [ts.decode(values, leaf) for values, leaf in zip(stored, outputs)]


def _stored(batch: pa.RecordBatch, leaf: dict, n: int) -> np.ndarray:
    if leaf["column"] is None:
        return np.empty((n, 0))
    return ts.stored_values(batch.column(leaf["column"]), leaf)


def _gather(batches: list[pa.RecordBatch], outputs: list[dict], n: int) -> list[np.ndarray]:
    """Scatters the batches' rows (any order) into place by their ``column``."""
    stored = [ts.empty_stored(leaf, n) if leaf["column"] else np.empty((n, 0))
              for leaf in outputs]
    seen = np.zeros(n, dtype=np.int64)
    for batch in batches:
        cols = batch.column("column").to_numpy()
        np.add.at(seen, cols, 1)
        for dst, leaf in zip(stored, outputs):
            if leaf["column"]:
                dst[cols] = ts.stored_values(batch.column(leaf["column"]), leaf)
    if not (seen == 1).all():
        raise ValueError(f"its rows cover {int((seen > 0).sum())} of the {n} tangent columns "
                         f"({int((seen > 1).sum())} more than once)")
    return stored


def _is_arange(column: pa.Array, n: int) -> bool:
    return len(column) == n and np.array_equal(column.to_numpy(), np.arange(n))
