"""Linear algebra: ``cholesky``, ``triangular_solve``, ``lu``, ``qr`` and
``custom_linear_solve`` (``jnp.linalg.solve``), so that a solve inside a model is not a dense
block. Matrices are the last two axes; leading axes are batch axes, which never mix.

Each rule follows the JVP rule JAX differentiates the primitive with (that is what the
Jacobian is made of), for every value of the operands: a factor whose values are unknown is
assumed to have every entry its triangle allows, and a value-dependent pivoting may move any
row or column anywhere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._deps import Val, group, ids, spread, take, union
from ._reduce import prefix_union

_REACH_LIMIT = 2048  # largest known triangular factor whose zeros prune a solve


def _column_prefix(x: Val):
    """One row per (batch, column j): every element of columns ``0..j`` of the matrix."""
    *batch, m, n = x.shape
    columns = group(x.deps, (ids((*batch, m, n)) // (m * n)) * n + ids((m, n)) % n,
                    math.prod(batch) * n)
    return prefix_union(columns, (*batch, n), len(batch))


def cholesky(ctx, eqn, args):
    """``L = cholesky(A)``, ``L`` lower triangular with ``L L^H = A``.

    JAX's rule is ``dL = L phi(L^-1 dA L^-H)`` with ``phi`` keeping the lower triangle
    (halving the diagonal). ``(L^-1 dA L^-H)[a, j]`` reads ``dA[p, q]`` for ``p <= a`` and
    ``q <= j`` (both factors are lower triangular), and ``dL[i, j] = sum_{j <= a <= i}
    L[i, a] phi[a, j]``: so ``L[i, j]`` (``j <= i``) depends on the rectangle ``A[p, q]``,
    ``p <= i``, ``q <= j`` (the rule reads both triangles of ``A``); ``L[i, j]`` for ``j > i``
    has no derivative.

    Example (3 x 3): ``L[0, 0]`` <- ``A00``; ``L[1, 0]`` <- ``A00, A10``; ``L[1, 1]`` <-
    ``A00, A01, A10, A11``; ``L[2, 1]`` <- ``A[0:3, 0:2]``. With the symmetrisation of
    ``jnp.linalg.cholesky`` (``(A + A^T) / 2`` first) that is 30 entries of the 81.
    """
    x, aval = args[0], eqn.outvars[0].aval
    axis = len(x.shape) - 2
    rect = prefix_union(prefix_union(x.deps, x.shape, axis + 1), x.shape, axis)
    i, j = np.indices(x.shape[-2:])
    return [Val(aval.shape, aval.dtype, take(rect, np.where(j <= i, ids(x.shape), -1)))]


def _oriented(shape, swap: bool, flip: bool) -> np.ndarray:
    """Element numbers of an array of ``shape`` seen with its last two axes swapped and then
    (``flip``) the row axis reversed: the orientation in which a solve is lower triangular."""
    numbers = ids(shape)
    if swap:
        numbers = np.swapaxes(numbers, -1, -2)
    return numbers[..., ::-1, :] if flip else numbers


def triangular_solve(ctx, eqn, args):
    """``X = op(A)^-1 B`` (``left_side``) or ``B op(A)^-1``, ``op`` a transpose or not.

    Written as ``T Y = C`` with ``T`` lower triangular (transposing a right-side solve and
    reversing the rows of an upper one), forward substitution ``y_i = (c_i - sum_{j<i}
    T_ij y_j) / T_ii`` gives: ``Y[i, k]`` depends on ``C[j, k]`` for ``j <= i`` and, through
    ``dY = -T^-1 dT Y``, on ``T[p, q]`` for ``q <= p <= i`` inside the triangle the solve
    reads (without the diagonal when ``unit_diagonal``). When ``A`` is known (a constant)
    with a nonzero diagonal, ``C[j, k]`` reaches ``Y[i, k]`` only along a path of nonzeros
    ``j -> ... -> i`` of ``T`` (the pattern of ``T^-1``).

    Example: ``lower=True``, 3 x 3, ``b`` a vector: ``x_0`` <- ``b_0, A00``; ``x_2`` <-
    ``b_0..b_2`` and the whole lower triangle ``A[p, q]``, ``q <= p <= 2``; with a known
    diagonal ``A`` (no off-diagonal nonzeros), ``x_i`` <- ``b_i`` only.
    """
    a, b = args
    p, aval = eqn.params, eqn.outvars[0].aval
    right = not p["left_side"]
    swap_a = bool(p["transpose_a"]) ^ right  # T is A transposed
    upper = not (bool(p["lower"]) ^ swap_a)  # T upper: reverse its rows and columns
    cnum = _oriented(b.shape, right, upper)  # (batch, n, k): C and Y in lower orientation
    parts = [_solve_rhs(ctx, a, b, cnum, swap_a, upper, p["unit_diagonal"])]
    if a.deps is not None:
        parts.append(_solve_factor(a, cnum, swap_a, upper, p["unit_diagonal"]))
    order = np.empty(b.size, np.int64)
    order[cnum.ravel()] = np.arange(b.size)  # element e of Y is oriented row order[e]
    return [Val(aval.shape, aval.dtype, take(union(parts), order))]


def _factor_numbers(a: Val, swap: bool, upper: bool) -> np.ndarray:
    numbers = ids(a.shape)
    if swap:
        numbers = np.swapaxes(numbers, -1, -2)
    return numbers[..., ::-1, ::-1] if upper else numbers


def _solve_rhs(ctx, a: Val, b: Val, cnum: np.ndarray, swap: bool, upper: bool, unit: bool):
    """Rows of Y (oriented order) from C: a prefix along the solve axis, or the reach."""
    c = take(b.deps, cnum.reshape(-1))  # row k: element cnum.ravel()[k] of b
    shape = cnum.shape
    reach = _reach(ctx, a, swap, upper, unit)
    if reach is None:
        return prefix_union(c, shape, len(shape) - 2)
    *batch, n, k = shape
    bb, ii, jj = np.nonzero(reach)  # reach: (batch, n, n), [i, j]: c_j reaches y_i
    kk = np.arange(k)
    base = (bb * n)[:, None]
    return spread(c, ((base + ii[:, None]) * k + kk).ravel(),
                  ((base + jj[:, None]) * k + kk).ravel(), math.prod(shape))


def _reach(ctx, a: Val, swap: bool, upper: bool, unit: bool) -> np.ndarray | None:
    """Which c_j reach which y_i, from the nonzeros of a known factor; ``None`` if unknown."""
    *batch, n, _ = a.shape
    if a.deps is not None or a.value is None or n > _REACH_LIMIT:
        return None
    mask = ctx.nonzero(a).reshape(-1, n, n)
    if swap:
        mask = np.swapaxes(mask, -1, -2)
    if upper:
        mask = mask[:, ::-1, ::-1]
    if not unit and not np.diagonal(mask, axis1=-2, axis2=-1).all():
        return None  # a zero pivot: inf and NaN may reach anywhere
    step = (np.tril(mask, -1) | np.eye(n, dtype=bool)).astype(np.float32)
    reach = step
    while True:  # the transitive closure by squaring: log2(n) products
        nxt = (reach @ reach > 0).astype(np.float32)
        if np.array_equal(nxt, reach):
            return reach > 0
        reach = nxt


def _solve_factor(a: Val, cnum: np.ndarray, swap: bool, upper: bool, unit: bool):
    """Rows of Y (oriented order) from T: row i unites ``T[p, q]``, ``q <= p <= i``."""
    *batch, n, _ = a.shape
    k = cnum.shape[-1]
    tnum = _factor_numbers(a, swap, upper)
    p, q = np.indices((n, n))
    read = (q < p) if unit else (q <= p)
    rows = group(take(a.deps, np.where(read, tnum, -1).reshape(-1)),
                 np.broadcast_to(ids((*batch, n))[..., None], (*batch, n, n)),
                 math.prod(batch) * n)
    upto = prefix_union(rows, (*batch, n), len(batch))
    return take(upto, np.repeat(np.arange(math.prod(batch) * n), k))


def lu(ctx, eqn, args):
    """``P A = L U`` with partial pivoting; outputs the packed ``L \\ U``, pivots and the
    permutation (integers: no derivative).

    JAX's rule: ``X = P dA``, ``LU' = L tril(L^-1 X U^-1, -1) + triu(L^-1 X U^-1) U``, where
    ``(L^-1 X U^-1)[a, j]`` reads ``X[p, q]``, ``p <= a``, ``q <= j``; both terms keep
    ``q <= j``. The permutation depends on the values (the largest pivot), so row ``p`` of
    ``X`` may be any row of ``A``: ``LU[i, j]`` depends on columns ``0..j`` of ``A``.

    Example (3 x 3): ``LU[i, 0]`` <- column 0 (3 entries), ``LU[i, 2]`` <- all 9: 54 of 81.
    """
    x, outs = args[0], eqn.outvars
    *batch, m, n = x.shape
    prefix = _column_prefix(x)
    first = take(prefix, (ids((*batch, m, n)) // (m * n)) * n + ids((m, n)) % n)
    return [Val(outs[0].aval.shape, outs[0].aval.dtype, first)] + [
        Val(v.aval.shape, v.aval.dtype) for v in outs[1:]]


def qr(ctx, eqn, args):
    """``A = Q R`` (Householder); with ``pivoting``, ``A P = Q R``.

    JAX's rule: ``dX R^-1`` reads columns ``0..j`` of ``dX`` in column ``j``, so do ``Q^T dX
    R^-1`` and its skew part (``[i, j]`` reads columns ``<= min(i, j)``); ``dQ = Q (do -
    Q^T dX R^-1) + dX R^-1`` and ``dR = (Q^T dX R^-1 - do) R``, whose strictly lower part
    cancels exactly. So ``Q[:, j]`` and ``R[i, j]`` (``i <= j``) depend on columns ``0..j``
    of ``A``; ``R[i, j]`` for ``i > j`` has no derivative; the extra columns of a complete
    ``Q`` and everything of a pivoted QR (value-dependent column order) depend on all of
    ``A``.

    Example (3 x 2, reduced): ``Q[:, 0]`` and ``R[0, 0]`` <- column 0 of ``A``;
    ``Q[:, 1]``, ``R[0, 1]``, ``R[1, 1]`` <- all 6 entries; ``R[1, 0]``: none.
    """
    x, outs = args[0], eqn.outvars
    *batch, m, n = x.shape
    b = math.prod(batch)
    if eqn.params.get("pivoting"):
        return [Val(v.aval.shape, v.aval.dtype, _per_batch(x, v.aval.shape)
                    if np.issubdtype(v.aval.dtype, np.inexact) else None) for v in outs]
    prefix = _column_prefix(x)  # (b * n) rows
    qm, qk = outs[0].aval.shape[-2:]
    col = np.minimum(np.arange(qk), n - 1)
    q_src = (np.arange(b)[:, None, None] * n + col[None, None, :]).repeat(qm, 1)
    rk, rn = outs[1].aval.shape[-2:]
    i, j = np.indices((rk, rn))
    r_src = np.where(i <= j, np.arange(b)[:, None, None] * n + j, -1)
    return [Val(outs[0].aval.shape, outs[0].aval.dtype, take(prefix, q_src)),
            Val(outs[1].aval.shape, outs[1].aval.dtype, take(prefix, r_src))] + [
        Val(v.aval.shape, v.aval.dtype) for v in outs[2:]]


def _per_batch(x: Val, shape) -> object:
    """Every element of an output of ``shape`` depends on all of its batch's matrix."""
    *batch, m, n = x.shape
    b = math.prod(batch)
    whole = group(x.deps, ids(x.shape) // (m * n), b)
    return take(whole, np.repeat(np.arange(b), math.prod(shape) // max(b, 1)))


def custom_linear_solve(ctx, eqn, args):
    """``x = A^-1 b`` for the operator ``A`` of the ``matvec`` jaxpr, computed by ``solve``.

    JAX's rule: ``dx = solve(db - dA x)``, with ``dA x`` the tangent of ``matvec`` in its
    constants at the primal ``x``, and ``solve`` applied with its constants as primals (their
    tangents are ignored). So the rule runs ``matvec`` (constants with their dependencies,
    ``x`` unknown and constant), adds ``b``'s, and runs ``solve`` on that.

    Example: ``jnp.linalg.solve(A, b)`` for unknown ``A``: ``matvec`` is ``A @ x``, so
    ``(dA x)_i`` <- row ``i`` of ``A``; ``solve`` is an LU solve with unknown pivots, so
    every ``x_i`` <- all of ``b`` and ``A``. For a known block-diagonal ``A`` the folded LU
    is block-diagonal and ``x`` keeps the blocks of ``b``.
    """
    p = eqn.params
    jaxprs, lengths = p["jaxprs"], p["const_lengths"]
    starts = np.cumsum([0, lengths.matvec, lengths.vecmat, lengths.solve, lengths.transpose_solve])
    matvec_consts = args[starts[0]:starts[1]]
    solve_consts = [dataclasses.replace(a, deps=None) for a in args[starts[2]:starts[3]]]
    rhs = args[starts[4]:]
    x = [Val(v.aval.shape, v.aval.dtype) for v in eqn.outvars]
    tangent = ctx.run(jaxprs.matvec, [*matvec_consts, *x])
    rhs = [Val(r.shape, r.dtype, union([r.deps, t.deps])) for r, t in zip(rhs, tangent)]
    outs = ctx.run(jaxprs.solve, [*solve_consts, *rhs])
    return [Val(v.aval.shape, v.aval.dtype, o.deps) for v, o in zip(eqn.outvars, outs)]
