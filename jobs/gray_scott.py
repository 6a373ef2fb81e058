"""One explicit Euler step of the Gray-Scott reaction-diffusion system on a periodic 2D grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rayjac


def _laplacian(a):
    return (jnp.roll(a, 1, 0) + jnp.roll(a, -1, 0) + jnp.roll(a, 1, 1) + jnp.roll(a, -1, 1)
            - 4 * a)


def make(n: int = 32, du: float = 0.16, dv: float = 0.08, feed: float = 0.035,
         kill: float = 0.065, dt: float = 1.0, seed: int = 0) -> rayjac.Problem:
    """Gray-Scott ``u + 2v -> 3v`` on an ``n x n`` grid; the fields ``u``, ``v`` are Variables.

    The function takes one Euler step of ``dt`` (writing the fields back) and returns the new
    fields stacked, shape ``(2, n, n)``. The Jacobian w.r.t. ``grad_vars: [u, v]`` is sparse: a
    five-point stencil plus the local reaction terms, which ``rayjac plot`` shows as a sparsity
    pattern.

    Example:
        >>> problem = make(n=8)
        >>> problem.func(*problem.args).shape
        (2, 8, 8)
    """
    noise = 0.02 * jax.random.uniform(jax.random.key(seed), (2, n, n))
    lo, hi = n // 2 - max(n // 8, 1), n // 2 + max(n // 8, 1)
    patch = jnp.zeros((n, n)).at[lo:hi, lo:hi].set(1.0)
    u = rayjac.Variable(1.0 - 0.5 * patch + noise[0])
    v = rayjac.Variable(0.25 * patch + noise[1])

    def step():
        uv2 = u.value * v.value**2
        u_new = u.value + dt * (du * _laplacian(u.value) - uv2 + feed * (1 - u.value))
        v_new = v.value + dt * (dv * _laplacian(v.value) + uv2 - (feed + kill) * v.value)
        u.value, v.value = u_new, v_new
        return jnp.stack([u_new, v_new])

    return rayjac.Problem(step, variables={"u": u, "v": v})
