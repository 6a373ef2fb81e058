"""Reading a result folder back: ``load`` (the Jacobian in the structure ``jacfwd`` returns,
memory-mapped where possible) and ``read_sparsity`` (only a sparse result's pattern)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
from typing import Any, Iterator

import jax
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from . import _coords
from . import _folders
from . import _points
from . import _spectra
from . import _treespec as ts
from ._formats import FORMATS
from ._matrix import flat_matrix
from ._schema import SCHEMA


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
      points: ``B`` for a result of many points (``jf.map``: every leaf has a leading axis
        of length B, sparse blocks are BCOO with ``n_batch == 1``); ``None`` for one point.
      spectrum: with an ``analysis`` section, the eigenvalues of each point's flat Jacobian
        (complex128, ``(B, k)``, or ``(k,)`` for one point), leading first; else ``None``.
      stability: with an analysis, a ``pyarrow.Table`` with one row per point (``point``,
        ``abscissa``, ``radius``, ``stable``, ``unstable``); else ``None``. With
        ``keep_jacobian: false`` the result has no Jacobian (``jacobian`` is ``None``).

    Example:
      >>> import jax.numpy as jnp, rayjac, tempfile
      >>> folder = tempfile.mkdtemp() + "/run"
      >>> stream = rayjac.jacfwd(lambda x: x ** 2).stream((jnp.arange(3.0),))
      >>> _ = rayjac.store.write_result(folder, stream)
      >>> rayjac.load(folder).jacobian.diagonal()
      array([0., 2., 4.], dtype=float32)
    """

    jacobian: Any
    value: Any
    aux: Any
    metadata: dict
    path: str
    sparsity: Any = None
    points: int | None = None
    spectrum: Any = None
    stability: Any = None

    def matrix(self, point: int | None = None) -> Any:
        """The flat Jacobian ``(m, n)`` in ``rayjac.Sparsity``'s order (output leaves, each
        flattened; then grad_vars leaves and argnums leaves): a ``scipy.sparse`` CSR array for
        a sparse result, a numpy array for a dense one. A map result needs ``point``.

        Example:
          >>> import jax.numpy as jnp, rayjac, tempfile
          >>> folder = tempfile.mkdtemp() + "/run"
          >>> jf = rayjac.jacfwd(lambda x, y: x * y, argnums=(0, 1), sparsity="auto")
          >>> _ = rayjac.store.write_result(folder, jf.stream((jnp.ones(2), jnp.arange(2.0))))
          >>> rayjac.load(folder).matrix().toarray()
          array([[0., 0., 1., 0.],
                 [0., 1., 0., 1.]], dtype=float32)
        """
        if self.jacobian is None:
            raise ValueError(f"{self.path} keeps no Jacobian (its run had analysis."
                             "keep_jacobian: false); rerun with keep_jacobian: true.")
        return flat_matrix(self.jacobian, self.metadata["jacobian"]["blocks"], self.points,
                           point)

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
      >>> _ = rayjac.store.write_result(folder, rayjac.jacfwd(jnp.sin).stream((jnp.ones(2),)))
      >>> rayjac.load(folder).metadata["jacobian"]["columns"]
      2
    """
    fs, root = _folders.resolve(path, filesystem)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    jac_file, value_aux_file, _ = SCHEMA.files(desc["format"])
    points, layout = desc.get("points"), ts.layout_from_json(desc["jacobian"])
    jacobian = pattern = None
    if "jacobian" in desc["files"]:  # not when an analysis kept only the spectrum
        table = _read_table(fs, f"{root}/{jac_file}", desc["format"], shown)
        jac = _check_description(_table_description(table, shown, jac_file), shown, jac_file)
        with _reading(shown, jac_file):
            if jac.get("kind") == "sparse":
                pattern, order = _read_pattern(fs, root, table, jac, shown)
                jacobian = (_coords.read_blocks(table, jac["sparsity"], pattern, order, layout)
                            if points is None else _points.read_sparse(
                                table, jac["sparsity"], pattern, order, layout, points))
            elif points is None:
                jacobian = layout.assemble(ts.read_rows(table, jac["jacobian"]), xp=np)
            else:
                jacobian = _points.read_dense(table, jac["jacobian"], points)
    parts = _read_table(fs, f"{root}/{value_aux_file}", desc["format"], shown)
    with _reading(shown, value_aux_file):
        if points is None:
            batch = parts.to_batches()[0] if parts.num_rows else None
            value, aux = (ts.read_tree(batch, desc[part]) for part in ("value", "aux"))
        else:
            value, aux = (_points.read_tree(parts, desc[part], points)
                          for part in ("value", "aux"))
    spectrum, stability = _read_analysis(fs, root, desc, shown)
    return Result(jacobian, value, aux, desc, shown, pattern, points, spectrum, stability)


def read_stability(path: str | os.PathLike, *,
                   filesystem: pafs.FileSystem | None = None) -> pa.Table | None:
    """Only the stability table of a result (one row per point: ``point``, ``abscissa``,
    ``radius``, ``stable``, ``unstable``), or ``None`` when its run had no analysis.

    Example:
      >>> import tempfile
      >>> from rayjac.runs import parse_config, run_one
      >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 8},
      ...                     "analysis": {"spectrum": "all"},
      ...                     "output": {"path": tempfile.mkdtemp() + "/l96"}})
      >>> read_stability(run_one(cfg)).column_names
      ['point', 'abscissa', 'radius', 'stable', 'unstable']
    """
    fs, root = _folders.resolve(path, filesystem)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    if "analysis" not in desc:
        return None
    file = SCHEMA.analysis_files(desc["format"])[1]
    return _read_table(fs, f"{root}/{file}", desc["format"], shown).replace_schema_metadata(None)


def _read_analysis(fs, root: str, desc: dict, shown: str) -> tuple[Any, Any]:
    """The spectrum (complex128) and the stability table of a run with an analysis."""
    if "analysis" not in desc:
        return None, None
    spectrum_file, stability_file = SCHEMA.analysis_files(desc["format"])
    table = _read_table(fs, f"{root}/{spectrum_file}", desc["format"], shown)
    with _reading(shown, spectrum_file):
        spectrum = _spectra.read_spectrum(table, desc.get("points"))
    stability = _read_table(fs, f"{root}/{stability_file}", desc["format"], shown)
    return spectrum, stability.replace_schema_metadata(None)


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
      >>> _ = rayjac.store.write_result(folder, jf.stream((jnp.ones(5),)))
      >>> read_sparsity(folder)
      Sparsity(shape=(4, 5), nnz=8, density=0.4, num_colors=2)
    """
    fs, root = _folders.resolve(path, filesystem)
    shown = os.fspath(path)
    desc = _read_description(fs, root, shown)
    if desc.get("kind") != "sparse":
        raise ResultError(f"{shown} holds a dense result, which has no sparsity pattern; "
                           "name the folder of a run with jacfwd.sparsity set.")
    jac_file = SCHEMA.files(desc["format"])[0]
    columns = ["row", "col"] + (["point"] if desc.get("points") is not None else [])
    table = _read_table(fs, f"{root}/{jac_file}", desc["format"], shown, columns=columns)
    return _read_pattern(fs, root, table, desc, shown)[0]


