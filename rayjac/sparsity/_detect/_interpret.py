"""The walk over a jaxpr: values in, one rule per equation, constant folding, the fallback."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.extend import core as jcore

from . import _contract, _control, _elementwise, _indexing, _layout, _linalg, _loops, _reduce
from ._deps import Val, bind, everything, identity, repeat, stack
from ._known import Uses, derived, fixed, known_input

# Folding an output this large costs more than the pruning it can buy; unknown is always safe.
_FOLD_LIMIT = 2**24


class ConservativeRuleWarning(UserWarning):
    """Sparsity detection assumed more dependencies than there may be (the pattern is safe)."""


Rule = Callable[["Interpreter", jcore.JaxprEqn, list[Val]], list[Val]]


class Interpreter:
    """Runs jaxprs on abstract values for one ``detect`` call (n columns)."""

    def __init__(self, n: int):
        self.n = n
        self.warnings: dict[str, str] = {}  # one message per primitive and call
        self.jvp_active: list = []  # keys of the custom_jvp rules being followed
        self.cache: dict = {}
        self.uses = Uses()  # what the rules read of known inputs' values

    def value(self, v: Val) -> np.ndarray | None:
        """``v``'s known value (``None``: unknown), for a decision that reads all of it."""
        return self.uses.value(v)

    def nonzero(self, v: Val) -> np.ndarray | None:
        """A superset of where ``v`` is nonzero (``None``: unknown), to prune with."""
        return self.uses.nonzero(v)

    def warn(self, name: str, message: str) -> None:
        """Record a conservative step, reported once per primitive when detection ends."""
        self.warnings.setdefault(name, message)

    def cached(self, key, make: Callable):
        """Memoised per call, e.g. a traced JVP rule inside a loop body."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def run(self, closed, args: Sequence[Val]) -> list[Val]:
        """Interpret a ClosedJaxpr (or an open Jaxpr without constvars) on ``args``."""
        if isinstance(closed, jcore.ClosedJaxpr):
            consts = self.cached(("consts", id(closed)), lambda: (closed, _const_vals(closed)))[1]
            return self._run(closed.jaxpr, consts, args)
        return self._run(closed, [], args)

    def _run(self, jaxpr: jcore.Jaxpr, consts: list[Val], args: Sequence[Val]) -> list[Val]:
        env: dict = {}
        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        read = partial(_read, env)
        frees = self.cached(("frees", id(jaxpr)), lambda: (jaxpr, _last_uses(jaxpr)))[1]
        for eqn, dead in zip(jaxpr.eqns, frees):
            outs = self.apply(eqn, [read(v) for v in eqn.invars])
            for var, out in zip(eqn.outvars, outs):
                if not isinstance(var, jcore.DropVar):
                    env[var] = out
            for var in dead:
                env.pop(var, None)
        return [read(v) for v in jaxpr.outvars]

    def apply(self, eqn: jcore.JaxprEqn, args: list[Val]) -> list[Val]:
        """One equation: fold it when nothing depends on the inputs, else apply its rule."""
        name = eqn.primitive.name
        if all(a.deps is None for a in args) and name not in _VALUE_CALLS:
            return _fold(eqn, args)
        rule = RULES.get(name)
        if rule is None:
            return self.fallback(eqn, args)
        try:
            outs = rule(self, eqn, args)
        except Exception as err:  # noqa: BLE001 - e.g. parameters of a newer jax: stay safe
            return self.fallback(eqn, args, why=f"the sparsity rule for primitive '{name}' "
                                 f"failed ({type(err).__name__}: {err}), so each of its outputs "
                                 "is assumed to depend on all of its inputs")
        return [_finish(o, v.aval) for o, v in zip(outs, eqn.outvars)]

    def fallback(self, eqn: jcore.JaxprEqn, args: Sequence[Val], why: str | None = None):
        """Every output element depends on every input element; warns."""
        name = eqn.primitive.name
        self.warn(name, why or f"no sparsity rule for primitive '{name}', so each of its "
                  "outputs is assumed to depend on all of its inputs")
        row = everything(args, self.n)
        return [Val(v.aval.shape, v.aval.dtype, repeat(row, math.prod(v.aval.shape)))
                for v in eqn.outvars]


def _read(env: dict, atom) -> Val:
    if isinstance(atom, jcore.Literal):
        aval = atom.aval
        return fixed(aval.shape, aval.dtype, _as_array(atom.val, aval.dtype))
    return env[atom]


def _as_array(x, dtype) -> np.ndarray | None:
    """A host copy of a trace-time constant; ``None`` for what numpy cannot hold (PRNG keys)."""
    try:
        return np.asarray(x, dtype=dtype)
    except Exception:  # noqa: BLE001 - an unreadable constant is just an unknown value
        return None


def _const_vals(closed: jcore.ClosedJaxpr) -> list[Val]:
    return [fixed(v.aval.shape, v.aval.dtype, _as_array(c, v.aval.dtype))
            for v, c in zip(closed.jaxpr.constvars, closed.consts)]


def _last_uses(jaxpr: jcore.Jaxpr) -> list[list]:
    """For each equation, the variables that nothing later reads (freed to bound memory)."""
    keep = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    last: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                last[v] = i
    frees: list[list] = [[] for _ in jaxpr.eqns]
    for v, i in last.items():
        if v not in keep:
            frees[i].append(v)
    return frees


def _finish(out: Val, aval) -> Val:
    """Integer and boolean results have no derivative."""
    if out.deps is not None and not jnp.issubdtype(aval.dtype, np.inexact):
        return Val(out.shape, out.dtype)
    return out


def _fold(eqn: jcore.JaxprEqn, args: list[Val]) -> list[Val]:
    """Outputs of an equation that depends on no input: evaluated when its inputs are known."""
    avals = [v.aval for v in eqn.outvars]
    unknown = [Val(a.shape, a.dtype) for a in avals]
    if eqn.effects or any(a.value is None for a in args):
        return unknown
    if sum(math.prod(a.shape) for a in avals) > _FOLD_LIMIT:
        return unknown
    try:
        outs = bind(eqn.primitive, eqn.params, [a.value for a in args])
    except Exception:  # noqa: BLE001 - a primitive that will not run eagerly is just unknown
        return unknown
    return derived(eqn, args, avals, [_as_array(o, a.dtype) for a, o in zip(avals, outs)])


_UNARY = """neg exp exp2 log log1p expm1 sin cos tan asin acos atan sinh cosh tanh asinh acosh
    atanh sqrt rsqrt cbrt abs logistic erf erfc erf_inv lgamma digamma bessel_i0e bessel_i1e
    square real imag conj copy copy_p reduce_precision convert_element_type
    bitcast_convert_type""".split()
_NARY = """add add_any sub max min pow atan2 rem nextafter complex clamp polygamma igamma igammac
    igamma_grad_a random_gamma_grad zeta regularized_incomplete_beta""".split()
_ZERO = """floor ceil round sign is_finite not and or xor eq ne lt le gt ge eq_to le_to lt_to
    shift_left shift_right_arithmetic shift_right_logical population_count clz stop_gradient
    argmax argmin reduce_and reduce_or reduce_xor iota random_bits random_seed random_wrap
    random_unwrap random_split random_fold_in rng_bit_generator mulhi platform_index
    debug_callback debug_print dce_sink lu_pivots_to_permutation""".split()
_SAME = """optimization_barrier pvary device_put sharding_constraint reshard layout_constraint
    name""".split()
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "core_call": "call_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
          "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr"}
# Calls are entered even without dependencies, so that known values flow through them.
_VALUE_CALLS = {*_CALLS, "custom_jvp_call"}
_SCATTERS = """scatter scatter-add scatter_add scatter-sub scatter_sub scatter-mul scatter_mul
    scatter-min scatter_min scatter-max scatter_max""".split()

# The dispatch table: primitive name -> rule(interpreter, eqn, args) -> output values.
RULES: dict[str, Rule] = {
    **dict.fromkeys(_UNARY, _elementwise.unary),
    **dict.fromkeys(_NARY, _elementwise.nary),
    **dict.fromkeys(_ZERO, _elementwise.zero),
    **dict.fromkeys(_SAME, _elementwise.same_shapes),
    "mul": _elementwise.mul,
    "div": _elementwise.div,
    "integer_pow": _elementwise.integer_pow,
    "select_n": _elementwise.select_n,
    "reshape": _layout.keep_order,
    "squeeze": _layout.keep_order,
    "expand_dims": _layout.keep_order,
    "transpose": _layout.transpose,
    "broadcast_in_dim": _layout.broadcast_in_dim,
    "rev": _layout.rev,
    "slice": _layout.slice_,
    "concatenate": _layout.concatenate,
    "pad": _layout.pad,
    "split": _layout.split,
    "stack": _layout.by_ids,
    "tile": _layout.by_ids,
    "unstack": _layout.by_ids,
    "dynamic_slice": _indexing.dynamic_slice,
    "dynamic_update_slice": _indexing.dynamic_update_slice,
    "gather": _indexing.gather,
    **dict.fromkeys(_SCATTERS, _indexing.scatter),
    **dict.fromkeys(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod"], _reduce.reduce),
    "reduce": _reduce.reduce,
    **dict.fromkeys(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"],
                    _reduce.cumulative),
    "sort": _reduce.sort,
    "top_k": _reduce.top_k,
    "fft": _reduce.fft,
    **dict.fromkeys(["reduce_window_sum", "reduce_window_max", "reduce_window_min",
                     "reduce_window"], _reduce.reduce_window),
    "dot_general": _contract.dot_general,
    "conv_general_dilated": _contract.conv_general_dilated,
    **{k: partial(_control.call, param=v) for k, v in _CALLS.items()},
    "custom_jvp_call": _control.custom_jvp_call,
    "cond": _control.cond,
    "while": _loops.while_loop,
    "scan": _loops.scan,
    "cholesky": _linalg.cholesky,
    "triangular_solve": _linalg.triangular_solve,
    "lu": _linalg.lu,
    "qr": _linalg.qr,
    "custom_linear_solve": _linalg.custom_linear_solve,
}


class Reads(NamedTuple):
    """What a pattern read of the known inputs of ``detect_reads`` (their indices)."""

    values: frozenset  # may depend on any change of these values
    masks: frozenset  # depends only on where these are zero


def detect(jaxpr: jcore.ClosedJaxpr, seeded: Sequence[bool],
           known: Sequence[np.ndarray | None] | None = None) -> sp.csr_array:
    """Global sparsity pattern of d(outputs)/d(seeded inputs) of a closed jaxpr.

    Input i of the jaxpr is differentiated when ``seeded[i]``; its elements (row-major) get
    consecutive column numbers, in input order, so n is the total size of the seeded inputs.
    Rows are the outputs' elements, row-major, in output order (m is the total output size).
    Unseeded inputs have no dependencies and unknown values, unless ``known[i]`` gives one
    (as for a read-only Variable); closure constants and literals have known values. Known
    values may prune entries. The pattern holds for every value of the seeded and unknown
    inputs: it may have more entries than needed, never fewer. Primitives without a rule (and
    loops that do not settle) are handled conservatively, with one ``ConservativeRuleWarning``
    per primitive and call.

    Args:
        jaxpr: e.g. ``jax.make_jaxpr(fn)(*avals)``.
        seeded: one flag per jaxpr input.
        known: optional, one value (numpy, the input's shape) or ``None`` per jaxpr input;
            seeded inputs must have ``None``.

    Returns:
        A bool ``scipy.sparse.csr_array`` of shape (m, n) with sorted indices.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> jaxpr = jax.make_jaxpr(lambda x: x[1:] - x[:-1])(jnp.zeros(4))
        >>> detect(jaxpr, [True]).toarray().astype(int)
        array([[1, 1, 0, 0],
               [0, 1, 1, 0],
               [0, 0, 1, 1]])
        >>> w = np.array([[0.0, 2.0], [0.0, 0.0]], np.float32)
        >>> jaxpr = jax.make_jaxpr(lambda x, w: w @ x)(jnp.zeros(2), w)
        >>> detect(jaxpr, [True, False], known=[None, w]).toarray().astype(int)
        array([[0, 1],
               [0, 0]])
    """
    return detect_reads(jaxpr, seeded, known)[0]


def detect_reads(jaxpr: jcore.ClosedJaxpr, seeded: Sequence[bool],
                 known: Sequence[np.ndarray | None] | None = None
                 ) -> tuple[sp.csr_array, Reads]:
    """``detect``, and what the pattern read of the ``known`` inputs (``Reads``): a new
    value of an input in neither set keeps the pattern; one in ``masks`` keeps it when its
    zeros are unchanged."""
    in_avals = [v.aval for v in jaxpr.jaxpr.invars]
    known = list(known) if known is not None else [None] * len(in_avals)
    for what, given in (("seeded flag", seeded), ("known value (or None)", known)):
        if len(given) != len(in_avals):
            raise ValueError(f"detect expected one {what} per jaxpr input ({len(in_avals)}), "
                             f"but got {len(given)}.")
    sizes = [math.prod(a.shape) for a in in_avals]
    n = sum(s for s, flag in zip(sizes, seeded) if flag)
    args, offset = [], 0
    for i, (aval, size, flag, value) in enumerate(zip(in_avals, sizes, seeded, known)):
        # Integer inputs keep their columns but, as in JAX, have no derivative.
        live = flag and jnp.issubdtype(aval.dtype, np.inexact)
        if value is not None and not flag:
            args.append(known_input(i, aval.shape, aval.dtype, np.asarray(value, aval.dtype)))
        else:
            args.append(Val(aval.shape, aval.dtype, identity(offset, size, n) if live else None))
        offset += size if flag else 0
    interp = Interpreter(n)
    outs = [_finish(o, v.aval) for o, v in zip(interp.run(jaxpr, args), jaxpr.jaxpr.outvars)]
    for name, why in interp.warnings.items():
        warnings.warn(
            f"Sparsity detection: {why}. The detected pattern may have more entries than "
            f"needed (never fewer). To use a tighter one, pass your own pattern with "
            f"sparsity=.", ConservativeRuleWarning, stacklevel=3)
    m = sum(o.size for o in outs)
    pattern = stack([(o.deps, o.size) for o in outs], n)
    uses = interp.uses
    given = frozenset(i for i, v in enumerate(known) if v is not None and not seeded[i])
    values = given if uses.untracked else frozenset(uses.values) & given
    reads = Reads(values, (frozenset(uses.masks) & given) - values)
    return (pattern if pattern is not None else sp.csr_array((m, n), dtype=bool)), reads
