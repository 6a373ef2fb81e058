"""Reductions: an output element depends on every element of its group (reduced axes, prefix,
sorted line, window)."""

from __future__ import annotations

import math

import numpy as np

from ._contract import window_table
from ._deps import Val, everything, group, ids, repeat, spread, take, union


def _collapsed(shape, axes) -> tuple[np.ndarray, tuple[int, ...]]:
    """Group number of each element when ``axes`` are reduced, and the reduced shape (1s)."""
    kept = tuple(1 if a in axes else d for a, d in enumerate(shape))
    return np.broadcast_to(ids(kept), shape), kept


def united(x: Val, axes, out_shape):
    """Rows for ``out_shape``: each the union of ``x`` along ``axes`` (broadcast back)."""
    groups, kept = _collapsed(x.shape, axes)
    rows = group(x.deps, groups, math.prod(kept))
    return take(rows, np.broadcast_to(ids(kept), out_shape))


def _grouped(x: Val, axes):
    """One row per element of the reduced array."""
    if not axes:
        return x.deps
    groups, kept = _collapsed(x.shape, axes)
    return group(x.deps, groups, math.prod(kept))


def _results(eqn, deps) -> list[Val]:
    return [Val(v.aval.shape, v.aval.dtype, deps) for v in eqn.outvars]


def reduce(ctx, eqn, args):
    """``reduce_*`` and the generic ``reduce`` (all its outputs get all operands' groups)."""
    p, k = eqn.params, len(eqn.outvars)
    axes = tuple(p["axes"] if "axes" in p else p["dimensions"])
    operands, inits = args[:k], args[k:]
    size = math.prod(eqn.outvars[0].aval.shape)
    parts = [_grouped(x, axes) for x in operands]
    parts.append(repeat(everything(inits, ctx.n), size))
    return _results(eqn, union(parts))


def cumulative(ctx, eqn, args):
    """Prefix (or suffix, ``reverse``) unions along ``axis``."""
    x, p = args[0], eqn.params
    return _results(eqn, prefix_union(x.deps, x.shape, p["axis"], p["reverse"]))


def prefix_union(deps, shape, axis: int, reverse: bool = False):
    """Rows of an array of ``shape`` whose element ``i`` along ``axis`` unites the elements
    ``<= i`` (``>= i`` with ``reverse``) of its line."""
    length = shape[axis]
    lines = np.moveaxis(ids(shape), axis, -1).reshape(-1, length)
    order = (lines[:, ::-1] if reverse else lines).ravel()
    deps = take(deps, order)  # row k of line l is element k of that line, in scan order
    at = np.tile(np.arange(length), len(lines))
    shift = 1
    while shift < length:  # doubling: log2(length) unions instead of length**2 / 2 pairs
        deps = union([deps, take(deps, np.where(at >= shift, np.arange(len(at)) - shift, -1))])
        shift *= 2
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return take(deps, back)


def sort(ctx, eqn, args):
    """Each output is its operand permuted along ``dimension`` by a value-dependent order."""
    axis = eqn.params["dimension"]
    return [Val(v.aval.shape, v.aval.dtype, united(x, (axis,), x.shape))
            for x, v in zip(args, eqn.outvars)]


def top_k(ctx, eqn, args):
    """The k largest along the axis: any element of the line may be among them."""
    x, aval = args[0], eqn.outvars[0].aval
    axis = eqn.params.get("axis", len(x.shape) - 1)
    axis = axis % len(x.shape)
    return [Val(aval.shape, aval.dtype, united(x, (axis,), aval.shape)),
            Val(eqn.outvars[1].aval.shape, eqn.outvars[1].aval.dtype)]


def fft(ctx, eqn, args):
    """Transforms mix every element of the trailing ``len(fft_lengths)`` axes."""
    x, aval = args[0], eqn.outvars[0].aval
    axes = tuple(range(len(x.shape) - len(eqn.params["fft_lengths"]), len(x.shape)))
    return [Val(aval.shape, aval.dtype, united(x, axes, aval.shape))]


def reduce_window(ctx, eqn, args):
    """Each output unites its window (windowed sums, maxima, the generic form)."""
    p, k = eqn.params, len(eqn.outvars)
    operands, inits = args[:k], args[k:]
    out_shape = eqn.outvars[0].aval.shape
    rank = len(out_shape)
    table = window_table(operands[0].shape, out_shape, p["window_dimensions"],
                         p["window_strides"], p["padding"], p["base_dilation"] or (1,) * rank,
                         p["window_dilation"] or (1,) * rank)
    out_rows = np.repeat(np.arange(table.shape[0]), table.shape[1])
    src, ok = table.ravel(), table.ravel() >= 0
    parts = [spread(x.deps, out_rows[ok], src[ok], table.shape[0]) for x in operands]
    parts.append(repeat(everything(inits, ctx.n), table.shape[0]))
    return _results(eqn, union(parts))
