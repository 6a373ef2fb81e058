"""One RK4 step of a population of Hodgkin-Huxley neurons coupled by gap junctions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rayjac

# Squid giant axon constants (Hodgkin & Huxley 1952, shifted to a -65 mV rest): mS/cm^2, mV, uF.
G_NA, G_K, G_L = 120.0, 36.0, 0.3
E_NA, E_K, E_L = 50.0, -77.0, -54.387
C_M = 1.0


def _linoid(u):
    """u / (1 - exp(-u)), smooth through u = 0 (where the textbook rates divide 0 by 0)."""
    small = jnp.abs(u) < 1e-4
    safe = jnp.where(small, 1.0, u)
    return jnp.where(small, 1.0 + u / 2, safe / -jnp.expm1(-safe))


def _rates(v):
    alpha_m, beta_m = _linoid((v + 40.0) / 10.0), 4.0 * jnp.exp(-(v + 65.0) / 18.0)
    alpha_h, beta_h = 0.07 * jnp.exp(-(v + 65.0) / 20.0), jax.nn.sigmoid((v + 35.0) / 10.0)
    alpha_n, beta_n = 0.1 * _linoid((v + 55.0) / 10.0), 0.125 * jnp.exp(-(v + 65.0) / 80.0)
    return (alpha_m, beta_m), (alpha_h, beta_h), (alpha_n, beta_n)


def _vector_field(state, i_ext, coupling):
    v, m, h, n = state
    (am, bm), (ah, bh), (an, bn) = _rates(v)
    i_ion = G_NA * m**3 * h * (v - E_NA) + G_K * n**4 * (v - E_K) + G_L * (v - E_L)
    i_gap = coupling @ v - jnp.sum(coupling, axis=1) * v
    return ((i_ext + i_gap - i_ion) / C_M, am * (1 - m) - bm * m, ah * (1 - h) - bh * h,
            an * (1 - n) - bn * n)


def make(n: int = 100, dt: float = 0.01, g_gap: float = 0.1, p_connect: float = 0.1,
         i_ext: float = 10.0, seed: int = 0) -> rayjac.Problem:
    """A population of ``n`` HH neurons; the state ``V, m, h, n`` lives in four Variables.

    The function advances the state by one RK4 step of ``dt`` ms (writing it back into the
    Variables) and returns the new state ``[V, m, h, n]`` concatenated (length ``4 n``). Its
    Jacobian w.r.t. ``grad_vars: [V, m, h, n]`` is the one-step propagator of the linearised
    network. Neurons are coupled by random symmetric gap junctions (probability ``p_connect``,
    conductance ``g_gap``) held in a Variable named ``coupling`` that the function only reads
    (so its zeros prune the sparsity pattern), and driven by heterogeneous currents around
    ``i_ext`` uA/cm^2, the positional argument of the function.

    Example:
        >>> problem = make(n=4)
        >>> problem.func(*problem.args).shape
        (16,)
    """
    k_v, k_c, k_i = jax.random.split(jax.random.key(seed), 3)
    upper = jnp.triu(jax.random.bernoulli(k_c, p_connect, (n, n)), 1)
    coupling = rayjac.Variable(g_gap * (upper + upper.T).astype(jnp.float32))
    v0 = -65.0 + 5.0 * jax.random.normal(k_v, (n,))
    gates = [a / (a + b) for a, b in _rates(v0)]
    names = ("V", "m", "h", "n")
    state = {name: rayjac.Variable(x) for name, x in zip(names, [v0, *gates])}
    drive = i_ext * (1.0 + 0.1 * jax.random.normal(k_i, (n,)))

    def step(current):
        x = tuple(state[name].value for name in names)
        f = lambda s: _vector_field(s, current, coupling.value)  # noqa: E731
        k1 = f(x)
        k2 = f(tuple(a + dt / 2 * b for a, b in zip(x, k1)))
        k3 = f(tuple(a + dt / 2 * b for a, b in zip(x, k2)))
        k4 = f(tuple(a + dt * b for a, b in zip(x, k3)))
        new = [a + dt / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
               for a, b1, b2, b3, b4 in zip(x, k1, k2, k3, k4)]
        for name, value in zip(names, new):
            state[name].value = value
        return jnp.concatenate(new)

    return rayjac.Problem(step, args=(drive,), variables={**state, "coupling": coupling})
