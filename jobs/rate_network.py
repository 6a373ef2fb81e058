"""A sparse rate network ``dx/dt = -x + g W tanh(x) + I``, and its Jacobian at the states of a
simulated trajectory (a map over points) or at its trivial fixed point (a stability sweep)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import rayjac


def connectivity(n: int, p_connect: float, seed: int) -> np.ndarray:
    """A random sparse nonnegative ``(n, n)`` matrix with rows summing to 1 (each unit averages
    its inputs). Row-stochastic, so its leading eigenvalue is exactly 1 (Perron-Frobenius) and
    every eigenvalue has modulus <= 1: ``-I + g W`` is stable exactly when ``g < 1``.

    Example:
        >>> w = connectivity(50, 0.1, 0)
        >>> bool(np.allclose(w.sum(axis=1), 1.0)), float(np.max(np.linalg.eigvals(w).real))
        (True, 1.0)
    """
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < p_connect
    mask[np.arange(n), (np.arange(n) + 1) % n] = True  # a ring: every row has an input
    weights = mask * rng.uniform(0.5, 1.5, (n, n))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def make(n: int = 2000, p_connect: float = 0.01, gain: float = 1.5, drive: float = 0.1,
         points: int = 64, steps_between: int = 5, dt: float = 0.1, seed: int = 0,
         along_trajectory: bool = True) -> rayjac.Problem:
    """The right-hand side, with the state ``x`` a Variable named ``state``.

    With ``along_trajectory`` the factory simulates the network (Euler, ``dt``) from a random
    state and returns the map over ``points`` states ``steps_between`` steps apart
    (``states={"state": ...}``): with ``grad_vars: state``, the Jacobian of the flow at each of
    them. Without it, the single point ``x = 0`` (a fixed point when ``drive`` is 0), whose
    Jacobian ``-I + gain W`` loses stability at ``gain = 1``.

    The connectivity ``W`` (``p_connect`` of all pairs, plus a ring) is a Variable named
    ``weights``, as models keep it; the function only reads it, so it is a constant of the call
    and ``sparsity: auto`` finds exactly its nonzeros and the diagonal.

    Example:
        >>> problem = make(n=20, p_connect=0.2, points=3)
        >>> problem.states["state"].shape
        (3, 20)
    """
    w = jnp.asarray(connectivity(n, p_connect, seed))
    weights = rayjac.Variable(w)
    state = rayjac.Variable(jnp.zeros(n, jnp.float32))
    inputs = jnp.full(n, drive, jnp.float32)
    variables = {"state": state, "weights": weights}

    def rhs():
        x = state.value
        return -x + gain * (weights.value @ jnp.tanh(x)) + inputs

    if not along_trajectory:
        return rayjac.Problem(rhs, variables=variables)
    x0 = jax.random.normal(jax.random.key(seed), (n,), jnp.float32)

    def step(x, _):
        for _ in range(steps_between):
            x = x + dt * (-x + gain * (w @ jnp.tanh(x)) + inputs)
        return x, x

    _, trajectory = jax.lax.scan(step, x0, None, length=points)
    return rayjac.Problem(rhs, variables=variables, states={"state": trajectory})
