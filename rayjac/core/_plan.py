"""The decompression plan of a sparse call: where each entry of a ``Sparsity`` lives in the
Jacobian blocks of a ``Layout`` and how to recover it from the compressed JVPs (one per colour);
and the pattern of one call signature, detected or given."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Iterable, NamedTuple

import numpy as np

from ..sparsity import Sparsity, detect
from ..sparsity._pattern import coerce, warn_if_dense
from ._basis import Layout


class SparseShard(NamedTuple):
    """The nonzeros of colours ``[start, stop)``: per output leaf, in ``positions`` order."""

    start: int
    stop: int
    values: list[np.ndarray]


def gather_values(plan: SparsePlan, shards: Iterable[SparseShard]) -> list[np.ndarray]:
    """Every output leaf's nonzeros (plan order), from shards in any order."""
    layout = plan.layout
    values = [np.empty(rows.size, dtype) for rows, dtype in zip(plan.rows, layout.out_dtypes)]
    for shard in shards:
        for k, part in enumerate(shard.values):
            values[k][plan.positions(k, shard.start, shard.stop)] = part
    return values


@dataclasses.dataclass(frozen=True, eq=False)
class SparsePlan:
    """Where each entry of a ``Sparsity`` lives in the blocks of a ``Layout``, and how to
    recover it from the compressed JVPs: entry ``e`` of output leaf ``k`` is row ``rows[k][e]``
    of the JVP of colour ``colors[k][e]``. Entries of leaf ``k`` are ordered by input leaf
    (``spans[k][i]`` is the range of block ``(k, i)``), then row, then column."""

    pattern: Sparsity
    layout: Layout
    rows: tuple[np.ndarray, ...]    # per output leaf: flat row within the leaf
    cols: tuple[np.ndarray, ...]    # per output leaf: flat column within the input leaf
    colors: tuple[np.ndarray, ...]  # per output leaf: colour of the entry's column
    spans: tuple[tuple[tuple[int, int], ...], ...]
    entries: tuple[np.ndarray, ...]  # per output leaf: the entry's index in ``pattern``

    @classmethod
    def build(cls, pattern: Sparsity, layout: Layout) -> SparsePlan:
        row_offsets = np.cumsum([0] + [int(np.prod(s)) for s in layout.out_shapes])
        col_offsets = np.asarray(layout.basis.offsets + (layout.basis.n,))
        leaf_of_col = np.searchsorted(col_offsets, pattern.cols, side="right") - 1
        rows, cols, colors, spans, entries = [], [], [], [], []
        for k in range(len(layout.out_shapes)):
            lo, hi = np.searchsorted(pattern.rows, row_offsets[k:k + 2])
            order = lo + np.argsort(leaf_of_col[lo:hi], kind="stable")
            leaves = leaf_of_col[order]
            entries.append(order)
            rows.append(pattern.rows[order] - row_offsets[k])
            cols.append(pattern.cols[order] - col_offsets[leaves])
            colors.append(pattern.colors[pattern.cols[order]])
            bounds = np.searchsorted(leaves, np.arange(len(layout.basis.sizes) + 1))
            spans.append(tuple(zip(bounds[:-1].tolist(), bounds[1:].tolist())))
        return cls(pattern, layout, tuple(rows), tuple(cols), tuple(colors), tuple(spans),
                   tuple(entries))

    @property
    def num_colors(self) -> int:
        return self.pattern.num_colors

    @functools.cached_property
    def by_color(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per output leaf: its entries sorted by colour, and where each colour's run starts."""
        out = []
        for colors in self.colors:
            order = np.argsort(colors, kind="stable")
            starts = np.searchsorted(colors[order], np.arange(self.num_colors + 1))
            out.append((order, starts))
        return tuple(out)

    def positions(self, k: int, start: int, stop: int) -> np.ndarray:
        """The entries of output leaf ``k`` whose colour is in ``[start, stop)``."""
        order, starts = self.by_color[k]
        return order[starts[start]:starts[stop]]

    def decompress(self, compressed: list[np.ndarray], start: int) -> list[np.ndarray]:
        """The values of the entries of colours ``[start, start + len)`` (in ``positions``
        order) from the compressed rows of those colours (``(len, *out_shape)`` per leaf)."""
        stop = start + compressed[0].shape[0]
        out = []
        for k, block in enumerate(compressed):
            pos = self.positions(k, start, stop)
            flat = block.reshape(block.shape[0], -1)
            out.append(flat[self.colors[k][pos] - start, self.rows[k][pos]])
        return out

    def indices(self, k: int, i: int) -> np.ndarray:
        """The N-D BCOO indices of block ``(k, i)`` (output dims, then input dims)."""
        lo, hi = self.spans[k][i]
        out_shape, in_shape = self.layout.out_shapes[k], self.layout.basis.shapes[i]
        parts = (np.unravel_index(self.rows[k][lo:hi], out_shape) if out_shape else ()) + (
            np.unravel_index(self.cols[k][lo:hi], in_shape) if in_shape else ())
        return np.stack(parts, axis=-1).astype(np.int32) if parts else np.zeros(
            (hi - lo, 0), np.int32)


def detect_pattern(program: Any, diff: list, const: list, state: list) -> Sparsity:
    """The global pattern of the flat Jacobian that ``program``'s kernels compute, read from
    the jaxpr of exactly that function (only the differentiated leaves seeded)."""
    import jax

    spec = lambda x: jax.ShapeDtypeStruct(  # noqa: E731
        x.shape, x.dtype, weak_type=bool(getattr(x, "weak_type", False)))
    begin = time.perf_counter()
    outputs = lambda d, c, s: jax.tree_util.tree_leaves(program.pure(d, c, s)[0])  # noqa
    jaxpr = jax.make_jaxpr(outputs)(*jax.tree_util.tree_map(spec, (diff, const, state)))
    found = detect(jaxpr, [True] * len(diff) + [False] * (len(const) + len(state))).tocoo()
    detect_s = time.perf_counter() - begin
    pattern = Sparsity(found.row, found.col, found.shape)
    pattern.times = {"detect_s": detect_s, **pattern.times}
    return pattern


def make_plan(program: Any, option: Any, diff: list, const: list, state: list) -> SparsePlan:
    """The decompression plan of one call signature: the detected (``"auto"``) or given
    pattern, coloured, laid out over the blocks of ``program.layout``."""
    layout = program.layout
    shape = (sum(math.prod(s) for s in layout.out_shapes), layout.basis.n)
    if isinstance(option, str):
        pattern = detect_pattern(program, diff, const, state)
    else:
        pattern = coerce(option, shape)
    warn_if_dense(pattern)
    return SparsePlan.build(pattern, layout)
