"""Writing a result folder: the JSON description, one record batch per shard as shards arrive,
and an atomic publish (a hidden sibling folder renamed into place when complete)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import time
from importlib import metadata as _importlib_metadata
from typing import Any

import jax
import numpy as np
import pyarrow.fs as pafs

from . import _coords
from . import _points
from . import _spectra
from . import _folders
from . import _treespec as ts
from ._formats import FORMATS
from ._schema import FOLDERS, SCHEMA

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


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
    FOLDERS.check(fs, final, path, overwrite)
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
    if format not in FORMATS:
        raise ValueError(f"Unknown result format {format!r}; use one of {list(FORMATS)}.")
    fs, final = _folders.resolve(path, filesystem)
    try:
        FOLDERS.check(fs, final, path, overwrite)
        desc = _describe(stream, format, dict(metadata or {}))
    except BaseException:
        stream.cancel()  # no shard keeps a worker busy for nothing
        raise
    tmp = _folders.sibling(final, "tmp")
    fs.create_dir(tmp, recursive=True)
    try:
        _write_files(fs, tmp, stream, desc)
        FOLDERS.publish(fs, tmp, final, path, overwrite)
    except BaseException:
        stream.cancel()
        _folders.remove(fs, tmp)
        raise
    return _folders.shown(path, final, filesystem)


def holds_result(path: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None) -> bool:
    """Whether ``path`` is a complete rayjac result folder (readable or not): only rayjac's
    files, ``metadata.json`` (written last) among them."""
    fs, final = _folders.resolve(path, filesystem)
    return FOLDERS.state(fs, final) == "result"


# ------------------------------------------------------------------------------------- writing

def _describe(stream: Any, fmt: str, extra: dict) -> dict:
    """The JSON description kept in every file's schema metadata and in ``metadata.json``."""
    plan, points = getattr(stream, "plan", None), getattr(stream, "points", None)
    tree = ts.describe_tree if points is None else _points.describe_tree
    desc = {**extra, "schema_version": 3 if points else 1 if plan is None else 2,
            "format": fmt, "kind": "dense" if plan is None else "sparse", "points": points,
            "files": dict(zip(("jacobian", "value_aux", "metadata"), SCHEMA.files(fmt))),
            "encodings": ts.ENCODINGS, "jacobian": ts.describe_layout(stream.layout),
            "value": tree(stream.value, "value"), "aux": tree(stream.aux, "aux")}
    desc["jacobian"]["blocks"] = _blocks(stream.layout, plan)
    analysis = getattr(stream, "analysis", None)
    if analysis is not None:
        desc["analysis"] = {"spectrum": "all" if analysis.k is None else analysis.k,
                            "system": analysis.system, "keep_jacobian": analysis.keep_jacobian}
        desc["files"].update(zip(("spectrum", "stability"), SCHEMA.analysis_files(fmt)))
        if not analysis.keep_jacobian:
            del desc["files"]["jacobian"]
    if plan is not None:
        desc["sparsity"] = _coords.describe(plan)
        if "jacobian" in desc["files"]:
            desc["files"]["colors"] = SCHEMA.colors_file(fmt)
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
    plan, points = getattr(stream, "plan", None), desc.get("points")
    analysis = getattr(stream, "analysis", None)
    keep = analysis is None or analysis.keep_jacobian
    if plan is not None and keep:
        colors = _coords.colors_table(plan.pattern, _metadata(desc))
        with _table_writer(fs, f"{folder}/{desc['files']['colors']}", colors.schema,
                           desc["format"]) as writer:
            writer.write_table(colors)
    source = stream.shards if points is None else stream.parts
    spectra = None if analysis is None else _spectra.Spectra(stream, analysis)
    items = source if spectra is None else spectra.watch(source)
    try:
        if keep:
            timings = _write_jacobian(fs, f"{folder}/{jac_file}", stream, items, desc)
        else:  # only the spectra are kept: wait for every part
            waited = time.perf_counter()
            for _ in items:
                pass
            timings = {"shards_wait_s": time.perf_counter() - waited}
    finally:  # on failure, lets a generator of shards (the engine) cancel its work
        getattr(source, "close", lambda: None)()
    if spectra is not None:
        _write_spectra(fs, folder, spectra.all(), analysis, desc)
    desc["timings"].update(timings, write_total_s=time.perf_counter() - start)
    leaves = [leaf for part in ("value", "aux") if desc[part] for leaf in desc[part]["leaves"]]
    schema = ts.table_schema(leaves, _metadata(desc), index=False)
    trees = [stream.value, stream.aux]
    if points is not None:
        schema = _points.with_point(schema)
        batch = _points.tree_batch(schema, leaves, trees, points)
    else:
        batch = ts.tree_batch(schema, leaves, trees)
    with _table_writer(fs, f"{folder}/{value_aux_file}", schema, desc["format"]) as writer:
        if batch is not None:
            writer.write_batch(batch)
    with fs.open_output_stream(f"{folder}/{meta_file}") as out:
        out.write(json.dumps(desc, indent=2).encode())


