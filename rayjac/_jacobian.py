"""``rayjac.jacfwd``: checks at the boundary, one traced program per call signature, the
return table of ``brainpy.math.jacfwd``, the in-process and streaming paths, and ``jf.map`` (the
Jacobians at many points: see ``_map``)."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import (_check_argnums, _check_grad_vars, _check_input_dtype,
                      _check_no_variable_arguments, _check_outermost, _check_output_dtype,
                      _check_positive)
from ._map import MapStream, assemble, local_parts, map_in_process, map_inputs
from .core._basis import Layout, TangentBasis
from .core._batched import stacked
from .core._plan import SparsePlan, detect_pattern, make_plan, refresh
from .core._program import TangentProgram
from .core._variables import StateTrace, Variable, _trace_stack
from .sparsity import Sparsity
from .sparsity._pattern import check_option as check_sparsity

_is_var = lambda x: isinstance(x, Variable)  # noqa: E731


@dataclasses.dataclass
class JacStream:
    """A call's Jacobian as J^T row shards: ``(start column, rows per output leaf)``, in any
    order, plus the primal value and aux (JAX arrays; ``None`` when not requested)."""

    layout: Layout
    value: Any
    aux: Any
    shards: Iterator[tuple[int, list[np.ndarray]]]
    cancel: Callable[[], None] = lambda: None  # stops shards still running on workers
    # Sparse calls: the plan, and shards are SparseShard(start, stop, values): the nonzeros of
    # colours [start, stop), per output leaf in plan.positions(k, start, stop) order.
    plan: SparsePlan | None = None
    analysis: Any = None  # spectra to compute (rayjac.analysis._jobs.Analysis), as written


def jacfwd(func: Callable, grad_vars: Any = None, argnums: int | Sequence[int] | None = None,
           has_aux: bool | None = None, return_value: bool = False, holomorphic: bool = False,
           dyn_vars: Any = None, child_objs: Any = None, *, shards: int | None = None,
           chunk_size: int | None = None, sparsity: Any = None) -> JacFwd:
    """Forward-mode Jacobian of ``func``, with the semantics of ``brainpy.math.jacfwd``.

    Args:
      func: the function; it may read and write ``rayjac.Variable`` objects it closes over.
      grad_vars: a Variable, or a list, tuple or dict of Variables, to differentiate.
      argnums: positional argument(s) to differentiate (default ``0`` without ``grad_vars``).
      has_aux: ``func`` returns ``(output, aux)``.
      return_value: also return the output of ``func``.
      holomorphic: ``func`` is holomorphic in complex inputs.
      dyn_vars: deprecated and ignored (Variables are found automatically).
      child_objs: deprecated and ignored.
      shards: ``None`` runs in this process; ``k`` splits the tangent columns into ``k`` shards
        computed by Ray workers.
      chunk_size: push at most this many tangent columns (colours, when sparse) through
        ``func`` at a time.
      sparsity: ``None`` for dense blocks; ``"auto"`` to detect the pattern from the jaxpr, or
        a pattern (``rayjac.Sparsity``, boolean array, ``scipy.sparse`` or 2-D BCOO of the flat
        ``(m, n)`` Jacobian): one JVP per colour of its columns, and BCOO blocks.

    Returns:
      A callable with ``func``'s signature returning, per the return table of the README,
      ``jac``, ``(jac, aux)``, ``(jac, value)`` or ``(jac, value, aux)``.

    Example:
      >>> import jax.numpy as jnp, rayjac
      >>> rayjac.jacfwd(lambda x: x ** 2)(jnp.arange(3.0))
      Array([[0., 0., 0.],
             [0., 2., 0.],
             [0., 0., 4.]], dtype=float32)
    """
    for name, given in (("dyn_vars", dyn_vars), ("child_objs", child_objs)):
        if given is not None:
            warnings.warn(f"rayjac.jacfwd: `{name}` is deprecated and ignored; the Variables "
                          "func uses are collected automatically.", DeprecationWarning, 2)
    if not callable(func):
        raise TypeError(f"jacfwd expects a callable func, got {type(func).__name__}.")
    _check_grad_vars(grad_vars)
    _check_positive("shards", shards)
    _check_positive("chunk_size", chunk_size)
    check_sparsity(sparsity)
    if argnums is None and grad_vars is None:
        argnums = 0
    return JacFwd(func, grad_vars, argnums, bool(has_aux), bool(return_value),
                  bool(holomorphic), shards, chunk_size, sparsity)


def _is_weak(x: Any) -> bool:
    return bool(getattr(x, "weak_type", False))


def _is_dynamic(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def _as_input(x: Any) -> Any:
    """A differentiated leaf as JAX takes it (x64 rules); a ``ShapeDtypeStruct`` (a map's
    point) stays abstract."""
    if isinstance(x, jax.ShapeDtypeStruct):
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        return x if dtype == x.dtype else jax.ShapeDtypeStruct(x.shape, dtype,
                                                               weak_type=x.weak_type)
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _static_key(x: Any) -> Any:
    """Equal keys only for values that trace alike: 2 and 2.0 (or 1 and True) are equal in
    Python but not to ``func``, so the type is part of the key, as for JAX's static arguments."""
    try:
        hash(x)
        return type(x), x
    except TypeError:
        return type(x), ("id", id(x))


