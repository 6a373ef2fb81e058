"""Products with a sparse read-only matrix, computed on its nonzeros in a sparse call's kernel.

A network model keeps its connectivity ``W`` (n x n, ~1 % nonzero) in a Variable that
``func`` only reads, or closes over it, and computes ``W @ r``. Its detected pattern holds
only ``W``'s nonzeros (SPEC 1.6), but the JVPs of the colours would still run the dense
product: n^2 x colours multiply-adds (33 GFLOP at n = 16384 and 61 colours), almost all of
them with zeros. Where such a matrix enters a ``dot_general`` directly, the kernel instead
gathers its nonzeros (at indices fixed with the plan, or when a constant is traced) and sums
their products per row: nnz x colours.

The result is the same Jacobian up to rounding (the sums run in another order). A
Variable's indices hold as long as the plan does: ``refresh`` detects again when the
matrix's zeros change, and keeps a program only while its matrices' zeros are those it was
built for (``holds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from ._constants import Watch, concrete, fingerprint

# Matrices below this many elements keep the dense product (it costs next to nothing); above
# ``_MAX_DENSITY`` nonzero the gathers cost more than the product's arithmetic saves; above
# ``_MAX_NNZ`` entries the indices, compile-time constants, would swell the program.
_MIN_SIZE = 1 << 16
_MAX_DENSITY = 1 / 64
_MAX_NNZ = 1 << 22
_MAX_PADDING = 4  # ELLPACK slots (rows x the longest row) per nonzero


@dataclasses.dataclass(frozen=True, eq=False)
class SparseInput:
    """Where a read-only matrix is nonzero (row-major order), and a digest of that mask."""

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    mask: bytes | None = None  # a Variable's, checked by ``holds``


def sparse_inputs(watch: Watch, state: list) -> dict[int, SparseInput]:
    """The read-only Variables (by index in ``state``) whose products a kernel computes on
    their nonzeros: those a detected pattern depends on (``watch``: their zeros are checked
    before every call), concrete, 2-D, inexact, large and sparse enough."""
    found = {}
    for index, _, kind, digest in watch.entries:
        sparse = _sparse_input(state[index])
        if sparse is not None:
            mask = digest if kind == "mask" else fingerprint(state[index], "mask")
            found[index] = dataclasses.replace(sparse, mask=mask)
    return found


def _sparse_input(value: Any) -> SparseInput | None:
    """Where ``value`` is nonzero, if it is a concrete matrix large and sparse enough (no mask
    digest: a constant needs none, a Variable's comes from its ``Watch`` entry)."""
    if not (concrete(value) and np.ndim(value) == 2 and np.size(value) >= _MIN_SIZE
            and jnp.issubdtype(value.dtype, jnp.inexact)):
        return None
    host = np.asarray(value)
    flat = _nonzeros(host, min(host.size * _MAX_DENSITY, _MAX_NNZ))
    if flat is None:
        return None
    rows, cols = np.divmod(flat, host.shape[1])
    return SparseInput(rows.astype(np.int32), cols.astype(np.int32), host.shape)


def _nonzeros(host: np.ndarray, limit: float) -> np.ndarray | None:
    """The flat indices of the nonzeros of a matrix, None as soon as there are more than
    ``limit``. By blocks of rows (8 Mi elements): 6x faster than ``np.flatnonzero`` on a whole
    1 GiB float32 matrix here (0.17 s), and a dense one stops at its first block."""
    step = max(1, (1 << 23) // max(host.shape[1], 1))
    found, total = [], 0
    for start in range(0, host.shape[0], step):
        flat = np.flatnonzero(host[start:start + step] != 0)
        total += flat.size
        if total > limit:
            return None
        found.append(flat + start * host.shape[1])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def holds(products: dict[int, SparseInput], state: list) -> bool:
    """Whether every matrix of ``products`` is still zero exactly where it was."""
    return all(concrete(state[i]) and fingerprint(state[i], "mask") == p.mask
               for i, p in products.items())


def with_products(fn: Callable, diff: list, state: list,
                  products: dict[int, SparseInput]) -> Callable:
    """``fn(diff, state)`` as a function of ``diff`` whose products with the matrices of
    ``products``, and with sparse matrices it closes over (constants, fixed when the kernel
    is traced), run on their nonzeros; ``fn`` itself where none enters a ``dot_general``
    directly (also inside a nested ``jit``)."""
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    closed = jax.make_jaxpr(fn)(list(map(spec, diff)), list(map(spec, state)))
    invars = closed.jaxpr.invars[len(diff):]
    targets = {invars[i]: p for i, p in products.items()}
    for var, value in zip(closed.jaxpr.constvars, closed.consts):
        if (sparse := _sparse_input(value)) is not None:
            targets[var] = sparse
    plain = lambda d: fn(d, state)  # noqa: E731
    if not _reaches(closed.jaxpr, targets):
        return plain
    sparse = lambda d: _eval(closed.jaxpr, closed.consts, [*d, *state], targets)  # noqa
    try:  # an equation this walk cannot replay (a JAX version's call primitive): keep dense
        jax.eval_shape(sparse, list(map(spec, diff)))
    except Exception:  # noqa: BLE001 - the dense product is always right
        return plain
    return sparse


def _nested(eqn: Any) -> jcore.ClosedJaxpr | None:
    """The body of a nested ``jit``, which ``_eval`` walks into."""
    body = eqn.params.get("jaxpr") if eqn.primitive.name in ("pjit", "jit") else None
    return body if isinstance(body, jcore.ClosedJaxpr) else None


def _is_product(eqn: Any, targets: dict) -> bool:
    if eqn.primitive.name != "dot_general":
        return False
    (contract, _), (batch, _) = eqn.params["dimension_numbers"]  # lhs's, rhs's likewise
    ours = [isinstance(v, jcore.Var) and v in targets for v in eqn.invars]
    return sum(ours) == 1 and not batch and len(contract) == 1


def _reaches(jaxpr: jcore.Jaxpr, targets: dict) -> bool:
    """Whether a product with a target happens in ``jaxpr`` or a nested ``jit`` of it."""
    for eqn in jaxpr.eqns:
        if _is_product(eqn, targets):
            return True
        body = _nested(eqn)
        if body is not None and _reaches(body.jaxpr, _inner(eqn, body, targets)):
            return True
    return False


def _inner(eqn: Any, body: jcore.ClosedJaxpr, targets: dict) -> dict:
    """The targets as the nested body's variables."""
    return {inner: targets[outer] for outer, inner in zip(eqn.invars, body.jaxpr.invars)
            if isinstance(outer, jcore.Var) and outer in targets}


def _eval(jaxpr: jcore.Jaxpr, consts: list, args: list, targets: dict) -> list:
    """``jaxpr`` on ``args`` (JAX's own evaluation, equation by equation), with each product
    of a target computed on its nonzeros."""
    env: dict = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]  # noqa: E731
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        body = _nested(eqn)
        product = None
        if _is_product(eqn, targets):
            product = _sparse_dot(eqn, values, [targets.get(v) for v in eqn.invars])
        if product is not None:
            out = [product]
        elif body is not None and _reaches(body.jaxpr, inner := _inner(eqn, body, targets)):
            out = _eval(body.jaxpr, body.consts, values, inner)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)  # older JAX: (subfuns, params)
            subfuns, params = params if isinstance(params, tuple) else ((), params)
            with getattr(getattr(eqn, "ctx", None), "manager", contextlib.nullcontext()):
                out = eqn.primitive.bind(*subfuns, *values, **params)
            out = out if eqn.primitive.multiple_results else [out]
        env.update(zip(eqn.outvars, out))
    return [read(v) for v in jaxpr.outvars]


