"""Element-wise rules: output element i depends on element i of each operand (broadcast)."""

from __future__ import annotations

import math

import numpy as np

from ._deps import Val, ids, take, union


def broadcast(v: Val, shape: tuple[int, ...]):
    """The operand's rows for each element of a result of ``shape`` (numpy broadcasting)."""
    if v.deps is None or v.shape == tuple(shape):
        return v.deps
    if v.size == 1:
        return take(v.deps, np.zeros(math.prod(shape), dtype=np.int64))
    return take(v.deps, np.broadcast_to(ids(v.shape), shape))


def _result(eqn, deps, i: int = 0) -> Val:
    aval = eqn.outvars[i].aval
    return Val(aval.shape, aval.dtype, deps)


def unary(ctx, eqn, args):
    """One operand, same shape, non-zero derivative."""
    if tuple(eqn.outvars[0].aval.shape) != args[0].shape:
        return ctx.fallback(eqn, args)  # e.g. a bitcast that changes the element width
    return [_result(eqn, args[0].deps)]


def zero(ctx, eqn, args):
    """Piecewise-constant or integer results: no dependencies at all."""
    return [_result(eqn, None, i) for i in range(len(eqn.outvars))]


def same_shapes(ctx, eqn, args):
    """Identity on each operand (barriers, sharding annotations)."""
    return [_result(eqn, a.deps, i) for i, a in enumerate(args)]


def nary(ctx, eqn, args):
    """Union over all operands."""
    shape = tuple(eqn.outvars[0].aval.shape)
    return [_result(eqn, union(broadcast(a, shape) for a in args))]


def _pruned(ctx, v: Val, other: Val, shape):
    """``v``'s rows, empty where the other factor is a known zero."""
    deps = broadcast(v, shape)
    if deps is None or other.value is None:
        return deps
    nonzero = np.broadcast_to(ctx.nonzero(other), shape).ravel()
    if nonzero.all():
        return deps
    return take(deps, np.where(nonzero, np.arange(nonzero.size), -1))


def mul(ctx, eqn, args):
    """d(xy) = y dx + x dy: a known zero factor removes the other's dependencies."""
    x, y = args
    shape = tuple(eqn.outvars[0].aval.shape)
    return [_result(eqn, union([_pruned(ctx, x, y, shape), _pruned(ctx, y, x, shape)]))]


def div(ctx, eqn, args):
    """d(x/y) = dx/y - x dy/y^2: a known zero numerator removes the divisor's dependencies."""
    x, y = args
    shape = tuple(eqn.outvars[0].aval.shape)
    return [_result(eqn, union([broadcast(x, shape), _pruned(ctx, y, x, shape)]))]


def integer_pow(ctx, eqn, args):
    """x**0 is constant; any other power keeps the element's dependencies."""
    return zero(ctx, eqn, args) if eqn.params["y"] == 0 else unary(ctx, eqn, args)


def select_n(ctx, eqn, args):
    """Each element is one of the cases: the chosen one when the predicate is known."""
    pred, cases = args[0], args[1:]
    shape = tuple(eqn.outvars[0].aval.shape)
    if pred.value is None:
        return [_result(eqn, union(broadcast(c, shape) for c in cases))]
    which = np.broadcast_to(ctx.value(pred), shape).ravel().astype(np.int64)
    at = np.arange(which.size)
    parts = [take(broadcast(c, shape), np.where(which == k, at, -1))
             for k, c in enumerate(cases) if c.deps is not None]
    return [_result(eqn, union(parts))]