class JacFwd:
    """The transformed function returned by ``rayjac.jacfwd``."""

    def __init__(self, func, grad_vars, argnums, has_aux, return_value, holomorphic, shards,
                 chunk_size, sparsity=None):
        self.func, self.grad_vars, self.argnums = func, grad_vars, argnums
        self.has_aux, self.return_value, self.holomorphic = has_aux, return_value, holomorphic
        self.shards, self.chunk_size, self._sparsity = shards, chunk_size, sparsity
        self._var_list = tuple(jax.tree_util.tree_leaves(grad_vars, is_leaf=_is_var))
        self._programs: dict[Any, TangentProgram] = {}
        # func's name, docstring and signature (__wrapped__), as jax.jacfwd keeps them: so
        # jax.jit(..., static_argnames=...) and inspect.signature see func's parameters.
        functools.update_wrapper(self, func, updated=())

    def __call__(self, *args, **kwargs):
        if self.shards is not None:
            return self._call_sharded(args, kwargs)
        program, diff, const, state = self._prepare(args, kwargs)
        out, aux, written = None, None, []
        if self.return_value or self.has_aux or program.written:
            out, aux, written = program.primal_jit(diff, const, state)
        jac = program.jacobian_jit(diff, const, state)
        _apply_writes(program, written)
        return self._format(jac, out, aux)

    def sparsity(self, *args, **kwargs) -> Sparsity:
        """The sparsity pattern and colouring of this call's flat Jacobian: the given one, or
        (``sparsity="auto"`` or dense) the one detected from the jaxpr. No JVPs run and no
        Variable is written; the pattern is cached with the call signature's program."""
        program, diff, const, state = self._prepare(args, kwargs)
        if program.plan is not None:
            return program.plan.pattern
        if program.dense_pattern is None:
            program.dense_pattern = detect_pattern(program, diff, const, state)
        return program.dense_pattern

    def stream(self, args: tuple, kwargs: dict | None = None, *, workers: Any = None
               ) -> JacStream:
        """The Jacobian as shards of J^T rows (written to storage as they arrive).

        The primal (value, aux, new Variable values) is computed once, here, before any
        shard; the Variable writes are applied after the last shard.
        """
        return self._start(tuple(args), dict(kwargs or {}), workers, columns=False)[0]

    def _start(self, args: tuple, kwargs: dict, workers: Any, columns: bool
               ) -> tuple[JacStream, TangentProgram]:
        if self.shards is not None:
            _check_outermost(args, kwargs)
        program, diff, const, state = self._prepare(args, kwargs)
        if self.shards is None:
            out, aux, written = program.primal_jit(diff, const, state)
            shards = _local_shards(program, diff, const, state)
        else:
            from .engine import run_shards  # the one deferred import: Ray loads on first use
            shards = run_shards(program, diff, const, state, self.shards, workers, columns)
            try:  # while the workers run
                out, aux, written = jax.block_until_ready(program.primal_jit(diff, const, state))
            except BaseException:
                shards.cancel()
                raise
        return JacStream(program.layout, out if self.return_value else None,
                         aux if self.has_aux else None,
                         _then_write(shards, program, written),
                         getattr(shards, "cancel", lambda: None), program.plan), program

    def _call_sharded(self, args: tuple, kwargs: dict):
        stream, program = self._start(args, kwargs, None, columns=True)
        return self._format(assemble(program, stream.shards), stream.value, stream.aux)

    def map(self, *args, in_axes: Any = 0, states: dict | None = None,
            batch_size: int | None = None, **kwargs):
        """The Jacobians at B points, stacked along a new leading axis of every leaf.

        Returns what a loop of calls returns, stacked leaf by leaf: point ``i`` calls the
        transform with point ``i`` of each batched argument and each ``states`` value, every
        other Variable at its value when ``map`` starts. No Variable is ever written.

        Args:
          *args: the positional arguments; those with ``in_axes`` 0 carry the points on axis 0
            of every leaf.
          in_axes: ``0`` (every positional argument is batched), ``None`` (none is), or a tuple
            or list of 0/None, one per positional argument.
          states: ``{Variable: values}``, values of shape ``(B,) + v.shape`` and ``v``'s dtype:
            point ``i`` runs with ``v`` holding ``values[i]`` (``grad_vars`` may be among them).
          batch_size: at most this many points through a kernel at once (``None``: all of
            them, or of a shard); one compiled kernel serves any number of points.
          **kwargs: keyword arguments, the same at every point.

        Example:
          >>> import jax.numpy as jnp, rayjac
          >>> rayjac.jacfwd(lambda x: x ** 2).map(jnp.arange(4.0).reshape(2, 2)).shape
          (2, 2, 2)
        """
        if self.shards is None:
            program, points = map_inputs(self, args, kwargs, in_axes, states, batch_size)
            jac, out, aux = map_in_process(program, points, batch_size,
                                           self.return_value or self.has_aux)
            return self._format(jac, out, aux)
        stream, program = self._start_map(args, kwargs, in_axes, states, batch_size, None,
                                          columns=True)
        return self._format(assemble(program, stream.parts, stream.points), stream.value,
                            stream.aux)

    def map_stream(self, args: tuple, kwargs: dict | None = None, *, in_axes: Any = 0,
                   states: dict | None = None, batch_size: int | None = None,
                   workers: Any = None, analysis: Any = None) -> MapStream:
        """``jf.map`` as parts (``rayjac.core.MapPart``) written to storage as they arrive:
        rectangles of points x columns (colours, when sparse), numpy, in any order; in process,
        one part per batch of points. Value and aux are stacked up front; no Variable is
        written. With an ``analysis`` (``rayjac.analysis._jobs.Analysis``), sharded parts are
        whole points whose spectra the workers compute (``MapPart.spectra``)."""
        stream = self._start_map(tuple(args), dict(kwargs or {}), in_axes, states, batch_size,
                                 workers, columns=False, analysis=analysis)[0]
        stream.analysis = analysis
        return stream

    def flat_shape(self, *args, **kwargs) -> tuple[int, int]:
        """``(m, n)`` of this call's flat Jacobian (the total output size, the size of the
        differentiated inputs), from tracing alone: no JVP runs and no Variable is written.

        Example:
          >>> import jax.numpy as jnp, rayjac
          >>> rayjac.jacfwd(lambda x, y: x[:2] * y, argnums=(0, 1)).flat_shape(
          ...     jnp.ones(3), jnp.ones(2))
          (2, 5)
        """
        layout = self._prepare(args, kwargs)[0].layout
        return sum(math.prod(s) for s in layout.out_shapes), layout.basis.n

    def _start_map(self, args: tuple, kwargs: dict, in_axes: Any, states: Any,
                   batch_size: Any, workers: Any, columns: bool, analysis: Any = None
                   ) -> tuple[MapStream, TangentProgram]:
        if self.shards is not None:
            _check_outermost(args, kwargs, states)
        program, points = map_inputs(self, args, kwargs, in_axes, states, batch_size)
        if self.shards is None:
            parts, cancel = local_parts(program, points, batch_size), lambda: None
        else:
            from .engine import run_map  # the one deferred import: Ray loads on first use
            parts = run_map(program, points, self.shards, batch_size, workers, columns,
                            analysis)
            cancel = parts.cancel
        try:  # while the workers run
            out, aux = (jax.block_until_ready(stacked(program, "primal", points, batch_size))
                        if self.return_value or self.has_aux else (None, None))
        except BaseException:
            cancel()
            raise
        return MapStream(program.layout, points.count, out if self.return_value else None,
                         aux if self.has_aux else None, parts, cancel, program.plan), program

    def _format(self, jac, out, aux):
        if self.return_value and self.has_aux:
            return jac, out, aux
        if self.return_value:
            return jac, out
        if self.has_aux:
            return jac, aux
        return jac

    def _prepare(self, args: tuple, kwargs: dict, values: dict | None = None):
        """Checks, the flat inputs of this call, and its (cached) program. ``values`` overrides
        the values of some Variables. A map asks with ``ShapeDtypeStruct`` leaves for its
        points (the program needs only their shapes), which it gets back as they are."""
        _check_no_variable_arguments(args, kwargs)
        read = (lambda v: v.value) if not values else (  # noqa: E731
            lambda v: values[v] if v in values else v.value)
        argnums, diff, in_tree, leaves, const_tree = self._flatten(args, kwargs, read)
        diff = [_as_input(x) for x in diff]
        for x in diff:
            _check_input_dtype(self.holomorphic, x)
        single = isinstance(self.argnums, (int, np.integer))
        mask = tuple(_is_dynamic(x) for x in leaves)
        const = [x for x, dyn in zip(leaves, mask) if dyn]
        static = tuple(x for x, dyn in zip(leaves, mask) if not dyn)
        key = (in_tree, const_tree, mask, tuple(_static_key(x) for x in static),
               tuple((x.shape, x.dtype, _is_weak(x)) for x in diff + const), len(args))
        program = self._programs.get(key)
        if program is None:
            program = self._trace(TangentProgram(
                self.func, self._var_list, argnums, single, self.has_aux, in_tree,
                const_tree, static, mask, chunk_size=self.chunk_size), diff, const)
        state = [read(v) for v in program.other_vars]
        if key not in self._programs:
            if self._sparsity is not None:
                with jax.ensure_compile_time_eval():  # concrete under an outer jit too
                    plan = make_plan(program, self._sparsity, diff, const, state)
                program = dataclasses.replace(program, plan=plan)
            self._programs[key] = program
        elif program.plan is not None or program.dense_pattern is not None:
            # a read-only Variable the pattern read may have a new value: one stamp check each
            program = refresh(program, self._sparsity, diff, const, state)  # concrete inside
            self._programs[key] = program
        return program, diff, const, state

    def _flatten(self, args: tuple, kwargs: dict, read: Callable
                 ) -> tuple[tuple[int, ...], list, Any, list, Any]:
        """(argnums, differentiated leaves, their tree ``(var_part, arg_part)``, the call's
        other leaves, their tree ``(args less the differentiated ones, kwargs)``); ``read(v)``
        gives the value of a ``grad_vars`` Variable."""
        argnums = () if self.argnums is None else _check_argnums(self.argnums, len(args))
        var_part = None if self.grad_vars is None else jax.tree_util.tree_map(
            read, self.grad_vars, is_leaf=_is_var)
        arg_part = None
        if argnums:
            single = isinstance(self.argnums, (int, np.integer))
            arg_part = args[argnums[0]] if single else tuple(args[i] for i in argnums)
        diff, in_tree = jax.tree_util.tree_flatten((var_part, arg_part))
        rest = tuple(None if i in argnums else a for i, a in enumerate(args))
        leaves, const_tree = jax.tree_util.tree_flatten((rest, kwargs))
        return argnums, diff, in_tree, leaves, const_tree

    def _trace(self, program: TangentProgram, diff: list, const: list) -> TangentProgram:
        """Finds the Variables ``func`` touches and the shapes of its outputs (abstractly)."""
        record = StateTrace()
        abstract = lambda xs: [jax.ShapeDtypeStruct(  # noqa: E731
            x.shape, x.dtype, weak_type=_is_weak(x)) for x in xs]  # one trace of a jitted func
        try:
            out, _, _ = jax.eval_shape(lambda d, c: program.pure(d, c, [], record),
                                       abstract(diff), abstract(const))
        except _VALUE_DEPENDENT as err:
            raise TypeError(_TRACED_ONCE.format(err=err)) from err
        out_leaves, out_tree = jax.tree_util.tree_flatten(out)
        for leaf in out_leaves:
            _check_output_dtype(self.holomorphic, leaf.dtype)
        touched = set(program.grad_vars)
        layout = Layout(TangentBasis.from_leaves(diff), program.in_tree, out_tree,
                        tuple(tuple(x.shape) for x in out_leaves),
                        tuple(np.dtype(x.dtype) for x in out_leaves),
                        tuple(_is_weak(x) for x in out_leaves))
        return dataclasses.replace(
            program, other_vars=tuple(v for v in record.touched if v not in touched),
            written=tuple(record.written), order=tuple(record.order), layout=layout)


