"""Sparse results on disk: the coordinate table of a ``SparsePlan``'s entries (``row``,
``col``, ``value``), one record batch per shard, its colouring, and the BCOO blocks rebuilt
from them.

The table is plain Arrow that any reader understands: ``row`` and ``col`` are the int64 flat
indices of ``rayjac.Sparsity`` (output leaves flattened row-major, then concatenated; the same
for the differentiated inputs), ``value`` one floating column (``value_real``/``value_imag``
for complex Jacobians). Nothing here ever builds an ``(m, n)`` dense array.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..core._basis import Layout
from ..sparsity._pattern import Sparsity
from ..core._plan import SparsePlan, SparseShard

INDEX = (("row", pa.int64()), ("col", pa.int64()))
COLOR = "color"
_REAL, _IMAG = "value_real", "value_imag"


def value_columns(out_dtypes: tuple) -> tuple[list[str], np.dtype]:
    """The value column names and their stored dtype: one column for every output leaf, of the
    leaves' common dtype, so polars and duckdb see three plain columns. Float16, bfloat16 and
    float8 values are stored as float32 (exactly); complex ones as real and imaginary parts of
    the same precision. Each leaf's own dtype is restored on load.

    Example:
      >>> value_columns((np.dtype("float32"), np.dtype("complex64")))
      (['value_real', 'value_imag'], dtype('float32'))
    """
    inexact = [np.dtype(d) for d in out_dtypes if np.dtype(d).kind in "fc"
               or np.dtype(d).type.__module__ == "ml_dtypes"]  # integer/bool leaves: no entries
    common = np.result_type(*inexact) if inexact else np.dtype(np.float32)
    if common.kind == "c":
        return [_REAL, _IMAG], np.finfo(common).dtype
    return ["value"], np.dtype(np.float64 if common == np.float64 else np.float32)


def describe(plan: SparsePlan) -> dict:
    """The ``sparsity`` part of a sparse result's description."""
    pattern = plan.pattern
    m, n = pattern.shape
    names, stored = value_columns(plan.layout.out_dtypes)
    return {"shape": [m, n], "nnz": pattern.nnz, "num_colors": pattern.num_colors,
            "density": pattern.nnz / (m * n) if m * n else 0.0,
            "times": {k: float(v) for k, v in pattern.times.items()},
            "value_columns": names, "value_dtype": stored.name}


def table_schema(sparsity: dict, metadata: dict[str, str]) -> pa.Schema:
    """The coordinate table's schema: ``row``, ``col``, then the value column(s)."""
    value = pa.from_numpy_dtype(np.dtype(sparsity["value_dtype"]))
    fields = [pa.field(name, type_, nullable=False) for name, type_ in INDEX]
    fields += [pa.field(name, value, nullable=False) for name in sparsity["value_columns"]]
    return pa.schema(fields, metadata=metadata)


def colors_table(pattern: Sparsity, metadata: dict[str, str]) -> pa.Table:
    """One row per column of the flat Jacobian: its colour (which JVP computed it)."""
    schema = pa.schema([pa.field(COLOR, pa.int64(), nullable=False)], metadata=metadata)
    return pa.Table.from_arrays([pa.array(pattern.colors, pa.int64())], schema=schema)


def shard_batch(schema: pa.Schema, plan: SparsePlan, covered: np.ndarray,
                shard: SparseShard) -> pa.RecordBatch:
    """The entries of one shard's colours as a record batch, after checking the shard."""
    start, stop, values = shard
    if not 0 <= start <= stop <= covered.size or covered[start:stop].any():
        raise ValueError(f"The shard of colours [{start}, {stop}) overlaps another shard or "
                         f"lies outside the {covered.size} colours.")
    positions = [plan.positions(k, start, stop) for k in range(len(plan.entries))]
    got = [np.shape(v) for v in values]
    if got != [(p.size,) for p in positions]:
        raise ValueError(f"The shard of colours [{start}, {stop}) has values of shapes {got}; "
                         f"expected {[(p.size,) for p in positions]}, one per output leaf.")
    covered[start:stop] = True
    entries = np.concatenate([e[p] for e, p in zip(plan.entries, positions)])
    data = np.concatenate([np.asarray(v) for v in values]) if values else np.zeros(0)
    stored = schema.field(2).type.to_pandas_dtype()
    if _IMAG in schema.names:
        columns = [np.real(data).astype(stored), np.imag(data).astype(stored)]
    else:
        columns = [data.astype(stored, copy=False)]
    arrays = [pa.array(plan.pattern.rows[entries]), pa.array(plan.pattern.cols[entries])]
    return pa.RecordBatch.from_arrays(arrays + [pa.array(c) for c in columns], schema=schema)


def read_pattern(table: pa.Table, colors: pa.Table, sparsity: dict
                 ) -> tuple[Sparsity, np.ndarray]:
    """The stored ``Sparsity`` (entries sorted) and the permutation from file order to it."""
    shape = tuple(sparsity["shape"])
    rows, cols = (column(table, name) for name, _ in INDEX)
    keys = rows * max(shape[1], 1) + cols
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if keys.size != sparsity["nnz"] or (keys.size and (np.diff(keys) == 0).any()):
        raise ValueError(f"it holds {keys.size} entries ({keys.size - np.unique(keys).size} "
                         f"repeated); its metadata says {sparsity['nnz']} distinct ones")
    pattern = Sparsity.from_sorted(rows[order], cols[order], shape, column(colors, COLOR))
    pattern.times = dict(sparsity.get("times", {}))
    return pattern, order


def read_blocks(table: pa.Table, sparsity: dict, pattern: Sparsity, order: np.ndarray,
                layout: Layout) -> object:
    """The BCOO blocks in the jacfwd structure, each leaf's values in its own dtype."""
    from jax.experimental import sparse

    values = stored_values(table, sparsity)[order]
    plan = SparsePlan.build(pattern, layout)
    blocks = []
    for k, (out_shape, dtype) in enumerate(zip(layout.out_shapes, layout.out_dtypes)):
        data = values[plan.entries[k]]
        data = (data if np.dtype(dtype).kind == "c" else data.real).astype(dtype, copy=False)
        blocks.append([sparse.BCOO((data[lo:hi], plan.indices(k, i)), shape=out_shape + shape,
                                   indices_sorted=True, unique_indices=True)
                       for i, ((lo, hi), shape) in enumerate(zip(plan.spans[k],
                                                                 layout.basis.shapes))])
    return layout.structure(blocks)


def stored_values(table: pa.Table, sparsity: dict) -> np.ndarray:
    """The value column(s) in file order (complex when stored as real and imaginary parts)."""
    if len(sparsity["value_columns"]) == 2:
        return column(table, _REAL) + 1j * column(table, _IMAG)
    return column(table, "value")


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy: a view of the file when it is one chunk, else one copy."""
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=False)
    return column.to_numpy()
