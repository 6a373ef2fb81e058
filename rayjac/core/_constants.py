"""Read-only Variables as constants of a sparse call (SPEC 1.6): which of their values a
detected pattern read, the O(1) check that they are unchanged, and their names for warnings.

A pattern detected with a read-only Variable's value holds until that value changes in a way
the pattern read: its zeros (``"mask"``) or, where detection read more (an index, a
predicate), any of it (``"value"``). A Variable whose value detection did not read needs no
check at all. Each check compares the Variable's assignment stamp first, so an unchanged
Variable costs one integer comparison, and a changed one a fingerprint of its new value.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable

import jax
import numpy as np

from ._variables import Variable, stamp


def concrete(x: Any) -> bool:
    """Whether ``x`` is a value detection may read (not a tracer, not a map's point spec)."""
    return isinstance(x, (np.ndarray, np.generic)) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer))


def fingerprint(value: Any, kind: str) -> bytes:
    """A digest of the value (``"value"``) or of where it is nonzero (``"mask"``)."""
    host = np.ascontiguousarray(np.asarray(value))
    data = np.packbits(host != 0) if kind == "mask" else host.view(np.uint8)
    digest = hashlib.blake2b(data.reshape(-1), digest_size=20)
    digest.update(repr((host.shape, host.dtype.str)).encode())
    return digest.digest()


@dataclasses.dataclass(eq=False)
class Watch:
    """The read-only Variables a detected pattern depends on, by index in ``other_vars``:
    ``entries[k] = [index, stamp, kind, fingerprint]`` (stamps advance on a check that
    finds an equal fingerprint); ``unknown``: read-only ones whose value was not concrete
    (a map's points, a tracer), so the pattern holds for any value of theirs."""

    entries: list[list]
    unknown: tuple[int, ...] = ()

    @classmethod
    def build(cls, other_vars: tuple, state: list, read_only: list[int], values: frozenset,
              masks: frozenset) -> Watch:
        entries = []
        for i in read_only:
            kind = "value" if i in values else "mask" if i in masks else None
            if kind is not None:  # else the pattern holds for any value of it
                entries.append([i, stamp(other_vars[i]), kind, fingerprint(state[i], kind)])
        return cls(entries, tuple(i for i in read_only if not concrete(state[i])))

    def changed(self, other_vars: tuple, state: list) -> bool:
        """Whether the pattern may no longer hold (or may now be tighter) for ``state``."""
        for entry in self.entries:
            index, seen, kind, digest = entry
            value = state[index]
            if not concrete(value):
                return True  # now unknown (e.g. a map's points of it): detect without it
            now = stamp(other_vars[index])
            if now != seen:
                if fingerprint(value, kind) != digest:
                    return True
                entry[1] = now
        return any(concrete(state[i]) for i in self.unknown)


def describe(var: Variable, names: dict[int, str]) -> str:
    """``Variable `W` (shape (2, 2), float32)``, or without the name when none was found."""
    name = names.get(id(var))
    shape = f"shape {tuple(var.shape)}, {np.dtype(var.dtype).name}"
    return f"the Variable `{name}` ({shape})" if name else f"a Variable of {shape}"


def variable_names(func: Callable, depth: int = 3) -> dict[int, str]:
    """Names under which ``func`` reaches Variables (by ``id``): its closure and the globals
    it names, one attribute level into objects there, and the functions it closes over."""
    found: dict[int, str] = {}
    func = getattr(func, "__wrapped__", func)
    if isinstance(func, functools.partial):
        return variable_names(func.func, depth)
    owner = getattr(func, "__self__", None)
    if owner is not None:
        _look(found, "self", owner)
    code = getattr(func, "__code__", None)
    if code is None:
        return found
    cells = zip(code.co_freevars, getattr(func, "__closure__", None) or ())
    scope = [(name, cell.cell_contents) for name, cell in cells if _filled(cell)]
    scope += [(name, func.__globals__[name]) for name in code.co_names
              if name in getattr(func, "__globals__", {})]
    for name, obj in scope:
        _look(found, name, obj)
        if depth and callable(obj) and not isinstance(obj, (type, Variable)):
            for key, value in variable_names(obj, depth - 1).items():
                found.setdefault(key, value)
    return found


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure cell not yet assigned
        return False
    return True


def _look(found: dict[int, str], name: str, obj: Any) -> None:
    if isinstance(obj, Variable):
        found.setdefault(id(obj), name)
        return
    attrs = getattr(obj, "__dict__", None)
    items = obj.items() if isinstance(obj, dict) else attrs.items() if isinstance(
        attrs, dict) and not isinstance(obj, type) else ()
    for key, value in list(items)[:256]:
        if isinstance(value, Variable):
            found.setdefault(id(value), f"{name}[{key!r}]" if isinstance(obj, dict)
                             else f"{name}.{key}")
