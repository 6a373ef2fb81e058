"""The functional form of one ``jacfwd`` call and its pure-JAX kernels: the primal, and the
rows of J^T for a column range, ``vmap(jvp)`` over one-hot tangents, ``chunk_size`` at a time.

A ``TangentProgram`` pickles (function, Variables and all) so Ray workers run the very same
kernel as the driver; compiled functions are rebuilt lazily in each process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from ._basis import Layout, chunking
from ._variables import StateTrace, Variable


def _jvp_rows(f: Callable, primals: list, layout: Layout, cols: jax.Array) -> list[jax.Array]:
    """J^T rows of columns ``cols``: the JVPs of their one-hot tangents, batched by vmap."""

    def pushfwd(tangents):
        out, out_dot = jax.jvp(f, (primals,), (tangents,))
        return [jnp.zeros(o.shape, o.dtype) if t.dtype == jax.dtypes.float0 else t
                for o, t in zip(out, out_dot)]

    return jax.vmap(pushfwd)(layout.basis.one_hot(cols))


def tangent_rows(f: Callable, primals: list, layout: Layout, start: Any, length: int,
                 chunk_size: int | None) -> list[jax.Array]:
    """J^T rows of columns ``[start, start + length)``, at most ``chunk_size`` at a time.

    Chunks are written in place into the output; the last one is shifted back to end at
    ``length`` (recomputing a few columns) so that nothing is padded or sliced afterwards.
    """
    count, chunk = chunking(length, chunk_size)
    if count == 1:
        return _jvp_rows(f, primals, layout, start + jnp.arange(length))
    out = [jnp.zeros((length,) + s, d) for s, d in zip(layout.out_shapes, layout.out_dtypes)]

    def body(i, acc):
        first = jnp.minimum(i * chunk, length - chunk)
        rows = _jvp_rows(f, primals, layout, start + first + jnp.arange(chunk))
        return [lax.dynamic_update_slice_in_dim(a, r, first, 0) for a, r in zip(acc, rows)]

    return lax.fori_loop(0, count, body, out)


@dataclasses.dataclass(eq=False)
class TangentProgram:
    """``func`` as a pure function of flat leaves, with what one call signature fixes.

    Inputs of every kernel: ``diff`` (the differentiated leaves: grad_vars values, then the
    leaves of the differentiated arguments), ``const`` (array leaves of the other arguments
    and keyword arguments), ``state`` (values of the other Variables ``func`` touches).
    """

    func: Callable
    grad_vars: tuple[Variable, ...]
    argnums: tuple[int, ...]
    single_arg: bool
    has_aux: bool
    in_tree: Any
    const_tree: Any
    static_leaves: tuple
    const_mask: tuple[bool, ...]
    other_vars: tuple[Variable, ...] = ()
    written: tuple[Variable, ...] = ()
    layout: Layout | None = None
    chunk_size: int | None = None
    strict: bool = False  # on workers: every Variable func touches must have been shipped

    def pure(self, diff: list, const: list, state: list, record: StateTrace | None = None):
        """(output, aux, new values of the written Variables) of one functional call."""
        var_part, arg_part = jax.tree_util.tree_unflatten(self.in_tree, diff)
        var_values = jax.tree_util.tree_leaves(var_part)
        values = dict(zip(self.grad_vars, var_values)) | dict(zip(self.other_vars, state))
        args, kwargs = self._arguments(arg_part, const)
        trace = record if record is not None else StateTrace()
        trace.values.update(values)
        trace.touched.update(dict.fromkeys(values))
        with trace:
            out = self.func(*args, **kwargs)
        if self.strict and len(trace.touched) > len(values):
            raise RuntimeError(
                "func touched a rayjac.Variable on this worker that was not shipped with it: a "
                "Variable at module level of an imported module is a different object in each "
                "process. Create the Variables inside a function (e.g. the job factory) and "
                "close over them, or run with shards=None.")
        out, aux = self._split_aux(out)
        return out, aux, [trace.values[v] for v in self.written]

    def _arguments(self, arg_part: Any, const: list) -> tuple[list, dict]:
        const_iter, static_iter = iter(const), iter(self.static_leaves)
        leaves = [next(const_iter) if dyn else next(static_iter) for dyn in self.const_mask]
        args, kwargs = jax.tree_util.tree_unflatten(self.const_tree, leaves)
        diff_args = (arg_part,) if self.single_arg else arg_part
        args = list(args)
        for i, a in zip(self.argnums, diff_args or ()):
            args[i] = a
        return args, kwargs

    def _split_aux(self, out: Any) -> tuple[Any, Any]:
        if not self.has_aux:
            return out, None
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "has_aux=True requires func to return a pair (output, aux), but it returned "
                f"{type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                + ". Return `output, aux` or set has_aux=False.")
        return out[0], out[1]

    def _output_leaves(self, const: list, state: list) -> Callable:
        return lambda diff: jax.tree_util.tree_leaves(self.pure(diff, const, state)[0])

    def rows(self, diff: list, const: list, state: list, start: Any, length: int) -> list:
        """J^T rows of columns ``[start, start + length)`` (pure JAX, traceable)."""
        f = self._output_leaves(const, state)
        return tangent_rows(f, diff, self.layout, start, length, self.chunk_size)

    def columns(self, diff: list, const: list, state: list, start: Any, length: int) -> list:
        """The same columns of J, each ``(prod(out_shape), length)``: transposed here, in XLA,
        so that a driver gathering shards only copies contiguous rows."""
        rows = self.rows(diff, const, state, start, length)
        return [r.reshape(length, -1).T for r in rows]

    def full(self, diff: list, const: list, state: list):
        """(jacobian part, output, aux, written values): the whole in-process call."""
        out, aux, written = self.pure(diff, const, state)
        rows = self.rows(diff, const, state, 0, self.layout.basis.n)
        return self.layout.assemble(rows, xp=jnp), out, aux, written

    @functools.cached_property
    def full_jit(self) -> Callable:
        return jax.jit(self.full)

    @functools.cached_property
    def primal_jit(self) -> Callable:
        return jax.jit(self.pure)

    @functools.cached_property
    def rows_jit(self) -> Callable:
        return jax.jit(self.rows, static_argnames="length")

    @functools.cached_property
    def columns_jit(self) -> Callable:
        return jax.jit(self.columns, static_argnames="length")

    def __getstate__(self) -> dict:
        jitted = ("full_jit", "primal_jit", "rows_jit", "columns_jit")
        return {k: v for k, v in self.__dict__.items() if k not in jitted}
