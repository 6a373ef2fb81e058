"""Indexing rules: gather, scatter, dynamic_slice, dynamic_update_slice.

With known indices the element map is exact (JAX's own gather, applied to element numbers).
An unknown index may point anywhere along the axes it indexes, so those axes are collapsed
(their elements united) and the map is taken with index 0 along them.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.lax import GatherDimensionNumbers, GatherScatterMode

from ._deps import Val, bind, group, ids, take, union
from ._layout import numbered


def _collapse(x: Val, axes) -> tuple[np.ndarray, object, int]:
    """Group numbers (shape ``x.shape``) that ignore ``axes``, the rows of each group and
    the number of groups."""
    if not axes:
        return ids(x.shape), x.deps, x.size
    reduced = [1 if a in axes else d for a, d in enumerate(x.shape)]
    groups = np.broadcast_to(ids(reduced), x.shape)
    count = math.prod(reduced)
    return groups, group(x.deps, groups, count), count


def _int32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32 if a.size < 2**31 - 1 else np.int64)


def _result(eqn, deps) -> list[Val]:
    aval = eqn.outvars[0].aval
    return [Val(aval.shape, aval.dtype, deps)]


def gather(ctx, eqn, args):
    """``x[idx]`` and friends; out-of-bounds fills read nothing."""
    x, indices, p = args[0], args[1], eqn.params
    where = ctx.value(indices)
    axes = () if where is not None else p["dimension_numbers"].start_index_map
    groups, deps, _ = _collapse(x, axes)
    where = where if where is not None else np.zeros(indices.shape, np.int32)
    src = bind(eqn.primitive, dict(p, fill_value=-1), [_int32(groups), where])[0]
    return _result(eqn, take(deps, np.asarray(src)))


def _targets(params, operand: np.ndarray, indices: np.ndarray, updates_shape) -> np.ndarray:
    """For every update element, the operand element it lands on (-1: dropped).

    This is the gather that transposes the scatter (as in JAX's scatter-add transpose rule).
    """
    dn = params["dimension_numbers"]
    gdn = GatherDimensionNumbers(
        offset_dims=dn.update_window_dims, collapsed_slice_dims=dn.inserted_window_dims,
        start_index_map=dn.scatter_dims_to_operand_dims,
        operand_batching_dims=dn.operand_batching_dims,
        start_indices_batching_dims=dn.scatter_indices_batching_dims)
    window = iter(updates_shape[d] for d in dn.update_window_dims)
    sizes = [1 if i in dn.inserted_window_dims or i in dn.operand_batching_dims else next(window)
             for i in range(operand.ndim)]
    # Out-of-bounds scatter windows are dropped unless the mode clamps them.
    mode = GatherScatterMode.CLIP if params["mode"] == GatherScatterMode.CLIP \
        else GatherScatterMode.FILL_OR_DROP
    with jax.ensure_compile_time_eval():
        out = jax.lax.gather(operand, indices, gdn, tuple(sizes), mode=mode, fill_value=-1)
    return np.asarray(out).ravel()


def scatter(ctx, eqn, args):
    """Updates land on their targets; a plain scatter (no combining) drops the operand
    element where an update surely lands."""
    x, indices, updates = args[:3]
    where = ctx.value(indices)
    known = where is not None
    axes = () if known else eqn.params["dimension_numbers"].scatter_dims_to_operand_dims
    groups, _, count = _collapse(Val(x.shape, x.dtype), axes)
    where = where if known else np.zeros(indices.shape, np.int32)
    targets = _targets(eqn.params, _int32(groups), where, updates.shape)
    landed = group(updates.deps, targets, count)
    kept = x.deps
    if eqn.primitive.name == "scatter" and known and kept is not None:
        hit = np.zeros(x.size, dtype=bool)
        hit[targets[targets >= 0]] = True
        kept = take(kept, np.where(hit, -1, np.arange(x.size)))
    return _result(eqn, union([kept, take(landed, groups)]))


def _starts(ctx, starts, shape, sizes) -> tuple[list, list]:
    """Clamped start of each axis (0 where unknown) and the axes whose start is unknown."""
    first, unknown = [], []
    for axis, (s, dim, size) in enumerate(zip(starts, shape, sizes)):
        value = ctx.value(s)
        if value is None:
            unknown.append(axis)
            first.append(0)
        else:
            first.append(int(np.clip(int(value), 0, dim - size)))
    return first, unknown


def dynamic_slice(ctx, eqn, args):
    """A box at (clamped) start indices; unknown starts unite the whole axis."""
    x, sizes = args[0], eqn.params["slice_sizes"]
    first, unknown = _starts(ctx, args[1:], x.shape, sizes)
    groups, deps, _ = _collapse(x, unknown)
    box = tuple(slice(f, f + s) for f, s in zip(first, sizes))
    return _result(eqn, take(deps, groups[box]))


def dynamic_update_slice(ctx, eqn, args):
    """The update overwrites a box; with an unknown start it may land anywhere on that axis."""
    x, update = args[0], args[1]
    first, unknown = _starts(ctx, args[2:], x.shape, update.shape)
    if not unknown:
        (src, upd), deps = numbered(ctx.n, [x, update])
        src = src.copy()
        src[tuple(slice(f, f + s) for f, s in zip(first, update.shape))] = upd
        return _result(eqn, take(deps, src))
    groups, deps, _ = _collapse(update, unknown)
    box = tuple(slice(None) if a in unknown else slice(f, f + s)
                for a, (f, s) in enumerate(zip(first, update.shape)))
    one = tuple(slice(0, 1) if a in unknown else slice(None) for a in range(len(x.shape)))
    src = np.full(x.shape, -1, dtype=np.int64)
    src[box] = np.broadcast_to(groups[one], src[box].shape)
    return _result(eqn, union([x.deps, take(deps, src)]))
