"""Layout rules: each output element is a copy of one input element (or a fill).

The rule computes, for every output element, the number of the element it reads (-1: none),
by applying the layout to an array of element numbers, then gathers those rows.
"""

from __future__ import annotations

import numpy as np

from ._deps import Val, bind, ids, stack, take


def numbered(n: int, args) -> tuple[list[np.ndarray], object]:
    """Element numbers of the operands in one id space (-1 for those with no dependencies)
    and their rows stacked in that order."""
    arrays, parts, offset = [], [], 0
    for a in args:
        if a.deps is None:
            arrays.append(np.full(a.shape, -1, dtype=np.int64))
            continue
        arrays.append(ids(a.shape) + offset)
        parts.append((a.deps, a.size))
        offset += a.size
    return arrays, stack(parts, n)


def _results(eqn, deps, sources) -> list[Val]:
    return [Val(v.aval.shape, v.aval.dtype, take(deps, s)) for v, s in zip(eqn.outvars, sources)]


def keep_order(ctx, eqn, args):
    """Row-major order is unchanged (reshape, squeeze, expand_dims)."""
    x = args[0]
    dims = eqn.params.get("dimensions") if eqn.primitive.name == "reshape" else None
    deps = x.deps if dims is None else take(x.deps, ids(x.shape).transpose(dims))
    return _results(eqn, deps, [np.arange(x.size)])


def transpose(ctx, eqn, args):
    """Permuted axes."""
    x = args[0]
    return _results(eqn, x.deps, [ids(x.shape).transpose(eqn.params["permutation"])])


def broadcast_in_dim(ctx, eqn, args):
    """Operand axes placed at ``broadcast_dimensions``, the others repeated."""
    x, shape = args[0], eqn.params["shape"]
    expanded = [1] * len(shape)
    for axis, dim in zip(eqn.params["broadcast_dimensions"], x.shape):
        expanded[axis] = dim
    return _results(eqn, x.deps, [np.broadcast_to(ids(x.shape).reshape(expanded), shape)])


def rev(ctx, eqn, args):
    """Reversed axes."""
    x = args[0]
    return _results(eqn, x.deps, [np.flip(ids(x.shape), eqn.params["dimensions"])])


def slice_(ctx, eqn, args):
    """A strided box of the operand."""
    x, p = args[0], eqn.params
    strides = p["strides"] or (1,) * len(x.shape)
    box = tuple(slice(lo, hi, st) for lo, hi, st in
                zip(p["start_indices"], p["limit_indices"], strides))
    return _results(eqn, x.deps, [ids(x.shape)[box]])


def concatenate(ctx, eqn, args):
    """Operands one after another along ``dimension``."""
    arrays, deps = numbered(ctx.n, args)
    return _results(eqn, deps, [np.concatenate(arrays, axis=eqn.params["dimension"])])


def split(ctx, eqn, args):
    """Consecutive pieces along ``axis``."""
    x, p = args[0], eqn.params
    cuts = np.cumsum([int(s) for s in p["sizes"]])[:-1]
    return _results(eqn, x.deps, np.split(ids(x.shape), cuts, axis=p["axis"]))


def pad(ctx, eqn, args):
    """Low, high (either may be negative) and interior padding with the padding value."""
    (operand, fill), deps = numbered(ctx.n, args)
    out = operand
    for axis, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        out = _pad_axis(out, axis, lo, hi, interior, fill.item())
    return _results(eqn, deps, [out])


def _pad_axis(a: np.ndarray, axis: int, lo: int, hi: int, interior: int, fill: int):
    """numpy's view of ``lax.pad`` along one axis."""
    length = a.shape[axis]
    core = length + max(length - 1, 0) * interior
    shape = list(a.shape)
    shape[axis] = max(lo, 0) + core + max(hi, 0)
    out = np.full(shape, fill, dtype=a.dtype)
    box = [slice(None)] * a.ndim
    box[axis] = slice(max(lo, 0), max(lo, 0) + core, interior + 1)
    out[tuple(box)] = a
    box[axis] = slice(max(-lo, 0), shape[axis] - max(-hi, 0))
    return out[tuple(box)]


def by_ids(ctx, eqn, args):
    """Any layout primitive, applied by JAX itself to the element numbers (stack, tile)."""
    arrays, deps = numbered(ctx.n, args)
    dtype = np.int32 if sum(a.size for a in args) < 2**31 - 1 else np.int64
    outs = bind(eqn.primitive, eqn.params, [a.astype(dtype) for a in arrays])
    return _results(eqn, deps, [np.asarray(o) for o in outs])
