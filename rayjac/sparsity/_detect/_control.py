"""Calls and branches: jit/closed_call/remat/custom_vjp by recursion, cond as a union of its
branches, custom_jvp through its JVP rule."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ._deps import Val, bind_params, join

# A JVP rule that applies its own function to tangents would unfold forever; past this depth
# a rule whose source is not known is followed through its primal.
_RULE_DEPTH = 16


def call(ctx, eqn, args, param: str):
    """Interpret the inner jaxpr in place of the call."""
    return ctx.run(eqn.params[param], args)


def cond(ctx, eqn, args):
    """The branch a known index selects (clamped, as ``lax.switch``), else any branch."""
    branches, index, operands = eqn.params["branches"], args[0], args[1:]
    if index.value is not None:
        chosen = int(np.clip(int(ctx.value(index)), 0, len(branches) - 1))
        return ctx.run(branches[chosen], operands)
    results = [ctx.run(branch, operands) for branch in branches]
    return [join(ctx, [r[j] for r in results]) for j in range(len(eqn.outvars))]


def _rule_key(eqn):
    """What repeats when a rule re-enters its own function: the function's and rule's source."""
    call_info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    rule_info = getattr(eqn.params.get("jvp_jaxpr_fun"), "debug_info", None)
    key = (getattr(call_info, "func_src_info", None), getattr(rule_info, "func_src_info", None))
    return key if key[0] is not None else None


def custom_jvp_call(ctx, eqn, args):
    """JAX differentiates a custom_jvp function with its rule, so follow the rule's tangents:
    primals carry their known values and no dependencies, tangents the operands'."""
    p, outs = eqn.params, eqn.outvars
    key = _rule_key(eqn)
    if (key is not None and key in ctx.jvp_active) or len(ctx.jvp_active) >= _RULE_DEPTH:
        # The rule applies its own function to tangents, where the function is linear, so
        # its primal has the rule's pattern.
        return ctx.run(p["call_jaxpr"], args)
    if all(a.deps is None for a in args[p["num_consts"]:]):
        # No tangents (JAX gives none to closure constants): the primal gives the values.
        return ctx.run(p["call_jaxpr"], [_primal(a) for a in args])
    rule, diff = ctx.cached(("jvp", id(eqn)), lambda: (eqn, *_trace_jvp(eqn, args)))[1:]
    primals = [_primal(a) for a in args]
    tangents = [Val(args[i].shape, args[i].dtype, args[i].deps) for i in diff]
    ctx.jvp_active.append(key)
    try:
        res = ctx.run(rule, primals + tangents)
    finally:
        ctx.jvp_active.pop()
    k = len(outs)
    return [Val(v.aval.shape, v.aval.dtype, t.deps) if t.deps is not None else
            dataclasses.replace(pr, shape=tuple(v.aval.shape), dtype=v.aval.dtype)
            for v, pr, t in zip(outs, res[:k], res[k:])]


def _primal(a: Val) -> Val:
    """The primal of an operand: its known value (and its origin), no dependencies."""
    return dataclasses.replace(a, deps=None)


def _trace_jvp(eqn, args) -> tuple[jax.extend.core.ClosedJaxpr, list[int]]:
    """The jaxpr of ``jvp`` of the equation, over (all primals, tangents of inexact operands)."""
    diff = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, np.inexact)]
    subfuns, params = bind_params(eqn.primitive, eqn.params)

    def jvp(primals, tangents):
        def f(*moving):
            full = list(primals)
            for i, x in zip(diff, moving):
                full[i] = x
            return eqn.primitive.bind(*subfuns, *full, **params)
        return jax.jvp(f, [primals[i] for i in diff], list(tangents))

    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    return jax.make_jaxpr(jvp)(avals, [avals[i] for i in diff]), diff
