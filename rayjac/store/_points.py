"""Results of many points (``jf.map``): the same tables with an int64 ``point`` column first.

A dense map result has one Jacobian row per (point, tangent column); a sparse one one row per
(point, stored entry), every point holding the same entries; the value/aux table has one row
per point. Parts ``(p0, p1, start, stop, values)`` (points ``[p0, p1)`` times columns or colours
``[start, stop)``) arrive in any order and are written as they come.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pyarrow as pa

from ..core._basis import Layout
from ..core._plan import SparsePlan
from . import _coords
from . import _treespec as ts

POINT = ("point", pa.int64())


def with_point(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the ``point`` column first."""
    return schema.insert(0, pa.field(POINT[0], POINT[1], nullable=False))


def _claim(covered: np.ndarray, part: Any, unit: str) -> None:
    p0, p1, start, stop = part[:4]
    points, units = covered.shape
    if not (0 <= p0 < p1 <= points and 0 <= start <= stop <= units) or covered[
            p0:p1, start:stop].any():
        raise ValueError(f"The part of points [{p0}, {p1}) and {unit} [{start}, {stop}) "
                         f"overlaps another part or lies outside the {points} points and "
                         f"{units} {unit}.")
    covered[p0:p1, start:stop] = True


def dense_batch(schema: pa.Schema, layout: Layout, outputs: list[dict], covered: np.ndarray,
                part: Any) -> pa.RecordBatch:
    """One part's J^T rows (``values[k]``: ``(p1 - p0, stop - start, *out_shape_k)``)."""
    p0, p1, start, stop, values = part[:5]
    want = [((p1 - p0, stop - start, *s), np.dtype(d).name)
            for s, d in zip(layout.out_shapes, layout.out_dtypes)]
    got = [(tuple(np.shape(v)), np.dtype(v.dtype).name) for v in values]
    if got != want:
        raise ValueError(f"The part of points [{p0}, {p1}) and columns [{start}, {stop}) has "
                         f"(shape, dtype) {got}; expected {want}, one per output leaf.")
    _claim(covered, part, "tangent columns")
    count, length = p1 - p0, stop - start
    cols = np.tile(np.arange(start, stop, dtype=np.int64), count)
    leaf = np.searchsorted(np.cumsum(layout.basis.sizes), cols, side="right").astype(np.int32)
    index = cols - np.asarray(layout.basis.offsets, dtype=np.int64)[leaf]
    point = np.repeat(np.arange(p0, p1, dtype=np.int64), length)
    arrays = [pa.array(point), pa.array(cols), pa.array(leaf), pa.array(index)]
    arrays += [ts.to_array(np.reshape(v, (count * length,) + v.shape[2:]), o,
                           schema.field(o["column"]).type)
               for v, o in zip(values, outputs) if o["column"]]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def sparse_batch(schema: pa.Schema, plan: SparsePlan, covered: np.ndarray, part: Any
                 ) -> pa.RecordBatch:
    """One part's entries (``values[k]``: ``(p1 - p0, len(plan.positions(k, start, stop)))``)."""
    p0, p1, start, stop, values = part[:5]
    positions = [plan.positions(k, start, stop) for k in range(len(plan.entries))]
    want = [(p1 - p0, p.size) for p in positions]
    if [tuple(np.shape(v)) for v in values] != want:
        raise ValueError(f"The part of points [{p0}, {p1}) and colours [{start}, {stop}) has "
                         f"values of shapes {[np.shape(v) for v in values]}; expected {want}.")
    _claim(covered, part, "colours")
    entries = np.concatenate([e[p] for e, p in zip(plan.entries, positions)])
    data = (np.concatenate([np.asarray(v) for v in values], axis=1) if values
            else np.zeros((p1 - p0, 0)))
    stored = schema.field("value_real" if "value_real" in schema.names else "value").type
    stored = stored.to_pandas_dtype()
    parts = ([np.real(data), np.imag(data)] if "value_real" in schema.names else [data])
    point = np.repeat(np.arange(p0, p1, dtype=np.int64), entries.size)
    arrays = [pa.array(point), pa.array(np.tile(plan.pattern.rows[entries], p1 - p0)),
              pa.array(np.tile(plan.pattern.cols[entries], p1 - p0))]
    arrays += [pa.array(c.astype(stored, copy=False).reshape(-1)) for c in parts]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def tree_batch(schema: pa.Schema, leaves: list[dict], trees: list[Any], points: int
               ) -> pa.RecordBatch:
    """The value and aux leaves, one row per point (leaves stacked along axis 0)."""
    arrays = [np.asarray(x) for tree in trees if tree is not None
              for x in jax.tree_util.tree_leaves(tree)]
    columns = [pa.array(np.arange(points, dtype=np.int64))]
    columns += [ts.to_array(x, leaf, schema.field(leaf["column"]).type)
                for x, leaf in zip(arrays, leaves) if leaf["column"]]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def describe_tree(tree: Any, part: str) -> dict | None:
    """The leaf specs of one point's value or aux (each leaf without its point axis)."""
    return ts.describe_tree(jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree), part)