def _read_pattern(fs, root: str, table: pa.Table, desc: dict, shown: str) -> tuple[Any, Any]:
    colors_file = SCHEMA.colors_file(desc["format"])
    colors = _read_table(fs, f"{root}/{colors_file}", desc["format"], shown)
    with _reading(shown, SCHEMA.files(desc["format"])[0]):
        if desc.get("points") is not None:
            return _points.read_pattern(table, colors, desc["sparsity"], desc["points"])
        return _coords.read_pattern(table, colors, desc["sparsity"])


class ResultError(ValueError):
    """A result folder that cannot be read (not a result, truncated, corrupt, or newer than
    this rayjac); the message names the path and what is wrong."""

    __module__ = "rayjac.store"  # its public home


@contextlib.contextmanager
def _reading(shown: str, name: str) -> Iterator[None]:
    """Low-level read failures -> one error that names the result and the file."""
    try:
        yield
    except ResultError:
        raise
    except (pa.ArrowException, OSError, KeyError, IndexError, TypeError, ValueError) as err:
        raise ResultError(f"{shown}: {name} is truncated or corrupt ({err}). Re-run the job "
                           "to write the result again.") from err


def _read_description(fs, root: str, shown: str) -> dict:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"No rayjac result at {shown}: the path does not exist.")
    if info.type != pafs.FileType.Directory:
        raise ResultError(f"{shown} is a file, not a rayjac result folder; pass the run's "
                           "folder (the output.path of its config).")
    marker = f"{root}/{SCHEMA.metadata}"
    if fs.get_file_info(marker).type == pafs.FileType.NotFound:
        sweep = fs.get_file_info(f"{root}/{SCHEMA.runs_table}").type == pafs.FileType.File
        hint = (" It is a sweep's folder: load one of the runs listed in its runs.parquet."
                if sweep else " A run that crashed or is still writing leaves no result.")
        raise ResultError(f"{shown} is not a complete rayjac result: it has no "
                           f"{SCHEMA.metadata}.{hint}")
    with _reading(shown, SCHEMA.metadata), fs.open_input_stream(marker) as src:
        desc = json.loads(src.read())
    return _check_description(desc, shown, SCHEMA.metadata)


def _table_description(table: pa.Table, shown: str, name: str) -> dict:
    raw = (table.schema.metadata or {}).get(SCHEMA.key.encode())
    if raw is None:
        raise ResultError(f"{shown}: {name} is not a rayjac table (its schema metadata has no "
                           f"{SCHEMA.key!r} key).")
    with _reading(shown, name):
        return json.loads(raw)


def _check_description(desc: Any, shown: str, name: str) -> dict:
    if not isinstance(desc, dict) or not isinstance(desc.get("schema_version"), int):
        raise ResultError(f"{shown} is not a rayjac result: {name} has no schema_version.")
    if desc["schema_version"] > SCHEMA.version:
        raise ResultError(
            f"{shown} was written with result schema version {desc['schema_version']}, newer "
            f"than this rayjac reads (up to {SCHEMA.version}). Upgrade rayjac "
            "(pip install -U rayjac) to load it.")
    if desc.get("format") not in FORMATS:
        raise ResultError(f"{shown}: {name} names an unknown format {desc.get('format')!r}.")
    return desc


def _read_table(fs, file: str, fmt: str, shown: str, columns: list | None = None
                ) -> pa.Table:
    name = posixpath.basename(file)
    if fs.get_file_info(file).type == pafs.FileType.NotFound:
        raise ResultError(f"{shown} is not a complete rayjac result: {name} is missing.")
    with _reading(shown, name):
        return FORMATS[fmt].read(fs, file, columns)
