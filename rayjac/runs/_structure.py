"""A sweep point's function as a program of its structure: traced once to a jaxpr whose closure
constants and top-level literals are lifted out as inputs, and keyed by what is left.

Two points with the same key differ only in values: the constants and literals of the jaxpr,
the array leaves of the arguments and the values of the problem's Variables. One compiled
program then serves both, called with each point's own values (``_batch``). Everything else
is in the key: the equations and their parameters, shapes and dtypes, the values of literals
and constants inside nested jaxprs (a ``jit``, ``scan`` or ``cond`` body), the identity of any
Python callable the jaxpr holds (a ``custom_jvp`` rule, a callback), the non-array arguments,
the Variables' names and the config's options other than ``params``. Python control flow that
a parameter decides gives another jaxpr, hence another key: results stay those of one run
per point.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from ..core._problem import Problem
from ..core._variables import StateTrace, Variable


@dataclasses.dataclass(eq=False)
class Traced:
    """One point's function as a lifted jaxpr and the values of its inputs.

    The jaxpr's inputs are, in order: ``lifts`` (closure constants, then top-level literals:
    the values a program may take as inputs), the array leaves of the arguments, and the values
    of ``variables`` (the problem's named Variables, in its order); its outputs are the leaves
    of the function's output (``out_tree``), then each Variable's value after the call."""

    key: str
    jaxpr: Any
    lifts: list[np.ndarray]
    args: tuple
    arrays: list[bool]  # per leaf of ``args``: an array (an input), else static (in the key)
    args_tree: Any
    out_tree: Any
    variables: tuple[Variable, ...]
    names: tuple[str, ...]
    written: tuple[str, ...] = ()  # the names of the Variables func writes

    def constants(self, grad_vars: Any) -> str:
        """A digest of what sparsity detection reads as constants of the call: the array
        constants and the values of the Variables func only reads (not ``grad_vars``)."""
        differentiated = {grad_vars} if isinstance(grad_vars, str) else set(grad_vars or ())
        values = [np.asarray(x) for x in self.lifts if np.ndim(x)] + [
            np.asarray(v._value) for name, v in zip(self.names, self.variables)
            if name not in differentiated and name not in self.written]
        return ",".join(_digest(v) for v in values)

    def array_leaves(self, args: tuple) -> list:
        return [x for x, is_array in zip(jax.tree_util.tree_leaves(args), self.arrays)
                if is_array]


class Untraceable(Exception):
    """The point's function cannot be keyed (a map problem, a Variable argument, a trace
    error): it runs on its own, as a plain run."""


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def trace(problem: Problem, options: str) -> Traced:
    """The point's :class:`Traced` form; ``options`` (the config without its params) is part of
    the key. Raises :class:`Untraceable` for a point that must run on its own."""
    if problem.is_map:
        raise Untraceable("a map problem (in_axes or states)")
    leaves, args_tree = jax.tree_util.tree_flatten(problem.args)
    if any(isinstance(x, Variable) for x in leaves):
        raise Untraceable("a Variable passed as an argument")
    arrays = [_is_array(x) for x in leaves]
    names = tuple(problem.variables)
    variables = tuple(problem.variables[name] for name in names)

    seen: list[StateTrace] = []

    def pure(inputs, values):
        it = iter(inputs)
        full = [next(it) if is_array else x for x, is_array in zip(leaves, arrays)]
        with StateTrace(dict(zip(variables, values))) as state:
            seen.append(state)
            out = problem.func(*jax.tree_util.tree_unflatten(args_tree, full))
        return out, [state.values[v] for v in variables]  # and the Variables' new values

    try:
        closed, shape = jax.make_jaxpr(pure, return_shape=True)(
            [x for x, a in zip(leaves, arrays) if a], [v._value for v in variables])
    except Exception as err:  # the plain run raises it again, with its own context
        raise Untraceable(f"{type(err).__name__}: {err}") from err
    jaxpr, lifts = _lift(closed)
    out_tree = jax.tree_util.tree_structure(shape[0])
    statics = [repr((type(x).__name__, x)) for x, a in zip(leaves, arrays) if not a]
    text = "\n".join([options, repr(names), str(args_tree), repr(statics), str(out_tree),
                      _text(jaxpr), *_identities(jaxpr)])
    key = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    written = tuple(name for name, var in zip(names, variables) if var in seen[-1].written)
    return Traced(key, jaxpr, lifts, problem.args, arrays, args_tree, out_tree, variables,
                  names, written)


def _lift(closed: Any) -> tuple[Any, list[np.ndarray]]:
    """The jaxpr with its constants and top-level literals as leading inputs, and their values."""
    jaxpr = closed.jaxpr
    new_vars, values = [], []

    def lifted(atom: Any) -> Any:
        if not isinstance(atom, jcore.Literal):
            return atom
        var = jcore.Var(atom.aval)
        new_vars.append(var)
        values.append(np.asarray(atom.val, dtype=atom.aval.dtype))
        return var

    eqns = [eqn.replace(invars=[lifted(a) for a in eqn.invars])
            if any(isinstance(a, jcore.Literal) for a in eqn.invars) else eqn
            for eqn in jaxpr.eqns]
    outvars = [lifted(a) for a in jaxpr.outvars]
    consts = [np.asarray(c) if not isinstance(c, jax.Array) else c for c in closed.consts]
    invars = [*jaxpr.constvars, *new_vars, *jaxpr.invars]
    names = tuple(f"lift{i}" for i in range(len(invars) - len(jaxpr.invars)))
    info = jaxpr.debug_info
    info = info._replace(arg_names=names + tuple(info.safe_arg_names(len(jaxpr.invars))),
                         result_paths=tuple(info.safe_result_paths(len(outvars))))
    out = jcore.Jaxpr([], invars, outvars, eqns, jaxpr.effects, info)
    return out, consts + values


_NESTED: dict[int, tuple[Any, str]] = {}  # id -> (nested jaxpr, its text): JAX reuses them


def _text(jaxpr: Any) -> str:
    """The jaxpr's equations, shapes and dtypes (weak types marked ``~``), with variables
    named by first use and literals by value: equal for jaxprs that differ only in names."""
    names: dict[Any, str] = {}

    def atom(a: Any) -> str:
        if isinstance(a, jcore.Literal):
            return f"{a.val!r}:{_aval(a.aval)}"
        return names.setdefault(a, f"v{len(names)}")

    lines = [" ".join(f"{atom(v)}:{_aval(v.aval)}" for v in (*jaxpr.constvars, *jaxpr.invars))]
    for eqn in jaxpr.eqns:
        params = ",".join(f"{k}={_param(v)}" for k, v in sorted(eqn.params.items()))
        ins = " ".join(map(atom, eqn.invars))
        outs = " ".join(f"{atom(v)}:{_aval(v.aval)}" for v in eqn.outvars)
        lines.append(f"{outs} = {eqn.primitive.name}[{params}] {ins}")
    lines.append(" ".join(map(atom, jaxpr.outvars)))
    return "\n".join(lines)


def _aval(aval: Any) -> str:
    return aval.str_short() + ("~" if getattr(aval, "weak_type", False) else "")


def _param(value: Any) -> str:
    if isinstance(value, (jcore.ClosedJaxpr, jcore.Jaxpr)):
        kept = _NESTED.get(id(value))
        if kept is None or kept[0] is not value:
            inner = value.jaxpr if isinstance(value, jcore.ClosedJaxpr) else value
            kept = _NESTED[id(value)] = (value, "{" + _text(inner) + "}")
            if len(_NESTED) > 4096:  # forget the oldest
                del _NESTED[next(iter(_NESTED))]
        return kept[1]
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(_param, value)) + ")"
    return repr(value)


def _identities(jaxpr: Any) -> list[str]:
    """What the printed jaxpr does not show exactly: the identity of every Python callable in
    an equation's parameters (at any depth) and the values of nested jaxprs' constants."""
    found: list[str] = []
    for eqn in _equations(jaxpr):
        for value in eqn.params.values():
            for nested in _closed_jaxprs(value):
                found.extend(_digest(np.asarray(c)) for c in nested.consts)
            if _is_function(value):
                found.append(repr(_callables(value)))
    return found


def _is_function(value: Any) -> bool:
    """A parameter that is code (a rule, a callback), not a printed JAX object (a mesh)."""
    if isinstance(value, (types.FunctionType, functools.partial)):
        return True
    if hasattr(value, "f") and hasattr(value, "transforms"):  # jax's WrappedFun
        return True
    return callable(value) and not type(value).__module__.startswith("jax")


def _equations(jaxpr: Any):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for nested in _closed_jaxprs(value):
                yield from _equations(nested.jaxpr)
            if isinstance(value, jcore.Jaxpr):
                yield from _equations(value)


def _closed_jaxprs(value: Any) -> list:
    if isinstance(value, jcore.ClosedJaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, jcore.ClosedJaxpr)]
    return []


def _callables(obj: Any, depth: int = 0, seen: set | None = None) -> list:
    """Ids of the user's functions and ``custom_jvp``/``custom_vjp`` objects reachable from a
    parameter (through JAX's wrappers and closures), with digests of the arrays and numbers
    they close over. JAX's own per-trace closures are walked through, not counted."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return []
    seen.add(id(obj))
    out: list = []
    if isinstance(obj, types.FunctionType):
        if not (obj.__module__ or "").startswith("jax"):
            out.append(("fn", id(obj)))
        for cell in obj.__closure__ or ():
            try:
                out += _callables(cell.cell_contents, depth + 1, seen)
            except ValueError:  # an empty cell
                pass
    elif isinstance(obj, functools.partial):
        out += _callables(obj.func, depth + 1, seen)
        for arg in (*obj.args, *obj.keywords.values()):
            out += _callables(arg, depth + 1, seen)
    elif hasattr(obj, "f") and hasattr(obj, "transforms"):  # jax's WrappedFun
        out += _callables(obj.f, depth + 1, seen)
        for transform in obj.transforms:
            out += _callables(transform, depth + 1, seen)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            out += _callables(item, depth + 1, seen)
    elif type(obj).__name__ in ("custom_jvp", "custom_vjp"):
        out.append((type(obj).__name__, id(obj)))
    elif isinstance(obj, (np.ndarray, np.generic, int, float, complex)) or (
            _is_array(obj) and not isinstance(obj, jax.core.Tracer)):
        out.append(("value", _digest(np.asarray(obj))))
    elif callable(obj) and not isinstance(obj, type) and not type(obj).__module__.startswith(
            "jax"):
        out.append(("callable", id(obj)))
    return out


def _digest(value: np.ndarray) -> str:
    data = np.ascontiguousarray(value)
    digest = hashlib.blake2b(data.view(np.uint8).reshape(-1), digest_size=12)
    digest.update(repr((data.shape, data.dtype.str)).encode())
    return digest.hexdigest()


def same(a: Any, b: Any) -> bool:
    """Whether two input values are bitwise equal (NaNs and signed zeros included)."""
    if a is b:
        return True
    x, y = np.asarray(a), np.asarray(b)
    return x.shape == y.shape and x.dtype == y.dtype and (
        np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes())

