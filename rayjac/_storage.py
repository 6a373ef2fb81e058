"""Result folders: the on-disk schema (``SCHEMA``), streaming atomic writes, and ``load``.

A run's folder holds ``jacobian.arrow`` (dense: one row per tangent column; sparse: one row per
stored entry, with ``colors.arrow`` beside it), ``value_aux.arrow`` (one row: the primal value and
aux leaves) and ``metadata.json``, or ``.parquet`` files on request. ``_treespec`` turns pytrees
and dense shards into those tables, ``_coords`` sparse shards; the README documents them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from . import _coords
from . import _folders
from . import _treespec as ts


@dataclasses.dataclass(frozen=True)
class _Schema:
    version: int = 2  # the newest this rayjac reads: dense results are 1, sparse ones 2
    key: str = "rayjac"  # schema-metadata key of every file's JSON description
    index: tuple = ts.INDEX  # the Jacobian table's first columns, then out_0, out_1, ...
    jacobian: str = "jacobian"
    value_aux: str = "value_aux"
    metadata: str = "metadata.json"
    colors: str = "colors"  # sparse results: the colour of each column
    formats: tuple = ("arrow", "parquet")
    # Measured by benchmarks/bench_storage.py (README: Parquet settings): dictionary pages never
    # help float tensors; zstd(1) shrinks sparse Jacobians ~100-fold, and byte-stream-split of
    # float32/float64 values (duckdb reads no other) takes dense ones from 92% to 85%.
    parquet: tuple = (("use_dictionary", False), ("compression", "zstd"),
                      ("compression_level", 1))
    byte_stream_split: tuple = (pa.float32(), pa.float64())
    # The coordinate table's row/col: delta encoding (SPARSE_PARQUET, measured in
    # bench_storage.py) stores their slowly growing runs in a few bits per entry.
    delta: tuple = ("row", "col")

    def files(self, fmt: str) -> tuple[str, str, str]:
        return f"{self.jacobian}.{fmt}", f"{self.value_aux}.{fmt}", self.metadata

    def colors_file(self, fmt: str) -> str:
        return f"{self.colors}.{fmt}"


SCHEMA = _Schema()
_FOLDERS = _folders.Folders(
    files=frozenset(f for fmt in SCHEMA.formats for f in SCHEMA.files(fmt) + (
        SCHEMA.colors_file(fmt),)), last=SCHEMA.metadata)
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
    from jax.experimental import sparse

    def text(a: Any) -> _Text:
        kind = f"BCOO(nnz={a.nse})" if isinstance(a, sparse.BCOO) else ""
        return _Text(f"{a.dtype}{list(a.shape)}{kind}")

    return repr(jax.tree_util.tree_map(text, tree, is_leaf=lambda a: isinstance(a, sparse.BCOO)))


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
    plan = getattr(stream, "plan", None)
    desc = {**extra, "schema_version": 1 if plan is None else 2, "format": fmt,
            "kind": "dense" if plan is None else "sparse",
            "files": dict(zip(("jacobian", "value_aux", "metadata"), SCHEMA.files(fmt))),
            "encodings": ts.ENCODINGS, "jacobian": ts.describe_layout(stream.layout),
            "value": ts.describe_tree(stream.value, "value"),
            "aux": ts.describe_tree(stream.aux, "aux")}
    desc["jacobian"]["blocks"] = _blocks(stream.layout, plan)
    if plan is not None:
        desc["files"]["colors"] = SCHEMA.colors_file(fmt)
        desc["sparsity"] = _coords.describe(plan)
    desc["versions"] = {**extra.get("versions", {}), **_versions()}
    desc["timings"] = dict(extra.get("timings", {}))
    try:
        json.dumps(desc)
    except (TypeError, ValueError) as err:
        raise TypeError(f"write_result(metadata=...) must be JSON-serialisable: {err}") from None
    return desc


def _blocks(layout: Any, plan: Any) -> list[dict]:
    """Every Jacobian block in ``jax.tree_util`` order of the stored Jacobian: its path,
    shape, dtype, how many leading axes are the output's (``out_ndim``) and its ``nnz``
    (``None`` when dense)."""
    specs = [[_Leaf({"output": k, "input": i, "shape": list(o + shape), "out_ndim": len(o),
                     "dtype": np.dtype(d).name,
                     "nnz": None if plan is None else plan.spans[k][i][1] - plan.spans[k][i][0]})
              for i, shape in enumerate(layout.basis.shapes)]
             for k, (o, d) in enumerate(zip(layout.out_shapes, layout.out_dtypes))]
    flat = jax.tree_util.tree_flatten_with_path(layout.structure(specs))[0]
    return [{"path": jax.tree_util.keystr(path) or "(root)", **leaf} for path, leaf in flat]


class _Leaf(dict):
    """A dict that ``jax.tree_util`` treats as a leaf (only exact ``dict`` is a pytree node)."""


@functools.lru_cache(maxsize=None)
def _versions() -> dict:
    """Read once per process: a sweep's runner stores hundreds of runs."""
    found = {}
    for dist in ("rayjac", "ray", "pydantic", "python", "jax", "jaxlib", "numpy", "pyarrow"):
        with contextlib.suppress(_importlib_metadata.PackageNotFoundError):
            found[dist] = (platform.python_version() if dist == "python"
                           else _importlib_metadata.version(dist))
    return found


