"""Variables at module level of an imported module: the workers import their own copies."""

import jax.numpy as jnp

import rayjac

W = rayjac.Variable(jnp.eye(3))
STEPS = rayjac.Variable(jnp.zeros(()))
EXTRA = rayjac.Variable(jnp.ones(3))
READ_EXTRA = []  # filled on the driver only: then func touches EXTRA there and not on workers


def step(x):
    STEPS.value = STEPS.value + 1
    return jnp.tanh(W.value @ x) * (EXTRA.value if READ_EXTRA else 1.0)
