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

from ..sparsity import Sparsity
from ..sparsity._detect import detect_reads
from ..sparsity._pattern import coerce, saves_little, warn_if_dense
from ._basis import Layout
from ._constants import Watch, concrete
from ._diagnose import blind_spots
from ._products import SparseInput, holds, sparse_inputs


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
    # Read-only matrices (by index in ``state``) whose products run on their nonzeros
    products: dict[int, SparseInput] = dataclasses.field(default_factory=dict)

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
            flat = block.reshape(block.shape[0], math.prod(block.shape[1:]))  # also size 0
            out.append(flat[self.colors[k][pos] - start, self.rows[k][pos]])
        return out

    def flat_rows(self, k: int) -> np.ndarray | None:
        """Where each entry of output leaf ``k`` is in its compressed columns flattened to one
        axis (``row * colours + colour``), int32; None when that does not fit int32."""
        size = math.prod(self.layout.out_shapes[k])
        if self.num_colors * size >= 2**31:
            return None
        return (self.rows[k].astype(np.int64) * self.num_colors + self.colors[k]).astype(
            np.int32)

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
    the jaxpr of exactly that function (only the differentiated leaves seeded).

    The values of the Variables that ``func`` reads but neither differentiates nor writes are
    constants of the call, as closure constants are: their zeros prune entries. The pattern
    carries what it read of them (``pattern._watch``, see ``refresh``)."""
    return _pattern(_detect(program, diff, const, state))


def _pattern(found: _Found) -> Sparsity:
    pattern = Sparsity(found.rows, found.cols, found.shape)
    pattern.times = {"detect_s": found.seconds, **pattern.times}
    pattern._watch = found.watch
    return pattern


class _Found(NamedTuple):
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    watch: Watch
    seconds: float
    jaxpr: Any
    known: list


def _read_only(program: Any) -> list[int]:
    written = set(program.written)
    return [i for i, v in enumerate(program.other_vars) if v not in written]


def _detect(program: Any, diff: list, const: list, state: list) -> _Found:
    import jax

    spec = lambda x: jax.ShapeDtypeStruct(  # noqa: E731
        x.shape, x.dtype, weak_type=bool(getattr(x, "weak_type", False)))
    begin = time.perf_counter()
    outputs = lambda d, c, s: jax.tree_util.tree_leaves(program.pure(d, c, s)[0])  # noqa
    with jax.ensure_compile_time_eval():  # concrete, also when an outer jit traces the call
        jaxpr = jax.make_jaxpr(outputs)(*jax.tree_util.tree_map(spec, (diff, const, state)))
        read_only, offset = _read_only(program), len(diff) + len(const)
        known = [None] * offset + [np.asarray(x) if i in read_only and concrete(x) else None
                                   for i, x in enumerate(state)]
        seeded = [True] * len(diff) + [False] * (len(const) + len(state))
        found, reads = detect_reads(jaxpr, seeded, known)
    found = found.tocoo()
    shift = lambda ids: frozenset(i - offset for i in ids)  # noqa: E731
    watch = Watch.build(program.other_vars, state, read_only, shift(reads.values),
                        shift(reads.masks))
    return _Found(found.row, found.col, found.shape, watch, time.perf_counter() - begin,
                  jaxpr, known)


def make_plan(program: Any, option: Any, diff: list, const: list, state: list) -> SparsePlan:
    """The decompression plan of one call signature: the detected (``"auto"``) or given
    pattern, coloured, laid out over the blocks of ``program.layout``. Detection and
    colouring run on concrete values, also when an outer ``jax.jit`` traces the call."""
    import jax

    layout = program.layout
    shape = (sum(math.prod(s) for s in layout.out_shapes), layout.basis.n)
    with jax.ensure_compile_time_eval():
        if isinstance(option, str):
            return _plan_detected(program, _detect(program, diff, const, state), diff, const,
                                  state)
        pattern = coerce(option, shape)
        warn_if_dense(pattern)
        return SparsePlan.build(pattern, layout)


def _plan_detected(program: Any, found: _Found, diff: list, const: list,
                   state: list) -> SparsePlan:
    pattern = _pattern(found)
    causes, better = ((), None)
    if saves_little(pattern):
        causes, better = blind_spots(program, found, diff, const, state, pattern.num_colors)
    warn_if_dense(pattern, causes, better)
    return dataclasses.replace(SparsePlan.build(pattern, program.layout),
                               products=sparse_inputs(found.watch, state))


def refresh(program: Any, option: Any, diff: list, const: list, state: list) -> Any:
    """``program``, or a copy with its pattern detected again when a read-only Variable it
    read was assigned a value that the pattern may not hold for (``Watch.changed``: one stamp
    comparison per such Variable when none was assigned). A dense program forgets its
    ``jf.sparsity`` pattern instead; a given pattern is kept.

    The last program per set of read-only Variables unknown to detection is kept
    (``program.variants``), so calls that alternate between a map over a Variable's values
    (unknown) and plain calls (known) detect each pattern once, not at every switch."""
    pattern = program.plan.pattern if program.plan is not None else program.dense_pattern
    watch = getattr(pattern, "_watch", None)
    if watch is None or not watch.changed(program.other_vars, state):
        return program
    if program.plan is None:
        program.dense_pattern = None
        return program
    unknown = frozenset(i for i in _read_only(program) if not concrete(state[i]))
    program.variants[frozenset(watch.unknown)] = program
    kept = program.variants.get(unknown, program)
    if kept is not program and not kept.plan.pattern._watch.changed(kept.other_vars, state):
        return kept
    import jax

    with jax.ensure_compile_time_eval():
        found = _detect(program, diff, const, state)
        if np.array_equal(found.rows, pattern.rows) and np.array_equal(found.cols,
                                                                        pattern.cols):
            pattern._watch = found.watch  # the same pattern: keep the compiled program,
            if holds(program.plan.products, state):  # unless its matrices' zeros moved
                return program
            plan = dataclasses.replace(program.plan,
                                       products=sparse_inputs(found.watch, state))
        else:
            plan = _plan_detected(program, found, diff, const, state)
        new = dataclasses.replace(program, plan=plan)
    program.variants[unknown] = new
    return new
