"""``jf.map``: the Jacobians at B points. Its checks (``in_axes``, ``states``, the number of
points), the flat inputs of the points next to the program of point 0, the in-process map, and
the assembly of a sharded call's shards or a map's parts into the ``jacfwd`` structure.

A map is the loop ``for i in range(B): out_i = jf(*args_i)`` with every Variable at its value
when the map starts (``states`` giving some of them per point), stacked: one program (that of
point 0, so one pattern and one compiled kernel) ``vmap``-ed over the points. No Variable is
written: each point's writes stay inside that point's functional call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import _check_no_variable_arguments, _check_positive
from .core._basis import Layout, weakly_typed
from .core._batched import finish, host_arrays, part_values, stacked
from .core._plan import SparsePlan, SparseShard
from .core._points import MapPart, Points
from .core._program import TangentProgram
from .core._variables import Variable

_SAME = object()  # a leaf that is the same at every point


@dataclasses.dataclass
class MapStream:
    """A map's Jacobians as parts (``MapPart``, in any order) to write as they arrive, with the
    stacked primal value and aux (JAX arrays; ``None`` when not requested)."""

    layout: Layout
    points: int
    value: Any
    aux: Any
    parts: Iterator[MapPart]
    cancel: Callable[[], None] = lambda: None  # stops parts still running on workers
    plan: SparsePlan | None = None
    analysis: Any = None  # spectra to compute at each point (rayjac.analysis._jobs.Analysis)


def check_in_axes(in_axes: Any, num_args: int) -> tuple[int | None, ...]:
    """One axis (0 or None) per positional argument."""
    is_axis = lambda a: a is None or (  # noqa: E731
        not isinstance(a, bool) and isinstance(a, (int, np.integer)) and a == 0)
    if is_axis(in_axes):
        return (None if in_axes is None else 0,) * num_args
    if not isinstance(in_axes, (tuple, list)) or not all(is_axis(a) for a in in_axes):
        raise ValueError(f"in_axes must be 0, None, or a tuple or list of 0/None with one entry "
                         f"per positional argument, got {in_axes!r}.")
    if len(in_axes) != num_args:
        raise ValueError(f"in_axes={in_axes!r} has {len(in_axes)} entries, but the call has "
                         f"{num_args} positional argument(s); give one entry (0 or None) per "
                         "positional argument.")
    return tuple(None if a is None else 0 for a in in_axes)


def _name(var: Variable) -> str:
    return f"states[Variable of shape {tuple(var.shape)}]"


def check_states(states: Any) -> dict[Variable, Any]:
    """``{Variable: values}`` with values of shape ``(B,) + v.shape`` and ``v``'s dtype."""
    if states is None:
        return {}
    if not isinstance(states, dict):
        raise TypeError("states must be a dict from rayjac.Variable to arrays of shape "
                        f"(B,) + v.shape, got {type(states).__name__}.")
    out = {}
    for var, values in states.items():
        if not isinstance(var, Variable):
            raise TypeError(f"states keys must be rayjac.Variable objects, but received "
                            f"{type(var).__name__}: {var!r:.80}. Key the points of a "
                            "Variable's value by the Variable itself.")
        if not (hasattr(values, "shape") and hasattr(values, "dtype")):
            values = np.asarray(values)
        if (tuple(values.shape[1:]) != tuple(var.shape) or len(values.shape) != var.ndim + 1
                or np.dtype(values.dtype) != np.dtype(var.dtype)):
            want = str(("B",) + tuple(var.shape)).replace("'B'", "B")
            raise ValueError(
                f"{_name(var)} must have shape {want} (the points along axis 0) and the "
                f"Variable's dtype {np.dtype(var.dtype).name}, got shape "
                f"{tuple(values.shape)} and dtype {np.dtype(values.dtype).name}.")
        out[var] = values
    return out


def count_points(args: tuple, axes: tuple, states: dict) -> int:
    """B: the common length of axis 0 of every batched leaf and every ``states`` value."""
    leaves = [x for a, axis in zip(args, axes) if axis == 0 for x in jax.tree_util.tree_leaves(a)]
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    lengths.update(s.shape[0] for s in states.values())
    if len(lengths) != 1 or None in lengths or 0 in lengths:
        _explain_points(args, axes, states)
    return int(lengths.pop())


def _explain_points(args: tuple, axes: tuple, states: dict) -> None:
    """Raises the error that names what is wrong with the points of a map."""
    lengths = {}
    for i, (arg, axis) in enumerate(zip(args, axes)):
        for path, x in jax.tree_util.tree_leaves_with_path(arg) if axis == 0 else ():
            name = f"args[{i}]{jax.tree_util.keystr(path)}"
            if np.ndim(x) == 0:
                raise ValueError(
                    f"in_axes puts the points on axis 0 of {name}, but it is a "
                    f"{type(x).__name__} with no axis 0. Stack the points of an argument along "
                    "axis 0 of each of its arrays, or give it in_axes None.")
            lengths[name] = int(np.shape(x)[0])
    lengths.update({_name(v): int(s.shape[0]) for v, s in states.items()})
    if not lengths:
        raise ValueError("jf.map needs points: no positional argument is batched (in_axes) and "
                         "states is empty. Give the points along axis 0 of an argument "
                         "(in_axes=0) or as states={variable: values}.")
    if len(set(lengths.values())) > 1:
        raise ValueError("The batched inputs of jf.map disagree on the number of points (the "
                         "length of axis 0): " + ", ".join(f"{k} has {n}" for k, n in
                                                           lengths.items())
                         + ". Give every batched input the same number of points.")
    raise ValueError("jf.map got 0 points (axis 0 of its batched inputs is empty); give at "
                     "least one point.")


