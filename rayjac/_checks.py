"""Checks at the public boundary of ``rayjac.jacfwd`` and ``jf.map``: options, arguments and
dtypes, with errors that say what was expected and what to do."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .core._variables import Variable, _trace_stack

_is_var = lambda x: isinstance(x, Variable)  # noqa: E731


def _check_grad_vars(grad_vars: Any) -> None:
    if grad_vars is None:
        return
    seen: dict[int, str] = {}
    leaves = jax.tree_util.tree_leaves_with_path(
        grad_vars, is_leaf=lambda x: x is None or _is_var(x))
    for path, leaf in leaves:
        where = "grad_vars" + jax.tree_util.keystr(path)
        if not isinstance(leaf, Variable):
            raise TypeError(f"{where} must be a rayjac.Variable, but received "
                            f"{type(leaf).__name__}: {leaf!r:.80}. Wrap state in "
                            "rayjac.Variable and pass the Variable objects as grad_vars.")
        if id(leaf) in seen:
            raise ValueError(f"{where} is the same Variable as {seen[id(leaf)]}; list each "
                             "Variable once in grad_vars.")
        seen[id(leaf)] = where


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}.")


def _check_argnums(argnums: Any, num_args: int) -> tuple[int, ...]:
    indices = tuple(argnums) if isinstance(argnums, (tuple, list)) else (argnums,)
    if not indices:
        raise ValueError(f"argnums={argnums!r} names no argument; give an int or a non-empty "
                         "tuple of ints, or None with grad_vars to differentiate only those.")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < num_args:
            raise ValueError(
                f"argnums={argnums!r}: index {i!r} is not valid for a call with {num_args} "
                f"positional argument(s); use non-negative ints below {num_args}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"argnums={argnums!r} names an argument twice; each of the call's "
                         f"{num_args} positional argument(s) may appear once.")
    return tuple(int(i) for i in indices)


def _check_input_dtype(holomorphic: bool, x: Any) -> None:
    dtype = np.dtype(x.dtype)
    if holomorphic and not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError("jacfwd with holomorphic=True requires inputs with complex dtype, "
                        f"but got {dtype.name}.")
    if not holomorphic and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError("jacfwd requires real-valued inputs (input dtype that is a sub-dtype "
                        f"of np.floating), but got {dtype.name}. For holomorphic "
                        "differentiation, pass holomorphic=True. For differentiation of "
                        "non-holomorphic functions involving complex inputs or integer inputs, "
                        "use jax.jvp directly.")


def _check_output_dtype(holomorphic: bool, dtype: np.dtype) -> None:
    if holomorphic and not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError("jacfwd with holomorphic=True requires outputs with complex dtype, "
                        f"but got {np.dtype(dtype).name}.")


def _check_no_variable_arguments(args: tuple, kwargs: dict) -> None:
    for leaf in jax.tree_util.tree_leaves((args, kwargs), is_leaf=_is_var):
        if isinstance(leaf, Variable):
            raise TypeError("A rayjac.Variable was passed as an argument of the function; "
                            "close over it instead (read it inside func) and list it in "
                            "grad_vars to differentiate it.")


def _check_outermost(*inputs: Any) -> None:
    """The distributed path never runs under a JAX transform (its inputs would be tracers)."""
    leaves = jax.tree_util.tree_leaves(inputs)
    if _trace_stack() or any(isinstance(x, jax.core.Tracer) for x in leaves):
        raise TypeError("rayjac.jacfwd(..., shards=k) cannot run inside jax.jit, vmap or "
                        "another transform: the distributed path is an outermost call. Use "
                        "shards=None inside transforms.")