def _sparse_dot(eqn: Any, values: list, found: list) -> jax.Array | None:
    """``dot_general(lhs, rhs)`` where one side is a target matrix ``W`` with one contracting
    axis: per free index of ``W``, its nonzeros (padded to the longest such row, ELLPACK)
    times the other side's matching slices, summed one slot at a time, so that nothing larger
    than the output is ever held (the tangents of all colours pass through at once). None
    where the padding would cost more than ``_MAX_PADDING`` times the nonzeros."""
    contract, _ = eqn.params["dimension_numbers"]  # (lhs's axes, rhs's axes)
    side = 0 if found[0] is not None else 1
    sparse, other, axis = found[side], values[1 - side], contract[1 - side][0]
    w_axis = contract[side][0]
    free, summed = (sparse.rows, sparse.cols) if w_axis == 1 else (sparse.cols, sparse.rows)
    count = sparse.shape[1 - w_axis]
    order = np.argsort(free, kind="stable")
    free, summed = free[order], summed[order]
    degree = np.bincount(free, minlength=count)
    width = max(int(degree.max(initial=0)), 1)
    if width * count > _MAX_PADDING * max(free.size, count):
        return None  # a few hub rows would pad every row to theirs: the dense product
    slot = np.arange(free.size) - np.repeat(np.cumsum(degree) - degree, degree)
    index = np.zeros((width, count), np.int32)  # slot-major: one slot's row is contiguous
    index[slot, free] = summed
    valid = np.zeros((width, count), bool)
    valid[slot, free] = True
    at = (index, np.broadcast_to(np.arange(count, dtype=np.int32), index.shape))
    dtype = eqn.outvars[0].aval.dtype
    at = at if w_axis == 0 else at[::-1]
    if concrete(values[side]):  # a constant: only its nonzeros enter the program, not all of it
        weights = jnp.asarray(np.where(valid, np.asarray(values[side])[at], 0).astype(dtype))
    else:
        weights = jnp.where(valid, values[side][at], 0).astype(dtype)
    slices = jnp.moveaxis(other, axis, 0).astype(dtype)  # (contracted, *rest)
    index = jnp.asarray(index)
    pad = (1,) * (slices.ndim - 1)

    def add_slot(k, total):
        return total + weights[k].reshape((count,) + pad) * slices[index[k]]

    out = jax.lax.fori_loop(0, width, add_slot, jnp.zeros((count,) + slices.shape[1:], dtype))
    return out if side == 0 else jnp.moveaxis(out, 0, -1)  # dot_general: lhs free axes first
