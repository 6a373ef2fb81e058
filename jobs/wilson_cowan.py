"""The right-hand side of a Wilson-Cowan network of excitatory and inhibitory populations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rayjac


def make(n_exc: int = 80, n_inh: int = 20, w_ee: float = 12.0, w_ei: float = 10.0,
         w_ie: float = 13.0, w_ii: float = 3.0, p_connect: float = 0.2, tau_e: float = 10.0,
         tau_i: float = 20.0, drive: float = 1.0, seed: int = 0) -> rayjac.Problem:
    """``tau dr/dt = -r + S(W r + I)`` with a sigmoid ``S``; the rates ``r`` are a Variable.

    Connections are random (probability ``p_connect``) with total weights ``w_xy`` from
    population ``y`` onto ``x``. The Jacobian of the right-hand side w.r.t. ``grad_vars: rates``
    decides the stability of the network. The weight matrix is a Variable too (``weights``), as
    models keep their connectivity; the function only reads it, so it is a constant of the
    call and ``sparsity: auto`` finds exactly its nonzeros and the diagonal.

    Example:
        >>> problem = make(n_exc=8, n_inh=2)
        >>> problem.func(*problem.args).shape
        (10,)
    """
    n = n_exc + n_inh
    k_w, k_r = jax.random.split(jax.random.key(seed))
    mask = jax.random.bernoulli(k_w, p_connect, (n, n)).astype(jnp.float32)
    exc = jnp.arange(n) < n_exc
    scale_from_e = jnp.where(exc, w_ee, w_ie)[:, None] / max(p_connect * n_exc, 1.0)
    scale_from_i = -jnp.where(exc, w_ei, w_ii)[:, None] / max(p_connect * n_inh, 1.0)
    weights = rayjac.Variable(mask * jnp.where(exc[None, :], scale_from_e, scale_from_i))
    rates = rayjac.Variable(0.1 + 0.05 * jax.random.uniform(k_r, (n,)))
    tau = jnp.where(exc, tau_e, tau_i)

    def rhs(external):
        return (-rates.value + jax.nn.sigmoid(weights.value @ rates.value + external - 4.0)) / tau

    return rayjac.Problem(rhs, args=(jnp.full(n, drive),), variables={"rates": rates,
                                                                     "weights": weights})
