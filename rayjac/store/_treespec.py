"""The tables in result files: pytree structures as JSON, array leaves as canonical
``arrow.fixed_shape_tensor`` columns, and Jacobian shards as record batches (and back).

A result must describe itself to readers without rayjac (pyarrow, polars, duckdb), so a
structure is plain JSON (dict, list, tuple, None and leaf nodes) and a leaf is a JSON "leaf
spec" ``{"column", "path", "shape", "dtype", "encoding"}``. Dtypes that Arrow lacks are stored
in one of the documented ``ENCODINGS``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from ..core._basis import Layout, TangentBasis

LEAF = "*"
ENCODINGS = {
    "plain": "the Arrow value type is the leaf's dtype",
    "complex": "Arrow has no complex type: a trailing axis of length 2 holds the real part "
               "([..., 0]) and the imaginary part ([..., 1]) in the real dtype of the same "
               "precision (complex64 -> float32, complex128 -> float64)",
    "bits": "the leaf's raw bytes as an unsigned integer of the same width (bool -> uint8, "
            "bfloat16 -> uint16, ...); reinterpret them with numpy's .view(dtype)",
    "empty": "a zero-size leaf has no column: it is an empty array of the recorded shape",
}
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def treedef_to_json(treedef: Any, what: str = "pytree") -> Any:
    """A ``PyTreeDef`` of dict/list/tuple/None nodes as JSON; ``TypeError`` for other nodes."""
    data = treedef.node_data()
    if data is None:
        return LEAF
    kind, keys = data
    children = [treedef_to_json(c, what) for c in treedef.children()]
    if kind is type(None):
        return None
    if kind is tuple or kind is list:
        return {kind.__name__: children}
    if kind is dict and all(type(k) in (str, int) for k in keys):
        return {"dict": [[k, c] for k, c in zip(keys, children)]}
    raise TypeError(
        f"rayjac cannot store this {what}: it contains a {kind.__name__} node "
        f"({treedef}). Result files hold pytrees of dict (str or int keys), list, tuple and "
        "None; convert it first, e.g. with dataclasses.asdict or namedtuple._asdict().")


def treedef_from_json(spec: Any) -> Any:
    """Inverse of ``treedef_to_json``."""
    return jax.tree_util.tree_structure(_skeleton(spec))


def _skeleton(spec: Any) -> Any:
    if spec == LEAF:
        return 0
    if spec is None:
        return None
    (kind, children), = spec.items()
    if kind == "dict":
        return {k: _skeleton(c) for k, c in children}
    return {"tuple": tuple, "list": list}[kind](_skeleton(c) for c in children)


def leaf_paths(treedef: Any) -> list[str]:
    """``jax.tree_util.keystr`` of every leaf, e.g. ``[0]['w']``, for people reading metadata."""
    skeleton = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(skeleton)[0]]


def describe_leaf(column: str, path: str, shape: Any, dtype: Any, what: str) -> dict:
    """The leaf spec of a leaf stored in ``column`` (``TypeError`` for non-numeric dtypes)."""
    shape = [int(d) for d in shape]
    enc = "empty" if 0 in shape else _encoding(np.dtype(dtype), f"{what} leaf {path or '(root)'}")
    return {"column": None if enc == "empty" else column, "path": path, "shape": shape,
            "dtype": np.dtype(dtype).name, "encoding": enc}


def describe_tree(tree: Any, part: str) -> dict | None:
    """``{"tree": structure, "leaves": leaf specs}`` of a value or aux pytree; columns are
    named ``{part}_{k}``."""
    if tree is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return {"tree": treedef_to_json(treedef, part),
            "leaves": [describe_leaf(f"{part}_{k}", p, np.shape(x), np.asarray(x).dtype, part)
                       for k, (p, x) in enumerate(zip(leaf_paths(treedef), leaves))]}


def _encoding(dtype: np.dtype, what: str) -> str:
    if dtype.kind == "c":
        return "complex"
    if dtype.kind in "iuf" and _has_arrow_type(dtype):
        return "plain"
    if (dtype.kind == "b" or dtype.type.__module__ == "ml_dtypes") and dtype.itemsize in _BITS:
        return "bits"
    raise TypeError(f"rayjac cannot store the {what} of dtype {dtype}: result files hold "
                    "numeric arrays (bool, integer, float, complex, JAX's bfloat16/float8).")


def _has_arrow_type(dtype: np.dtype) -> bool:
    try:
        pa.from_numpy_dtype(dtype)
    except (pa.ArrowNotImplementedError, NotImplementedError, TypeError):
        return False
    return True


def dtype_of(leaf: dict) -> np.dtype:
    """The leaf's numpy dtype, including JAX's ``ml_dtypes`` (bfloat16, float8, ...)."""
    try:
        return np.dtype(leaf["dtype"])
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, leaf["dtype"]))


def _stored_shape(leaf: dict) -> tuple[int, ...]:
    return tuple(leaf["shape"]) + ((2,) if leaf["encoding"] == "complex" else ())


def _stored_dtype(leaf: dict) -> np.dtype:
    dtype = dtype_of(leaf)
    if leaf["encoding"] == "complex":
        return np.finfo(dtype).dtype
    if leaf["encoding"] == "bits":
        return np.dtype(_BITS[dtype.itemsize])
    return dtype


def leaf_field(leaf: dict) -> pa.Field:
    """The column of a stored leaf: ``arrow.fixed_shape_tensor`` of its stored value type."""
    type_ = pa.fixed_shape_tensor(pa.from_numpy_dtype(_stored_dtype(leaf)), _stored_shape(leaf))
    return pa.field(leaf["column"], type_, nullable=False)


def to_array(rows: np.ndarray, leaf: dict, type_: pa.DataType) -> pa.Array:
    """``(m, *shape)`` rows of one leaf -> a tensor array; no copy when C-contiguous. (Built
    from storage: pyarrow's ``from_numpy_ndarray`` refuses shape ``()``.)"""
    rows = np.ascontiguousarray(rows).view(_stored_dtype(leaf))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)),
                                                math.prod(type_.shape))
    return pa.ExtensionArray.from_storage(type_, storage)


