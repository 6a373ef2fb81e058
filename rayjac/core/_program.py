"""The functional form of one ``jacfwd`` call and its pure-JAX kernels: the primal, and the
JVPs of a column range, ``vmap(jvp)`` over one-hot tangents, ``chunk_size`` at a time.

A ``TangentProgram`` pickles (function, Variables and all) so Ray workers run the very same
kernel as the driver; compiled functions are rebuilt lazily in each process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse

from ._basis import Layout, chunking, split_range, weakly_typed
from ._products import with_products
from ._variables import StateTrace, Variable

if TYPE_CHECKING:
    from ._plan import SparsePlan


def _jvp_batch(f: Callable, primals: list, seeds: Callable, ids: jax.Array, axis: int,
               in_axis: int = 0) -> list[jax.Array]:
    """JVPs of the tangents ``seeds(ids)`` (basis columns or colours), batched by vmap along
    ``in_axis`` of the tangents and stacked along ``axis`` of the outputs."""

    def pushfwd(tangents):
        out, out_dot = jax.jvp(f, (primals,), (tangents,))
        return [jnp.zeros(o.shape, o.dtype) if t.dtype == jax.dtypes.float0 else t
                for o, t in zip(out, out_dot)]

    batch = seeds(ids)
    if in_axis != 0:
        batch = [jnp.moveaxis(t, 0, in_axis) for t in batch]
    return jax.vmap(pushfwd, in_axes=in_axis, out_axes=axis)(batch)


def tangents(f: Callable, primals: list, layout: Layout, start: Any, length: int,
             chunk_size: int | None, axis: int, seeds: Callable | None = None,
             in_axis: int = 0) -> list[jax.Array]:
    """JVPs of basis columns (or, with ``seeds``, colours) ``[start, start + length)``, at most
    ``chunk_size`` at a time, stacked along ``axis``: 0 gives rows of J^T (one per column), -1
    gives columns of J. ``in_axis`` is where the tangents' batch axis goes (see
    ``sparse_values``).

    Chunks are written in place into the output; the last one is shifted back to end at
    ``length`` (recomputing a few columns) so that nothing is padded or sliced afterwards.
    """
    seeds = seeds or layout.basis.one_hot
    count, chunk = chunking(length, chunk_size)
    if count == 1:
        return _jvp_batch(f, primals, seeds, start + jnp.arange(length), axis, in_axis)
    shape = (lambda s: (length,) + s) if axis == 0 else (lambda s: s + (length,))
    out = [jnp.zeros(shape(s), d) for s, d in zip(layout.out_shapes, layout.out_dtypes)]

    def body(i, acc):
        first = jnp.minimum(i * chunk, length - chunk)
        new = _jvp_batch(f, primals, seeds, start + first + jnp.arange(chunk), axis, in_axis)
        return [lax.dynamic_update_slice_in_dim(a, r, first, axis % a.ndim)
                for a, r in zip(acc, new)]

    return lax.fori_loop(0, count, body, out)


_UNSHIPPED = (
    "func touched a rayjac.Variable on this worker that does not match the Variables it touched "
    "on the driver, so its value cannot be shipped: e.g. one read only in some processes, or a "
    "module-level Variable that was replaced by one of another shape. Read the same Variables "
    "in every process, or run with shards=None.")


# In process, a whole sparse call's seeds up to this many elements are compile-time constants:
# XLA then folds the JVP of the function's linear part (stencils, rolls) into the program, as
# for sparsejac's constant seed matrix (measured: 12 colours of a 131072-point Brusselator,
# 2.8 ms against 13 ms with the seeds built at run time). Larger ones are built on the device.
_HOST_SEEDS = 2**22


# The gather that picks a sparse call's entries out of the compressed columns runs about 3x
# faster at compile-time constant indices than at indices given as inputs (measured: 49,150
# entries of 3 colours, 0.064 ms against 0.21 ms): constants up to this many entries.
_HOST_GATHER = 2**22


def _take(columns: jax.Array, where: Any) -> jax.Array:
    """The entries of compressed columns ``(*out_shape, c)`` at flat indices or (row, colour)."""
    if isinstance(where, tuple):
        return columns.reshape(math.prod(columns.shape[:-1]), columns.shape[-1])[where]
    return columns.reshape(columns.size)[where]


class UnshippedVariable(RuntimeError):
    def __init__(self, message: str = _UNSHIPPED):
        super().__init__(message)  # picklable with its message: Ray rebuilds it on the driver


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
    order: tuple[Variable, ...] = ()  # every Variable func touches, in the order it does
    layout: Layout | None = None
    plan: SparsePlan | None = None  # sparse: one JVP per colour, decompressed by this plan
    dense_pattern: Any = None  # a dense call's detected Sparsity, once asked for
    chunk_size: int | None = None
    strict: bool = False  # on workers: every Variable func touches must have been shipped
    # The last program of this call signature per set of read-only Variables whose values
    # detection could not see (a map's points of them): shared by the copies ``refresh`` makes.
    variants: dict = dataclasses.field(default_factory=dict, repr=False)

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
            raise UnshippedVariable()
        out, aux = self._split_aux(out)
        return out, aux, [trace.values[v] for v in self.written]

    def localized(self, diff: list, const: list, state: list) -> TangentProgram:
        """This program in a worker whose ``func`` reaches Variables of its own: those at module
        level of an imported module, which pickle by reference. They take the place of the
        shipped Variables touched at the same step, so they read the shipped values."""
        trace = StateTrace()
        loose = dataclasses.replace(self, strict=False)
        jax.eval_shape(lambda d, c, s: loose.pure(d, c, s, trace), diff, const, state)
        here = tuple(trace.order)
        spec = lambda v: (tuple(v._value.shape), jnp.dtype(v._value.dtype))  # noqa: E731
        shipped = set(self.order)
        matches = [a is b or (a not in shipped and spec(a) == spec(b))
                   for a, b in zip(here, self.order)]
        if len(here) != len(self.order) or not all(matches):
            raise UnshippedVariable()
        swap = dict(zip(self.order, here))
        rebind = lambda vs: tuple(swap.get(v, v) for v in vs)  # noqa: E731
        return dataclasses.replace(
            self, grad_vars=rebind(self.grad_vars), other_vars=rebind(self.other_vars),
            written=rebind(self.written), order=here)

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
        """The output leaves as a function of ``diff``; when sparse, products with the plan's
        sparse read-only matrices, or sparse constants, run on their nonzeros
        (``_products``)."""
        leaves = lambda d, s: jax.tree_util.tree_leaves(self.pure(d, const, s)[0])  # noqa
        if self.plan is None:
            return lambda diff: leaves(diff, state)
        return lambda diff: with_products(leaves, diff, state, self.plan.products)(diff)

    @property
    def size(self) -> int:
        """The number of JVPs of a whole call: basis columns, or colours when sparse."""
        return self.layout.basis.n if self.plan is None else self.plan.num_colors

    def split(self, shards: int) -> list[tuple[int, int]]:
        return split_range(self.size, shards)

    def payload(self, start: int, rows: list) -> list:
        """What a shard sends home, from its J^T rows: those rows (dense), or only the
        nonzeros of its colours, decompressed where they were computed (sparse)."""
        return rows if self.plan is None else self.plan.decompress(rows, start)

    def shard(self, diff: list, const: list, state: list, start: int, length: int,
              columns: bool = False) -> list[np.ndarray]:
        """The payload (numpy) of the shard ``[start, start + length)``; ``columns``: dense
        blocks of J instead of J^T rows."""
        kernel = self.columns_jit if columns and self.plan is None else self.rows_jit
        rows = kernel(diff, const, state, start, length=length)
        return self.payload(start, [np.asarray(r) for r in rows])

    def shard_item(self, start: int, stop: int, payload: list) -> Any:
        """What a stream yields for a shard: ``(start, rows)``, or a ``SparseShard``."""
        if self.plan is None:
            return start, payload
        from ._plan import SparseShard
        return SparseShard(start, stop, payload)

    def seeds(self, ids: Any) -> list[Any]:
        """The tangents of basis columns ``ids`` or, when sparse, of colours ``ids``, one
        ``(len(ids), *shape)`` per leaf, built from the colour vector where the kernel runs:
        on the device for traced ``ids``, on the host (compile-time constants) for numpy ones."""
        basis = self.layout.basis
        if self.plan is None:
            return basis.one_hot(ids)
        xp = np if isinstance(ids, np.ndarray) else jnp
        colors = self.plan.pattern.colors.astype(np.int32)
        return [(xp.asarray(colors[off:off + size]) == ids[:, None]).astype(dtype)
                .reshape(ids.shape + shape) for off, size, shape, dtype
                in zip(basis.offsets, basis.sizes, basis.shapes, basis.dtypes)]

    def rows(self, diff: list, const: list, state: list, start: Any, length: int) -> list:
        """J^T rows of columns ``[start, start + length)``: ``(length, *out_shape)`` each;
        when sparse, the compressed rows of colours ``[start, start + length)``."""
        f = self._output_leaves(const, state)
        return tangents(f, diff, self.layout, start, length, self.chunk_size, axis=0,
                        seeds=self.seeds)

    def columns(self, diff: list, const: list, state: list, start: Any, length: int) -> list:
        """The same block of J, ``(*out_shape, length)`` each: vmap puts the tangent axis
        last, so neither this nor the final unravel needs a full-size transpose."""
        f = self._output_leaves(const, state)
        return tangents(f, diff, self.layout, start, length, self.chunk_size, axis=-1)

    def jacobian(self, diff: list, const: list, state: list) -> Any:
        """The Jacobian part of the in-process call (the primal is a separate kernel: XLA on
        CPU runs a big output several times slower when a small one comes with it)."""
        return self.layout.from_columns(self.columns(diff, const, state, 0, self.layout.basis.n))

    def sparse_values(self, diff: list, const: list, state: list, gather: Any = None) -> list:
        """The nonzeros of each block ``[k][i]`` (in plan order): one JVP per colour, then one
        gather per output leaf of each entry from the compressed columns, at the indices
        ``gather`` or (None) at ``_host_gather``'s compile-time constants."""
        plan, layout = self.plan, self.layout
        c = plan.num_colors
        seeds = self.seeds
        if chunking(c, self.chunk_size)[0] == 1 and c * layout.basis.n <= _HOST_SEEDS:
            # JAX constants, not numpy: a tangent that func passes through unchanged (an
            # identity, a custom_jvp rule returning it) must come back as a JAX array.
            host = [jnp.asarray(s) for s in self.seeds(np.arange(c))]
            seeds = lambda ids: host  # noqa: E731 - constants: see below
        # Colours last, in the tangents too: a product ``W @ t`` with a big matrix that the
        # call gets as an input (connectivity in a Variable) is then one plain ``W @ T``. With
        # colours first XLA makes it ``T @ W.T`` and, on CPU, repacks all of ``W`` on every call
        # (measured: n = 16384, 61 colours, 1 GiB ``W``: 0.38 s against 1.6 s a call).
        compressed = tangents(self._output_leaves(const, state), diff, layout, 0, c,
                              self.chunk_size, axis=-1, seeds=seeds, in_axis=-1) if c else [
            jnp.zeros(s + (0,), d) for s, d in zip(layout.out_shapes, layout.out_dtypes)]
        gather = self._host_gather if gather is None else gather
        values = [_take(columns, where) for columns, where in zip(compressed, gather)]
        return [[weakly_typed(data[lo:hi], layout.weak(k)) for lo, hi in plan.spans[k]]
                for k, data in enumerate(values)]

    def sparse_blocks(self, values: list, points: tuple[int, ...] = ()) -> Any:
        """BCOO blocks in the jacfwd structure from the nonzeros of each block ``[k][i]``;
        with ``points`` (``(B,)``, a map), data ``(B, nse)`` over one batch dimension whose
        indices ``(1, nse, ndim)`` every point shares: each holds exactly the pattern."""
        layout = self.layout
        lead = lambda index: index[(None,) * len(points)] if points else index  # noqa: E731
        return layout.structure([
            [sparse.BCOO((data, lead(index)), shape=points + layout.out_shapes[k] + shape,
                         indices_sorted=True, unique_indices=True)
             for data, index, shape in zip(values[k], self._indices[k], layout.basis.shapes)]
            for k in range(len(values))])

    def sparse_data(self, diff: list, const: list, state: list, gather: Any = None) -> list:
        """The data of every BCOO block, in the order of the Jacobian's leaves."""
        return jax.tree_util.tree_leaves(
            self.layout.structure(self.sparse_values(diff, const, state, gather)))

    def sparse_jacobian(self, diff: list, const: list, state: list) -> Any:
        """The in-process sparse Jacobian: the data of all blocks from one compiled kernel,
        put into BCOO blocks with the cached indices (``_block_tree``). The indices stay out
        of the kernel, so no call copies them (XLA copies an input or a constant that a
        kernel returns); under an outer jax.jit they are constants of the outer program."""
        data = self.data_jit(diff, const, state, self._gather)
        return self._block_tree.unflatten(
            [x for pair in zip(data, self._index_leaves) for x in pair])

    @functools.cached_property
    def _host_gather(self) -> list:
        """Per output leaf, where each entry is in the compressed columns: flat indices
        (``SparsePlan.flat_rows``) or, where those overflow int32, (row, colour) pairs."""
        plan = self.plan
        return [(r, c) if flat is None else flat
                for flat, c, r in zip(map(plan.flat_rows, range(len(plan.rows))), plan.colors,
                                      plan.rows)]

    @functools.cached_property
    def _gather(self) -> list | None:
        """The gather indices as kernel inputs: None (constants) up to ``_HOST_GATHER``
        entries, else ``_host_gather`` on the device."""
        if sum(r.size for r in self.plan.rows) <= _HOST_GATHER:
            return None
        with jax.ensure_compile_time_eval():  # cached: concrete, even when first made under jit
            return jax.tree_util.tree_map(jnp.asarray, self._host_gather)

    @functools.cached_property
    def _indices(self) -> list:
        with jax.ensure_compile_time_eval():
            return [[jnp.asarray(self.plan.indices(k, i)) for i in range(len(spans))]
                    for k, spans in enumerate(self.plan.spans)]

    @functools.cached_property
    def _index_leaves(self) -> list:
        """The indices of every BCOO block, in the order of the Jacobian's leaves."""
        return jax.tree_util.tree_leaves(self.layout.structure(self._indices))

    @functools.cached_property
    def _block_tree(self) -> Any:
        """The tree of the Jacobian's BCOO blocks, (data, indices) the children of each."""
        data = [[jax.ShapeDtypeStruct((hi - lo,), dtype) for lo, hi in spans]
                for spans, dtype in zip(self.plan.spans, self.layout.out_dtypes)]
        return jax.tree_util.tree_structure(jax.eval_shape(self.sparse_blocks, data))

    @functools.cached_property
    def data_jit(self) -> Callable:
        return jax.jit(self.sparse_data)

    @functools.cached_property
    def jacobian_jit(self) -> Callable:
        return jax.jit(self.jacobian) if self.plan is None else self.sparse_jacobian

    @functools.cached_property
    def primal_jit(self) -> Callable:
        return jax.jit(self.pure)

    @functools.cached_property
    def rows_jit(self) -> Callable:
        return jax.jit(self.rows, static_argnames="length")

    @functools.cached_property
    def columns_jit(self) -> Callable:
        return jax.jit(self.columns, static_argnames="length")

    @functools.cached_property
    def batched_kernels(self) -> dict:
        """The kernels of a map, per layout of its points (``_batched.batched``)."""
        return {}

    def __getstate__(self) -> dict:
        jitted = ("jacobian_jit", "primal_jit", "rows_jit", "columns_jit", "data_jit",
                  "_gather", "_host_gather", "_indices", "_index_leaves", "_block_tree",
                  "batched_kernels")
        return {k: v for k, v in self.__dict__.items() if k not in jitted} | {"variants": {}}
