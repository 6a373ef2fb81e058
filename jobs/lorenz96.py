"""Lorenz-96: ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` on a ring of ``n`` sites."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rayjac


def make(n: int = 40, forcing: float = 8.0, perturbation: float = 0.01,
         seed: int = 0) -> rayjac.Problem:
    """The Lorenz-96 right-hand side at a point near the fixed point ``x = F``.

    The Jacobian w.r.t. the state (``argnums: 0``) is the banded, cyclic matrix of the linearised
    dynamics; the forcing ``F`` is a Variable named ``forcing`` (``grad_vars: forcing``).

    Example:
        >>> problem = make(n=8)
        >>> problem.func(*problem.args).shape
        (8,)
    """
    if n < 4:
        raise ValueError(f"Lorenz-96 needs n >= 4 sites, got n={n}.")
    force = rayjac.Variable(jnp.asarray(forcing, dtype=jnp.float32))
    x0 = forcing + perturbation * jax.random.normal(jax.random.key(seed), (n,))

    def rhs(x):
        return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + force.value

    return rayjac.Problem(rhs, args=(x0,), variables={"forcing": force})