def stored_values(array: pa.Array, leaf: dict) -> np.ndarray:
    """A tensor array -> its stored values ``(m, *stored shape)``, a zero-copy view."""
    values = array.storage.flatten().to_numpy(zero_copy_only=True)
    return values.reshape((len(array),) + _stored_shape(leaf))


def _empty_stored(leaf: dict, n: int) -> np.ndarray:
    if leaf["column"] is None:
        return np.empty((n, 0))
    return np.empty((n,) + _stored_shape(leaf), _stored_dtype(leaf))


def decode(values: np.ndarray, leaf: dict) -> np.ndarray:
    """Stored values -> rows of the leaf's dtype and shape (a view); zeros for empty leaves."""
    if leaf["encoding"] == "empty":
        return np.zeros((len(values), *leaf["shape"]), dtype_of(leaf))
    if leaf["encoding"] == "complex":
        return np.ascontiguousarray(values).view(dtype_of(leaf))[..., 0]
    return values.view(dtype_of(leaf))


def read_tree(batch: pa.RecordBatch | None, part: dict | None) -> Any:
    """The value or aux pytree described by ``part`` from the one-row ``batch``."""
    if part is None:
        return None
    leaves = [decode(_one_row(batch, leaf), leaf)[0, ...] for leaf in part["leaves"]]
    return jax.tree_util.tree_unflatten(treedef_from_json(part["tree"]), leaves)


def _one_row(batch: pa.RecordBatch | None, leaf: dict) -> np.ndarray:
    if leaf["column"] is None:
        return np.empty((1, 0))
    return stored_values(batch.column(leaf["column"]), leaf)


# ------------------------------------------------------------ the Jacobian table: one row a column

INDEX = (("flat_index", pa.int64()), ("input_leaf", pa.int32()), ("input_index", pa.int64()))


def describe_layout(layout: Layout) -> dict:
    """The JSON description of a ``Layout``: its input leaves, output leaf specs and trees."""
    basis = layout.basis
    inputs = [{"path": p, "shape": list(s), "dtype": np.dtype(d).name, "offset": o, "size": n}
              for p, s, d, o, n in zip(leaf_paths(layout.in_tree), basis.shapes,
                                       basis.dtypes, basis.offsets, basis.sizes)]
    outputs = [describe_leaf(f"out_{k}", p, s, d, "output")
               for k, (p, s, d) in enumerate(zip(leaf_paths(layout.out_tree),
                                                 layout.out_shapes, layout.out_dtypes))]
    return {"columns": basis.n, "inputs": inputs, "outputs": outputs,
            "in_tree": treedef_to_json(layout.in_tree, "input structure"),
            "out_tree": treedef_to_json(layout.out_tree, "output")}


def layout_from_json(jac: dict) -> Layout:
    """Inverse of ``describe_layout``."""
    shapes = lambda leaves: tuple(tuple(x["shape"]) for x in leaves)  # noqa: E731
    dtypes = lambda leaves: tuple(dtype_of(x) for x in leaves)  # noqa: E731
    return Layout(TangentBasis(shapes(jac["inputs"]), dtypes(jac["inputs"])),
                  treedef_from_json(jac["in_tree"]), treedef_from_json(jac["out_tree"]),
                  shapes(jac["outputs"]), dtypes(jac["outputs"]))


