"""The compiled kernel of a sparse call (issue 18 item 7): every block's data from one kernel
whose gather indices are compile-time constants (or, for a large pattern, kernel inputs, or
(colour, row) pairs where flat indices overflow int32), put into BCOO blocks with indices
cached on the program. Each path against dense ``jax.jacfwd``: in process, chunked, under
``jax.jit`` with has_aux and return_value, for a map, with pytree inputs and outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import rayjac
from helpers import tree_allclose
from rayjac.core import _program
from rayjac.core._plan import SparsePlan

_is_bcoo = lambda b: isinstance(b, jsparse.BCOO)  # noqa: E731


def densify(tree):
    return jax.tree_util.tree_map(lambda b: b.todense() if _is_bcoo(b) else b, tree,
                                  is_leaf=_is_bcoo)


def model(p, scale):
    """Two input leaves (one 2-D), three output leaves (one scalar, one weak-typed)."""
    x, y = p["x"], p["y"]
    ring = (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0
    grid = jnp.sin(y) * jnp.roll(y, 1, axis=1) + x[:3, None] * y
    return {"ring": ring * scale, "grid": grid, "sum": jnp.sum(y ** 2)}, {"scale": scale}


def _inputs(seed: int = 0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return {"x": jax.random.normal(kx, (9,)), "y": jax.random.normal(ky, (3, 4))}


def _expected(p, scale):
    jac = jax.jacfwd(model, has_aux=True)(p, scale)[0]
    return jac, model(p, scale)


_SCALE = jnp.float32(1.5)

PATHS = {
    "constants": {},  # the gather indices folded into the kernel
    "inputs": {"_HOST_GATHER": 0},  # a large pattern: indices as inputs of the kernel
    "pairs": {"flat_rows": lambda self, k: None},  # flat indices overflow int32
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        owner = SparsePlan if name == "flat_rows" else _program
        monkeypatch.setattr(owner, name, value)
    return request.param


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # a dense `sum` row
@pytest.mark.parametrize("chunk_size", [None, 2, 5])
def test_every_gather_path_equals_dense(path, chunk_size):
    jf = rayjac.jacfwd(model, sparsity="auto", chunk_size=chunk_size, has_aux=True,
                       return_value=True)
    for seed in range(2):  # a second point: the warm call
        p = _inputs(seed)
        jac, value, aux = jf(p, _SCALE)
        assert all(_is_bcoo(b) for b in jax.tree_util.tree_leaves(jac, is_leaf=_is_bcoo))
        want, (want_value, want_aux) = _expected(p, _SCALE)
        tree_allclose(densify(jac), want)
        tree_allclose((value, aux), (want_value, want_aux))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")
def test_every_gather_path_under_jit_and_map(path):
    jf = rayjac.jacfwd(model, sparsity="auto", has_aux=True, return_value=True)
    p = _inputs()
    jac, value, aux = jax.jit(jf)(p, _SCALE)  # the first call traced by an outer jit
    want, (want_value, want_aux) = _expected(p, _SCALE)
    tree_allclose(densify((jac, value, aux)), (want, want_value, want_aux))
    points = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p, _inputs(1))
    jacs = jf.map(points, 1.5, in_axes=(0, None))[0]
    for i in range(2):
        got = jax.tree_util.tree_map(lambda b: b.todense()[i], jacs, is_leaf=_is_bcoo)
        point = jax.tree_util.tree_map(lambda a: a[i], points)
        tree_allclose(got, _expected(point, _SCALE)[0])


def test_weak_types_survive_the_kernel():
    jf = rayjac.jacfwd(lambda x: {"w": x * 2, "s": jnp.sin(x)}, sparsity="auto")
    got = jf(jnp.arange(3.0))
    want = jax.jacfwd(lambda x: {"w": x * 2, "s": jnp.sin(x)})(jnp.arange(3.0))
    for key in want:
        assert got[key].data.weak_type == want[key].weak_type
    scalar = rayjac.jacfwd(lambda x: x * 2, sparsity="auto")
    assert scalar(1.0).data.weak_type == jax.jacfwd(lambda x: x * 2)(1.0).weak_type


def test_warm_calls_share_the_cached_indices():
    """No call rebuilds or copies the indices: every block of a warm call holds the very
    arrays of the call before, and only its data are new."""
    jf = rayjac.jacfwd(lambda x: jnp.pad(x, 1)[:-2] * x, sparsity="auto")
    first, second = jf(jnp.arange(1.0, 9.0)), jf(jnp.arange(2.0, 10.0))
    assert first.indices is second.indices
    np.testing.assert_array_equal(second.todense(),
                                  jax.jacfwd(lambda x: jnp.pad(x, 1)[:-2] * x)(
                                      jnp.arange(2.0, 10.0)))