def _write_spectra(fs, folder: str, lam: np.ndarray, analysis: Any, desc: dict) -> None:
    spectrum_file, stability_file = SCHEMA.analysis_files(desc["format"])
    meta = _metadata(desc)
    with _table_writer(fs, f"{folder}/{spectrum_file}", _spectra.SPECTRUM.with_metadata(meta),
                       desc["format"]) as writer:
        writer.write_batch(_spectra.spectrum_batch(0, lam, meta))
    table = _spectra.stability_table(lam, analysis.system, meta)
    with _table_writer(fs, f"{folder}/{stability_file}", table.schema,
                       desc["format"]) as writer:
        writer.write_table(table)


def _write_jacobian(fs, file: str, stream: Any, items: Any, desc: dict) -> dict:
    """Writes each shard (or part of a map) as it arrives; returns the time spent waiting for
    them and writing."""
    schema, to_batch, check = _codec(stream, desc)
    waited = written = 0.0
    with _table_writer(fs, file, schema, desc["format"]) as writer:
        ready = time.perf_counter()
        for item in items:
            arrived = time.perf_counter()
            batch = to_batch(item)
            if batch.num_rows:
                writer.write_batch(batch)
            del batch, item  # hold nothing while waiting for the next one
            waited += arrived - ready
            ready = time.perf_counter()
            written += ready - arrived
    check()
    return {"shards_wait_s": waited, "jacobian_write_s": written}


def _codec(stream: Any, desc: dict) -> tuple[Any, Any, Any]:
    """The Jacobian table's schema, the batch of one shard or part, and the final check that
    every column (colour) of every point arrived."""
    jac, plan, points = desc["jacobian"], stream.plan, desc.get("points")
    units = jac["columns"] if plan is None else plan.num_colors
    covered = np.zeros(units if points is None else (points, units), dtype=bool)
    if plan is None:
        schema = ts.table_schema(jac["outputs"], _metadata(desc), index=True)
        if points is None:
            to_batch = lambda shard: ts.shard_batch(  # noqa: E731
                schema, stream.layout, jac["outputs"], covered, *shard)
        else:
            schema = _points.with_point(schema)
            to_batch = functools.partial(_points.dense_batch, schema, stream.layout,
                                         jac["outputs"], covered)
    else:
        schema = _coords.table_schema(desc["sparsity"], _metadata(desc))
        batch_of = _coords.shard_batch if points is None else _points.sparse_batch
        schema = schema if points is None else _points.with_point(schema)
        to_batch = functools.partial(batch_of, schema, plan, covered)

    def check() -> None:
        if not covered.all():
            what = "tangent columns" if plan is None else "colours"
            what = what if points is None else f"(point, {what[:-1]}) pairs"
            raise ValueError(f"The shards covered {int(covered.sum())} of the {covered.size} "
                             f"{what} only: the result is incomplete and was not written.")

    return schema, to_batch, check


def _table_writer(fs, file: str, schema, fmt: str) -> Any:
    return FORMATS[fmt].open(fs, file, schema)


def _metadata(desc: dict) -> dict[str, str]:
    return {SCHEMA.key: json.dumps(desc)}