def _write_files(fs, folder: str, stream: Any, desc: dict) -> None:
    jac_file, value_aux_file, meta_file = SCHEMA.files(desc["format"])
    start = time.perf_counter()
    plan = getattr(stream, "plan", None)
    if plan is not None:
        colors = _coords.colors_table(plan.pattern, _metadata(desc))
        with _table_writer(fs, f"{folder}/{desc['files']['colors']}", colors.schema,
                           desc["format"]) as writer:
            writer.write_table(colors)
    try:
        write = _write_jacobian if plan is None else _write_coordinates
        timings = write(fs, f"{folder}/{jac_file}", stream, desc)
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


def _write_coordinates(fs, file: str, stream: Any, desc: dict) -> dict:
    """The sparse twin of ``_write_jacobian``: each shard's entries, one batch as it arrives."""
    plan = stream.plan
    schema = _coords.table_schema(desc["sparsity"], _metadata(desc))
    covered = np.zeros(plan.num_colors, dtype=bool)
    waited = written = 0.0
    entries = 0
    with _table_writer(fs, file, schema, desc["format"]) as writer:
        ready = time.perf_counter()
        for shard in stream.shards:
            arrived = time.perf_counter()
            batch = _coords.shard_batch(schema, plan, covered, shard)
            if batch.num_rows:
                writer.write_batch(batch)
            entries += batch.num_rows
            del batch, shard  # hold no shard while waiting for the next one
            waited += arrived - ready
            ready = time.perf_counter()
            written += ready - arrived
    if not covered.all() or entries != plan.pattern.nnz:
        raise ValueError(f"The shards covered {int(covered.sum())} of the {covered.size} "
                         f"colours ({entries} of {plan.pattern.nnz} entries); the result is "
                         "incomplete and was not written.")
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
    split += [f.name for f in schema if f.type in SCHEMA.byte_stream_split]
    delta = {f.name: "DELTA_BINARY_PACKED" for f in schema if f.name in SCHEMA.delta
             and f.type == pa.int64()}
    return {**dict(SCHEMA.parquet), "use_byte_stream_split": split or False,
            **({"column_encoding": delta} if delta else {})}


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
    pattern = None
    if jac.get("kind") == "sparse":
        pattern, order = _read_pattern(fs, root, table, jac, shown)
        with _reading(shown, jac_file):
            jacobian = _coords.read_blocks(table, jac["sparsity"], pattern, order,
                                           ts.layout_from_json(jac["jacobian"]))
    else:
        with _reading(shown, jac_file):
            jacobian = ts.layout_from_json(jac["jacobian"]).assemble(
                ts.read_rows(table, jac["jacobian"]), xp=np)
    parts = _read_table(fs, f"{root}/{value_aux_file}", desc["format"], shown)
    with _reading(shown, value_aux_file):
        batch = parts.to_batches()[0] if parts.num_rows else None
        value, aux = (ts.read_tree(batch, desc[part]) for part in ("value", "aux"))
    return Result(jacobian, value, aux, desc, shown, pattern)


def read_sparsity(path: str | os.PathLike, *,
                  filesystem: pafs.FileSystem | None = None) -> Any:
    """The ``rayjac.Sparsity`` (pattern and colouring) of a sparse result, reading only its
    ``row``/``col`` columns and colours, e.g. to reuse it (``jacfwd.sparsity: <folder>``).

    Raises:
      FileNotFoundError: nothing exists at ``path``.
      ValueError: ``path`` is not a complete rayjac result, or holds a dense one.

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> folder = tempfile.mkdtemp() + "/run"
      >>> jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto")
      >>> _ = rayjac._storage.write_result(folder, jf.stream((jnp.ones(5),)))
      >>> read_sparsity(folder)
      Sparsity(shape=(4, 5), nnz=8, density=0.4, num_colors=2)
    """
    fs, root = _folders.resolve(path, filesystem)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    if desc.get("kind") != "sparse":
        raise _ResultError(f"{shown} holds a dense result, which has no sparsity pattern; "
                           "name the folder of a run with jacfwd.sparsity set.")
    jac_file = SCHEMA.files(desc["format"])[0]
    table = _read_table(fs, f"{root}/{jac_file}", desc["format"], shown, columns=["row", "col"])
    return _read_pattern(fs, root, table, desc, shown)[0]


def _read_pattern(fs, root: str, table: pa.Table, desc: dict, shown: str) -> tuple[Any, Any]:
    colors_file = SCHEMA.colors_file(desc["format"])
    colors = _read_table(fs, f"{root}/{colors_file}", desc["format"], shown)
    with _reading(shown, SCHEMA.files(desc["format"])[0]):
        return _coords.read_pattern(table, colors, desc["sparsity"])


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


def _read_table(fs, file: str, fmt: str, shown: str, columns: list | None = None
                ) -> pa.Table:
    name = posixpath.basename(file)
    if fs.get_file_info(file).type == pafs.FileType.NotFound:
        raise _ResultError(f"{shown} is not a complete rayjac result: {name} is missing.")
    local = isinstance(fs, pafs.LocalFileSystem)
    with _reading(shown, name):
        if fmt == "parquet":
            return pq.read_table(file, filesystem=fs, memory_map=local, columns=columns)
        source = pa.memory_map(file) if local else fs.open_input_file(file)
        table = pa.ipc.open_file(source).read_all()
        return table if columns is None else table.select(columns)
