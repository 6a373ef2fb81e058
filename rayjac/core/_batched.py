"""A ``TangentProgram``'s kernels at many points: ``vmap`` over the points of the very kernels of
a single call (the primal, the Jacobian, J^T rows or J columns of a column range), and the
batched loop that pushes at most ``batch_size`` points through one of them at a time.

One compiled kernel serves any number of points: windows always hold ``batch_size`` points
(``windows``), so a map over 100 or 10 000 points compiles the same program.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._basis import weakly_typed
from ._points import Points, windows

_PER_POINT: dict[str, Callable] = {
    "primal": lambda p, d, c, s: p.pure(d, c, s)[:2],
    "jacobian": lambda p, d, c, s, *gather: (
        p.jacobian(d, c, s) if p.plan is None else p.sparse_values(d, c, s, *gather)),
    "rows": lambda p, d, c, s, start, length: p.rows(d, c, s, start, length),
    "columns": lambda p, d, c, s, start, length: p.columns(d, c, s, start, length),
}


def batched(program: Any, kind: str, points: Points) -> Callable:
    """The jitted ``kind`` kernel of ``program`` over points laid out as ``points``' leaves:
    ``(diff, const, state, *extra, length=...)`` -> its per-point result with a leading point
    axis. Cached on the program per layout, like its single-point kernels."""
    key = (kind, points.axes, points.weak)
    cache = program.batched_kernels
    if key not in cache:
        cache[key] = jax.jit(functools.partial(_vmapped, program, kind, *key[1:]),
                             static_argnames="length")
    return cache[key]


def _vmapped(program, kind, axes, weak, diff, const, state, *extra, **static):
    groups = [[weakly_typed(x, w) for x, w in zip(g, flags)]
              for g, flags in zip((diff, const, state), weak)]
    point = lambda d, c, s: _PER_POINT[kind](program, d, c, s, *extra, **static)  # noqa: E731
    return jax.vmap(point, in_axes=tuple(list(a) for a in axes))(*groups)


def stacked(program: Any, kind: str, points: Points, batch_size: int | None,
            extra: tuple = ()) -> Any:
    """``kind``'s result at every point, stacked leaf by leaf along a new axis 0: all points in
    one kernel call, or ``batch_size`` at a time. Traced (under jax.jit or another transform) the
    batches are a ``lax.map``; eagerly they fill host buffers in place, so the result is never
    held twice."""
    kernel = batched(program, kind, points)
    if batch_size is None:
        return kernel(*points.groups, *extra)
    leaves = jax.tree_util.tree_leaves(points.groups)
    if any(isinstance(x, jax.core.Tracer) for x in leaves) or not _eager():
        return _mapped(program, kind, points, batch_size, extra)
    views = tree = None
    for w0, q0, q1, out in run_windows(kernel, points, 0, points.count, batch_size, extra):
        out, tree = jax.tree_util.tree_flatten(out)
        if views is None:
            views = host_arrays([((points.count,) + x.shape[1:], x.dtype) for x in out])
            weak = [bool(x.weak_type) for x in out]
        for view, x in zip(views, out):
            view[q0:q1] = np.asarray(x)[q0 - w0:q1 - w0]
    return jax.tree_util.tree_unflatten(tree, finish(views, weak))


def _eager() -> bool:
    from jax._src import core  # no public test for "no trace is active" (jax 0.10)
    return core.trace_state_clean()


def _mapped(program, kind, points: Points, batch_size: int, extra: tuple) -> Any:
    """The traced form: a ``lax.map`` over windows of ``batch_size`` points (the last one
    padded by repeating the last point), each through the batched kernel."""
    count = -(-points.count // batch_size)
    index = np.minimum(np.arange(count * batch_size), points.count - 1)
    split = lambda x: jnp.asarray(x)[index].reshape(  # noqa: E731
        (count, batch_size) + tuple(x.shape[1:]))
    stacks = [[split(x) for x, a in zip(g, ax) if a == 0]
              for g, ax in zip(points.groups, points.axes)]
    kernel = batched(program, kind, points)

    def window(stacks):
        it = [iter(g) for g in stacks]
        return kernel(*[[next(i) if a == 0 else x for x, a in zip(g, ax)]
                        for g, ax, i in zip(points.groups, points.axes, it)], *extra)

    out = lax.map(window, stacks)
    return jax.tree_util.tree_map(
        lambda y: y.reshape((count * batch_size,) + y.shape[2:])[:points.count], out)


def run_windows(kernel: Callable, points: Points, p0: int, p1: int, batch_size: int | None,
                extra: tuple = (), **static) -> Iterator[tuple[int, int, int, Any]]:
    """``(w0, q0, q1, out)``: ``kernel`` over windows of ``batch_size`` points (all of
    ``[p0, p1)`` when None) of which points ``[q0, q1)`` (``out[q0 - w0:q1 - w0]``) are new."""
    whole = batch_size is None and (p0, p1) == (0, points.count)
    for w0, q0, q1 in windows(p0, p1, batch_size):
        groups = points.groups if whole else points.window(w0, batch_size or p1 - p0, p1)
        yield w0, q0, q1, kernel(*groups, *extra, **static)


def part_values(program: Any, points: Points, p0: int, p1: int, start: int, length: int,
                batch_size: int | None, columns: bool = False) -> Iterator[tuple[int, int, list]]:
    """``(q0, q1, values)`` per window of the rectangle points ``[p0, p1)`` x columns (colours)
    ``[start, start + length)``, as numpy: J^T rows ``(q1 - q0, length, *out_shape)``, J
    columns ``(q1 - q0, *out_shape, length)`` (``columns``, dense), or the nonzeros of the
    colours at each point ``(q1 - q0, entries)`` (sparse, decompressed here)."""
    kind = "columns" if columns and program.plan is None else "rows"
    kernel = batched(program, kind, points)
    for w0, q0, q1, out in run_windows(kernel, points, p0, p1, batch_size, (start,),
                                       length=length):
        rows = [np.asarray(r)[q0 - w0:q1 - w0] for r in out]
        if program.plan is not None:
            each = [program.payload(start, [r[j] for r in rows]) for j in range(q1 - q0)]
            rows = [np.stack([e[k] for e in each]) for k in range(len(rows))]
        yield q0, q1, rows


def part(program: Any, points: Points, p0: int, p1: int, start: int, length: int,
         batch_size: int | None, columns: bool = False) -> list[np.ndarray]:
    """The values of one rectangle (see ``part_values``), its windows gathered."""
    out = None
    for q0, q1, values in part_values(program, points, p0, p1, start, length, batch_size,
                                      columns):
        if out is None:
            out = [np.empty((p1 - p0,) + v.shape[1:], v.dtype) for v in values]
        for o, v in zip(out, values):
            o[q0 - p0:q1 - p0] = v
    return out


def host_arrays(specs: list[tuple[tuple[int, ...], Any]]) -> list[np.ndarray]:
    """Numpy arrays to fill in place, one per ``(shape, dtype)``, aligned as XLA wants its
    buffers: on the CPU ``finish`` then hands them to JAX without a copy, so what is gathered
    is never copied again (and never zero-filled first)."""
    return [_aligned(shape, dtype) for shape, dtype in specs]


def finish(views: list[np.ndarray], weak: list[bool]) -> list:
    """The filled host arrays as JAX arrays (aliased where the backend allows) with the given
    weak types."""
    return [weakly_typed(jax.device_put(v, may_alias=True), w) for v, w in zip(views, weak)]


def _aligned(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + size].view(dtype).reshape(shape)