# --------------------------------------------------------------------------------- reading

def _order(table: pa.Table, points: int, key: np.ndarray, per_point: int, what: str
           ) -> np.ndarray:
    """The permutation that sorts the rows by (point, key), checked to give every point the
    same ``per_point`` keys once each."""
    point = _coords.column(table, POINT[0])
    order = np.lexsort((key, point))
    if point.size != points * per_point or (point.size and not np.array_equal(
            point[order], np.repeat(np.arange(points), per_point))):
        raise ValueError(f"it holds {point.size} rows; {points} points of {per_point} {what} "
                         "each were expected")
    grid = key[order].reshape(points, per_point)
    if points and ((grid != grid[:1]).any() or (np.diff(grid[0]) == 0).any()):
        raise ValueError(f"its points do not all hold the same {what} once each")
    return order


def read_dense(table: pa.Table, jac: dict, points: int) -> Any:
    """The Jacobian with a leading point axis: ``(B,) + out + in`` blocks."""
    n, outputs = jac["columns"], jac["outputs"]
    order = _order(table, points, _coords.column(table, "flat_index"), n, "tangent columns")
    layout = ts.layout_from_json(jac)
    rows = []
    for leaf in outputs:
        if leaf["column"] is None:
            stored = np.empty((points * n, 0))
        else:
            stored = ts.stored_values(table.column(leaf["column"]).combine_chunks(), leaf)
            stored = stored[order]
        rows.append(ts.decode(stored, leaf).reshape((points, n) + tuple(leaf["shape"])))
    return layout.structure([_blocks(layout, r) for r in rows])


def _blocks(layout: Layout, rows: np.ndarray) -> list[np.ndarray]:
    """Rows of J^T at every point ``(B, n, *out)`` -> blocks ``(B,) + out + in``."""
    points, out_shape = rows.shape[0], rows.shape[2:]
    blocks = []
    for off, size, shape in zip(layout.basis.offsets, layout.basis.sizes, layout.basis.shapes):
        block = rows[:, off:off + size].reshape((points,) + shape + out_shape)
        perm = (0,) + tuple(range(1 + len(shape), block.ndim)) + tuple(range(1, 1 + len(shape)))
        blocks.append(np.transpose(block, perm))
    return blocks


def read_pattern(table: pa.Table, colors: pa.Table, sparsity: dict, points: int
                 ) -> tuple[Any, np.ndarray]:
    """The pattern every point holds and the permutation of the rows to (point, pattern order)."""
    shape = tuple(sparsity["shape"])
    rows, cols = (_coords.column(table, name) for name, _ in _coords.INDEX)
    order = _order(table, points, rows * max(shape[1], 1) + cols, sparsity["nnz"], "entries")
    first = order[:sparsity["nnz"]]
    head = table.take(pa.array(first)).select([name for name, _ in _coords.INDEX])
    pattern, _ = _coords.read_pattern(head, colors, sparsity)
    return pattern, order


def read_sparse(table: pa.Table, sparsity: dict, pattern: Any, order: np.ndarray,
                layout: Layout, points: int) -> Any:
    """BCOO blocks with one batch dimension (``n_batch == 1``), shape ``(B,) + out + in``."""
    from jax.experimental import sparse

    values = _coords.stored_values(table, sparsity)[order].reshape(points, -1)
    plan = SparsePlan.build(pattern, layout)
    blocks = []
    for k, (out_shape, dtype) in enumerate(zip(layout.out_shapes, layout.out_dtypes)):
        data = values[:, plan.entries[k]]
        data = (data if np.dtype(dtype).kind == "c" else data.real).astype(dtype, copy=False)
        blocks.append([
            sparse.BCOO((data[:, lo:hi], np.broadcast_to(
                plan.indices(k, i), (points, hi - lo, len(out_shape) + len(shape)))),
                shape=(points,) + out_shape + shape, indices_sorted=True, unique_indices=True)
            for i, ((lo, hi), shape) in enumerate(zip(plan.spans[k], layout.basis.shapes))])
    return layout.structure(blocks)


def read_tree(table: pa.Table, part: dict | None, points: int) -> Any:
    """The value or aux pytree, every leaf stacked over the points."""
    if part is None:
        return None
    order = np.argsort(_coords.column(table, POINT[0]), kind="stable")
    leaves = []
    for leaf in part["leaves"]:
        if leaf["column"] is None:
            stored = np.empty((points, 0))
        else:
            stored = ts.stored_values(table.column(leaf["column"]).combine_chunks(), leaf)[order]
        leaves.append(ts.decode(stored, leaf).reshape((points,) + tuple(leaf["shape"])))
    return jax.tree_util.tree_unflatten(ts.treedef_from_json(part["tree"]), leaves)