def table_schema(leaves: list[dict], metadata: dict[str, str], index: bool) -> pa.Schema:
    """The schema of a table of leaves (with the ``INDEX`` columns first for the Jacobian)."""
    fields = [pa.field(name, type_, nullable=False) for name, type_ in INDEX] if index else []
    fields += [leaf_field(leaf) for leaf in leaves if leaf["column"]]
    return pa.schema(fields, metadata=metadata)


def shard_batch(schema: pa.Schema, layout: Layout, outputs: list[dict], covered: np.ndarray,
                start: int, rows: list) -> pa.RecordBatch:
    """One shard's rows of J^T as a record batch, after checking them against the layout."""
    length = _check_shard(layout, covered, start, rows)
    covered[start:start + length] = True
    cols = np.arange(start, start + length, dtype=np.int64)
    leaf = np.searchsorted(np.cumsum(layout.basis.sizes), cols, side="right").astype(np.int32)
    index = cols - np.asarray(layout.basis.offsets, dtype=np.int64)[leaf]
    arrays = [pa.array(cols), pa.array(leaf), pa.array(index)]
    arrays += [to_array(r, o, schema.field(o["column"]).type)
               for r, o in zip(rows, outputs) if o["column"]]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _check_shard(layout: Layout, covered: np.ndarray, start: int, rows: list) -> int:
    length = len(rows[0]) if len(rows) else 0
    got = [(tuple(np.shape(r)), np.dtype(r.dtype).name) for r in rows]
    want = [((length, *s), np.dtype(d).name) for s, d in zip(layout.out_shapes,
                                                             layout.out_dtypes)]
    if got != want:
        raise ValueError(f"The shard at column {start} has rows (shape, dtype) {got}; expected "
                         f"{want}, one array per output leaf.")
    if not 0 <= start <= start + length <= covered.size or covered[start:start + length].any():
        raise ValueError(f"The shard of columns [{start}, {start + length}) overlaps another "
                         f"shard or lies outside the {covered.size} tangent columns.")
    return length


def tree_batch(schema: pa.Schema, leaves: list[dict], trees: list[Any]) -> pa.RecordBatch | None:
    """The one-row batch of the value and aux leaves (``None`` when no leaf has a column)."""
    arrays = [np.asarray(x) for tree in trees if tree is not None
              for x in jax.tree_util.tree_leaves(tree)]
    columns = [to_array(x[None], leaf, schema.field(leaf["column"]).type)
               for x, leaf in zip(arrays, leaves) if leaf["column"]]
    return pa.RecordBatch.from_arrays(columns, schema=schema) if columns else None


def read_rows(table: pa.Table, jac: dict) -> list[np.ndarray]:
    """Rows of J^T in column order: views of the file when it holds one ordered batch."""
    n, outputs = jac["columns"], jac["outputs"]
    batches = table.to_batches()
    if len(batches) == 1 and _is_arange(batches[0].column("flat_index"), n):
        stored = [_stored(batches[0], leaf, n) for leaf in outputs]
    else:
        stored = _gather(batches, outputs, n)
    rows = [decode(values, leaf) for values, leaf in zip(stored, outputs)]
    for r in rows:  # as the zero-copy views of a memory-mapped file are
        r.flags.writeable = False
    return rows


def _stored(batch: pa.RecordBatch, leaf: dict, n: int) -> np.ndarray:
    if leaf["column"] is None:
        return np.empty((n, 0))
    return stored_values(batch.column(leaf["column"]), leaf)


def _gather(batches: list[pa.RecordBatch], outputs: list[dict], n: int) -> list[np.ndarray]:
    """Scatters the rows of batches in any order into place, by their ``column``."""
    stored = [_empty_stored(leaf, n) for leaf in outputs]
    seen = np.zeros(n, dtype=np.int64)
    for batch in batches:
        cols = batch.column("flat_index").to_numpy()
        np.add.at(seen, cols, 1)
        for dst, leaf in zip(stored, outputs):
            if leaf["column"]:
                dst[cols] = stored_values(batch.column(leaf["column"]), leaf)
    if not (seen == 1).all():
        raise ValueError(f"its rows cover {int((seen > 0).sum())} of the {n} tangent columns "
                         f"({int((seen > 1).sum())} more than once)")
    return stored


def _is_arange(column: pa.Array, n: int) -> bool:
    return len(column) == n and np.array_equal(column.to_numpy(), np.arange(n))