def _point(tree: Any) -> Any:
    """One point of a batched tree, abstractly (the program of point 0 needs only shapes)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x)[1:], x.dtype, weak_type=bool(getattr(x, "weak_type", False))), tree)


def map_inputs(jf: Any, args: tuple, kwargs: dict, in_axes: Any, states: Any,
               batch_size: Any) -> tuple[TangentProgram, Points]:
    """Every check of a map (those of a call, at point 0, included), the program of point 0
    (the one ``jf(*args_0)`` uses) and the flat inputs of all points."""
    _check_positive("batch_size", batch_size)
    _check_no_variable_arguments(args, kwargs)
    axes = check_in_axes(in_axes, len(args))
    states = check_states(states)
    count = count_points(args, axes, states)
    program, diff, const, state = jf._prepare(
        tuple(_point(a) if ax == 0 else a for a, ax in zip(args, axes)), kwargs,
        {v: _point(s) for v, s in states.items()})
    same = lambda tree: jax.tree_util.tree_map(lambda _: _SAME, tree)  # noqa: E731
    _, full_diff, _, leaves, _ = jf._flatten(
        tuple(a if ax == 0 else same(a) for a, ax in zip(args, axes)), same(kwargs),
        lambda v: states.get(v, _SAME))
    full_const = [x for x, dyn in zip(leaves, program.const_mask) if dyn]
    full_state = [states.get(v, _SAME) for v in program.other_vars]
    groups = tuple([p if f is _SAME else f for p, f in zip(point, full)] for point, full in
                   ((diff, full_diff), (const, full_const), (state, full_state)))
    layout = tuple(tuple(None if f is _SAME else 0 for f in full)
                   for full in (full_diff, full_const, full_state))
    return program, Points(groups, layout, count)


def map_in_process(program: TangentProgram, points: Points, batch_size: int | None,
                   primal: bool) -> tuple[Any, Any, Any]:
    """(Jacobian, value, aux) of every point, stacked; the primal only when asked for."""
    out, aux = stacked(program, "primal", points, batch_size) if primal else (None, None)
    if program.plan is None:
        return stacked(program, "jacobian", points, batch_size), out, aux
    values = stacked(program, "jacobian", points, batch_size, (program._gather,))
    return program.sparse_blocks(values, (points.count,)), out, aux


def local_parts(program: TangentProgram, points: Points, batch_size: int | None
                ) -> Iterator[MapPart]:
    """In-process parts: one per batch of points, all columns (colours) each."""
    for q0, q1, values in part_values(program, points, 0, points.count, 0, program.size,
                                      batch_size):
        yield MapPart(q0, q1, 0, program.size, values)


def _piece(item: Any) -> tuple[Any, int, int, list]:
    """(where in the leading axes, start, stop, values) of a shard or a part."""
    if isinstance(item, MapPart):
        return slice(item.p0, item.p1), item.start, item.stop, item.values
    if isinstance(item, SparseShard):
        return Ellipsis, item.start, item.stop, item.values
    return Ellipsis, item[0], None, item[1]


def assemble(program: TangentProgram, items: Iterable, points: int | None = None) -> Any:
    """The Jacobian in the ``jacfwd`` structure from a sharded call's shards (dense: J column
    blocks), or from a map's parts (``points``: B, a leading axis on every block), in any
    order, each copied once as it arrives."""
    lead = () if points is None else (points,)
    pieces = map(_piece, items)
    if program.plan is None:
        return _dense(program.layout, lead, pieces)
    return _sparse(program, lead, pieces)


def _dense(layout: Layout, lead: tuple, pieces: Iterable) -> Any:
    grid = [[(lead + o + i, d) for i in layout.basis.shapes]
            for o, d in zip(layout.out_shapes, layout.out_dtypes)]
    views = host_arrays([spec for row in grid for spec in row])
    for where, start, _, values in pieces:
        layout.scatter(_regroup([v[where] for v in views], grid), start, values)
    weak = [layout.weak(k) for k, row in enumerate(grid) for _ in row]
    return layout.structure(_regroup(finish(views, weak), grid))


def _regroup(flat: list, grid: list[list]) -> list[list]:
    items = iter(flat)
    return [[next(items) for _ in row] for row in grid]


def _sparse(program: TangentProgram, lead: tuple, pieces: Iterable) -> Any:
    plan, layout = program.plan, program.layout
    values = [np.empty(lead + (rows.size,), d) for rows, d in zip(plan.rows, layout.out_dtypes)]
    for where, start, stop, part in pieces:
        for k, data in enumerate(part):
            values[k][where, plan.positions(k, start, stop)] = data
    return program.sparse_blocks([[weakly_typed(jnp.asarray(data[..., lo:hi]), layout.weak(k))
                                   for lo, hi in plan.spans[k]]
                                  for k, data in enumerate(values)], lead)