_VALUE_DEPENDENT = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                    jax.errors.TracerIntegerConversionError)
_TRACED_ONCE = (
    "func uses the value of an array in Python (an `if` or `assert` on it, bool(), int(), "
    "float() or np.asarray() of it). rayjac.jacfwd traces func once per call signature and "
    "reuses the compiled program (as jax.jit does), so Python cannot see values; jax.jacfwd, "
    "which runs op by op, can. Write branches with jnp.where(cond, a, b) or "
    "jax.lax.cond(cond, f_true, f_false, x), loops with jax.lax.fori_loop or while_loop, and "
    "checks with jax.debug or outside func; pass values that must be Python as static "
    "(non-array) arguments. JAX's error:\n{err}")


def _apply_writes(program: TangentProgram, written: list) -> None:
    """Each written Variable takes its new primal value, once per call."""
    if written and not _trace_stack() and any(isinstance(x, jax.core.Tracer) for x in written):
        raise TypeError(
            "func writes a rayjac.Variable, and this call runs inside jax.jit, vmap or another "
            "JAX transform, where the new value would be a leaked tracer. Call the rayjac.jacfwd "
            "function outside the transform, or return the new state instead of writing it.")
    for var, new in zip(program.written, written):
        var.value = new


def _then_write(shards: Iterator, program: TangentProgram, written: list) -> Iterator:
    """The shards, then the Variable writes: a call that fails part-way writes nothing."""
    yield from shards
    _apply_writes(program, written)


def _local_shards(program: TangentProgram, diff, const, state):
    """In-process shards: one per ``chunk_size`` columns or colours (all when it is None)."""
    n = program.size
    step = program.chunk_size or max(n, 1)
    for start in range(0, n, step):
        length = min(step, n - start)
        yield program.shard_item(start, start + length,
                                 program.shard(diff, const, state, start, length))
