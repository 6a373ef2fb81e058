"""Contractions: dot_general and conv_general_dilated, plus the window table they share with
windowed reductions. Known zeros of a constant operand prune the other operand's entries."""

from __future__ import annotations

import math

import numpy as np

from ._deps import Val, group, ids, spread, take, union


def _canonical(ctx, v: Val, batch, free, contract):
    """The (batch, free, contract) sizes and, moved to that order as 3-D, the element numbers
    (when ``v`` has dependencies) or where its known value is nonzero (when it has one)."""
    order = [*batch, *free, *contract]
    shape = tuple(math.prod(v.shape[d] for d in dims) for dims in (batch, free, contract))
    if v.deps is not None:
        return shape, ids(v.shape).transpose(order).reshape(shape), None
    nonzero = ctx.nonzero(v)
    return shape, None, None if nonzero is None else nonzero.transpose(order).reshape(shape)


def dot_general(ctx, eqn, args):
    """``out[b, m, n]`` depends on ``lhs[b, m, k]`` and ``rhs[b, k, n]`` over the k that
    are not known zeros of the other factor."""
    lhs, rhs = args[:2]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lf = [d for d in range(len(lhs.shape)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rhs.shape)) if d not in rc and d not in rb]
    (b, m, _), lnum, lnz = _canonical(ctx, lhs, lb, lf, lc)  # (B, M, K)
    (_, n, _), rnum, rnz = _canonical(ctx, rhs, rb, rf, rc)  # (B, N, K)
    parts = []
    if lhs.deps is not None:
        parts.append(_lhs_side(lhs.deps, lnum, None if rnz is None else rnz.transpose(0, 2, 1),
                               n))
    if rhs.deps is not None:
        # The rhs side is the lhs side of the transposed product.
        flip = _lhs_side(rhs.deps, rnum, None if lnz is None else lnz.transpose(0, 2, 1), m)
        parts.append(take(flip, ids((b, n, m)).transpose(0, 2, 1)))
    aval = eqn.outvars[0].aval
    return [Val(aval.shape, aval.dtype, union(parts))]


def _nonzero3(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """``np.nonzero`` of a 3-D array, fast also for a view with its last two axes swapped:
    on a contiguous array, the flat indices unravelled (10x faster than ``np.nonzero`` for a
    1 GiB connectivity's mask: 0.08 s)."""
    swapped = a.transpose(0, 2, 1)
    if not a.flags.c_contiguous and swapped.flags.c_contiguous:
        b, j, i = np.unravel_index(np.flatnonzero(swapped), swapped.shape)
        return b, i, j
    if a.flags.c_contiguous:
        return np.unravel_index(np.flatnonzero(a), a.shape)
    return np.nonzero(a)


def _lhs_side(deps, lnum: np.ndarray, rnz: np.ndarray | None, n: int):
    """Rows of ``out[b, m, n]`` (row-major) from ``lhs[b, m, k]`` where ``rnz[b, k, n]``."""
    b, m, k = lnum.shape
    if rnz is None or rnz.all():
        per_row = np.empty(lnum.size, dtype=np.int64)
        per_row[lnum.ravel()] = np.repeat(np.arange(b * m), k)
        return take(group(deps, per_row, b * m), np.repeat(np.arange(b * m), n))
    bb, kk, nn = _nonzero3(rnz)
    mm = np.arange(m)[None, :]
    out_rows = (bb[:, None] * m + mm) * n + nn[:, None]
    in_rows = lnum[bb[:, None], mm, kk[:, None]]
    return spread(deps, out_rows.ravel(), in_rows.ravel(), b * m * n)


def window_table(in_shape, out_shape, window, strides, padding, base_dilation,
                 window_dilation) -> np.ndarray:
    """(output positions x window positions) -> flat input position, -1 outside the input."""
    flat, valid = np.zeros((), dtype=np.int64), np.ones((), dtype=bool)
    dims = len(in_shape)
    for d in range(dims):
        o = np.arange(out_shape[d])[:, None]
        k = np.arange(window[d])[None, :]
        p = o * strides[d] + k * window_dilation[d] - padding[d][0]
        at = p // base_dilation[d]
        ok = (p >= 0) & (p % base_dilation[d] == 0) & (at < in_shape[d])
        shape = [1] * (2 * dims)
        shape[d], shape[dims + d] = out_shape[d], window[d]
        flat = flat * in_shape[d] + at.reshape(shape)
        valid = valid & ok.reshape(shape)
    table = np.where(valid, flat, -1)
    return np.broadcast_to(table, (*out_shape, *window)).reshape(
        math.prod(out_shape), math.prod(window))


def conv_general_dilated(ctx, eqn, args):
    """Each output reads a window of the input features of its group through the kernel."""
    lhs, rhs = args[:2]
    p, out = eqn.params, eqn.outvars[0].aval
    dn = p["dimension_numbers"]
    lnum = ids(lhs.shape).transpose(dn.lhs_spec)  # (batch, C, spatial...)
    knum = ids(rhs.shape).transpose(dn.rhs_spec)  # (O, I, window...)
    onum = ids(out.shape).transpose(dn.out_spec)  # (batch', O, spatial'...)
    nspace = len(lnum.shape) - 2
    table = window_table(lnum.shape[2:], onum.shape[2:], knum.shape[2:], p["window_strides"],
                         p["padding"], p["lhs_dilation"] or (1,) * nspace,
                         p["rhs_dilation"] or (1,) * nspace)
    knum = knum.reshape(knum.shape[0], knum.shape[1], -1)
    known = None if rhs.value is None else ctx.nonzero(rhs).transpose(dn.rhs_spec)
    taps = np.nonzero(known.reshape(knum.shape)) if known is not None else \
        np.indices(knum.shape).reshape(3, -1)
    out_el, lhs_el, k_el, valid = _conv_elements(lnum, knum, onum, table, taps, p)
    size, parts = math.prod(out.shape), []
    if lhs.deps is not None:
        parts.append(spread(lhs.deps, out_el[valid], lhs_el[valid], size))
    if rhs.deps is not None:
        if lhs.value is not None:
            valid = valid & ctx.nonzero(lhs).ravel()[lhs_el]
        parts.append(spread(rhs.deps, out_el[valid], k_el[valid], size))
    return [Val(out.shape, out.dtype, union(parts))]


def _conv_elements(lnum, knum, onum, table, taps, params):
    """For every (output batch, output position, kernel tap): the output, input and kernel
    element, and whether the tap falls inside the input (arrays of one shape)."""
    o, i, k = (t.astype(np.int64) for t in taps)
    nout, feat = onum.shape[0], onum.shape[1]
    group = o // (feat // params["feature_group_count"])
    batch_group = o // (feat // params["batch_group_count"])
    nb = np.arange(nout)[:, None, None]
    at = table[:, k][None]  # (1, out positions, taps)
    lhs_el = lnum.reshape(lnum.shape[0], lnum.shape[1], -1)[
        batch_group[None, None] * nout + nb, (group * knum.shape[1] + i)[None, None],
        np.maximum(at, 0)]
    out_el = onum.reshape(nout, feat, -1)[nb, o[None, None], np.arange(table.shape[0])[:, None]]
    k_el = np.broadcast_to(knum[o, i, k], out_el.shape)
    return out_el, lhs_el, k_el, np.broadcast_to(at >= 0, out_el.shape)
