"""A multilayer perceptron whose weights and biases are a dict of Variables."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import rayjac

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu,
                "sigmoid": jax.nn.sigmoid}


def make(sizes: Sequence[int] = (8, 32, 32, 4), batch: int = 16, activation: str = "tanh",
         seed: int = 0) -> rayjac.Problem:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` applied to a fixed random batch of inputs.

    The Variables are ``w0, b0, w1, b1, ...`` (layer ``i`` maps ``sizes[i]`` to
    ``sizes[i+1]``); the Jacobian of the ``(batch, sizes[-1])`` output w.r.t. them is the
    per-example parameter Jacobian (the neural tangent kernel is its Gram matrix). With
    ``argnums: 0`` you get the input Jacobian instead (or as well).

    Example:
        >>> problem = make(sizes=[3, 5, 2], batch=4)
        >>> sorted(problem.variables), problem.func(*problem.args).shape
        (['b0', 'b1', 'w0', 'w1'], (4, 2))
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose one of "
                         f"{', '.join(_ACTIVATIONS)}.")
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}.")
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = rayjac.Variable(
            jax.random.normal(keys[i], (n_in, n_out)) / jnp.sqrt(n_in))
        params[f"b{i}"] = rayjac.Variable(jnp.zeros(n_out))
    x = jax.random.normal(keys[-1], (batch, sizes[0]))
    act = _ACTIVATIONS[activation]
    layers = len(sizes) - 1

    def forward(inputs):
        h = inputs
        for i in range(layers):
            h = h @ params[f"w{i}"].value + params[f"b{i}"].value
            h = act(h) if i < layers - 1 else h
        return h

    return rayjac.Problem(forward, args=(x,), variables=params)
