"""Stateful variables and the traces that collect them while a function runs."""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

_local = threading.local()
# Every assignment of a Variable's value takes the next stamp: a cached sparsity pattern that
# read a Variable's value is checked again only when its stamp has changed (O(1) otherwise).
_stamps = itertools.count(1)


def _trace_stack() -> list[StateTrace]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@jax.tree_util.register_pytree_node_class
class Variable:
    """A mutable JAX array that ``rayjac.jacfwd`` finds and differentiates automatically.

    Read it with ``.value``; assigning ``.value`` replaces it, keeping its shape and dtype.
    It behaves like an array in arithmetic and in ``jax.numpy`` functions.

    Example:
        >>> import jax.numpy as jnp, rayjac
        >>> v = rayjac.Variable(jnp.ones(3))
        >>> v.value = 2 * v.value
        >>> float(jnp.sum(jnp.sin(v) * v))
        5.455...
    """

    __array_priority__ = 100

    _detached = False  # a node rebuilt by tree_unflatten: see tree_unflatten
    _stamp = 0  # of the last assignment of the value: see stamp()

    def __init__(self, value: Any):
        if isinstance(value, Variable):
            value = value.value
        self._value = jnp.asarray(value)
        self._stamp = next(_stamps)

    @property
    def value(self) -> jax.Array:
        stack = _trace_stack()
        return stack[-1].read(self) if stack and not self._detached else self._value

    @value.setter
    def value(self, new: Any) -> None:
        if isinstance(new, Variable):
            new = new.value
        new = new if isinstance(new, jax.Array) else jnp.asarray(new)
        _check_same_type(self, new)
        stack = _trace_stack()
        if stack and not self._detached:
            stack[-1].write(self, new)
        else:
            self._value = new
            self._stamp = next(_stamps)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    def __len__(self) -> int:
        if not self._value.shape:
            raise TypeError("len() of a 0-d Variable")
        return self._value.shape[0]

    def __repr__(self) -> str:
        return f"Variable(value={self._value!r})"

    def __jax_array__(self) -> jax.Array:
        return self.value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.value, dtype=dtype)

    def __getitem__(self, index):
        return self.value[index]

    def __iter__(self) -> Iterator:
        return iter(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __int__(self) -> int:
        return int(self.value)

    # Identity, not elementwise equality, so Variables can key dicts and sets.
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self.value == _unwrap(other)

    def __ne__(self, other):
        return self.value != _unwrap(other)

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        # A detached array-like node (as BrainPy's Array), not the original Variable: e.g. the
        # argument a jnp function's own jit rebuilds around its tracer. It holds that value and
        # is no state, so traces never record it (recording it leaked the inner tracer).
        var = object.__new__(cls)
        var._value, var._detached = children[0], True
        return var

    def __getstate__(self) -> dict:
        if getattr(_local, "shipping", False):  # the value travels separately: see shipping()
            return {"_spec": (tuple(self._value.shape), np.dtype(self._value.dtype).str)}
        return {"_value": np.asarray(self._value)}

    def __setstate__(self, state: dict) -> None:
        if "_spec" in state:
            self._value = jax.ShapeDtypeStruct(state["_spec"][0], np.dtype(state["_spec"][1]))
        else:
            self._value = jnp.asarray(state["_value"])
        self._stamp = next(_stamps)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)


def stamp(var: Variable) -> int:
    """A number that changes whenever ``var``'s value is assigned (never reused in a process)."""
    return var._stamp


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, Variable) else x


def _binary(op, reflected: bool = False):
    if reflected:
        return lambda self, other: op(_unwrap(other), self.value)
    return lambda self, other: op(self.value, _unwrap(other))


def _unary(op):
    return lambda self: op(self.value)


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and", "or", "xor", "lshift", "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(Variable, f"__{_name}__", _binary(_op))
    setattr(Variable, f"__r{_name}__", _binary(_op, reflected=True))
for _name in ("lt", "le", "gt", "ge"):
    setattr(Variable, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Variable, f"__{_name}__", _unary(getattr(operator, _name)))
Variable.T = property(lambda self: self.value.T)


def _check_same_type(var: Variable, new: Any) -> None:
    old = var._value
    if tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
        raise ValueError(
            f"Cannot assign a value of shape {tuple(new.shape)} and dtype {new.dtype} to a "
            f"Variable of shape {tuple(old.shape)} and dtype {old.dtype}: a Variable keeps its "
            f"shape and dtype. Cast or reshape the new value first (e.g. "
            f"`.astype({old.dtype})`); the old value is kept.")


@contextlib.contextmanager
def shipping() -> Iterator[None]:
    """Within it, Variables pickle as shape and dtype only (a placeholder, never read): for
    programs shipped to workers, which receive every value they read as a separate input."""
    _local.shipping = True
    try:
        yield
    finally:
        _local.shipping = False


class StateTrace:
    """Values of Variables within one functional call: reads are recorded, writes kept local.

    Each Variable read for the first time takes its value from the enclosing trace (or its own
    value when there is none), so nested transforms see the tracers of outer ones.
    """

    def __init__(self, values: dict[Variable, Any] | None = None):
        self.values: dict[Variable, Any] = dict(values or {})
        self.touched: dict[Variable, None] = dict.fromkeys(self.values)
        self.written: dict[Variable, None] = {}
        self.order: dict[Variable, None] = {}  # as func first reads or writes them

    def read(self, var: Variable) -> Any:
        self.order.setdefault(var, None)
        if var not in self.values:
            stack = _trace_stack()
            index = stack.index(self)
            self.values[var] = stack[index - 1].read(var) if index > 0 else var._value
            self.touched[var] = None
        return self.values[var]

    def write(self, var: Variable, new: Any) -> None:
        self.order.setdefault(var, None)
        self.touched.setdefault(var, None)
        self.values[var] = new
        self.written[var] = None

    def __enter__(self) -> StateTrace:
        _trace_stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        popped = _trace_stack().pop()
        if popped is not self:
            raise RuntimeError("rayjac state traces were exited out of order")
