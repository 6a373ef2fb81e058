"""Products with a sparse read-only matrix computed on its nonzeros in a sparse call's kernel
(rayjac.core._products): every form of ``dot_general`` with the matrix on either side, nested
in a ``jit``, rectangular, against a 2-D operand; after its values change (same program) and
its zeros move (also where the Jacobian's pattern stays the same: a new program); in process,
chunked, sharded, mapped and under ``jax.jit``. Each against dense ``jax.jacfwd`` at random
points. Small matrices qualify here by lowering ``_MIN_SIZE``, denser ones by raising
``_MAX_DENSITY``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rayjac
from rayjac.core import _products

N = 32


def connectivity(seed: int, p: float = 0.05, shape: tuple[int, int] = (N, N),
                 diagonal: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape) * (rng.random(shape) < p)
    np.fill_diagonal(w, rng.normal(size=min(shape)) if diagonal else 0.0)
    return w.astype(np.float32)


def point(seed: int, n: int = N) -> jax.Array:
    return jnp.asarray(np.random.default_rng(100 + seed).uniform(-2, 2, n), jnp.float32)


@pytest.fixture
def products(monkeypatch):
    """Small matrices (and up to 25 % nonzero) qualify; counts the products traced on
    nonzeros."""
    monkeypatch.setattr(_products, "_MIN_SIZE", 0)
    monkeypatch.setattr(_products, "_MAX_DENSITY", 0.25)
    traced = []
    original = _products._sparse_dot

    def counting(eqn, values, found):
        out = original(eqn, values, found)
        if out is not None:
            traced.append(eqn.params["dimension_numbers"])
        return out

    monkeypatch.setattr(_products, "_sparse_dot", counting)
    return traced


def assert_exact(jf, f, seeds=(0, 1), n: int = N) -> None:
    for seed in seeds:
        x = point(seed, n)
        np.testing.assert_allclose(jf(x).todense(), jax.jacfwd(f)(x), rtol=1e-5, atol=1e-5)


FORMS = {  # f(w, x): the matrix on the left, right, contracted on either axis, nested, 2-D
    "w @ x": lambda w, x: -x + w @ jnp.tanh(x),
    "x @ w": lambda w, x: -x + jnp.tanh(x) @ w,
    "contract axis 0": lambda w, x: -x + lax.dot_general(w, jnp.tanh(x), (((0,), (0,)),
                                                                          ((), ()))),
    "nested jit": lambda w, x: -x + jax.jit(lambda a, b: a @ b)(w, jnp.tanh(x)),
    "2-D operand": lambda w, x: (w @ jnp.tanh(x.reshape(N // 2, 2).repeat(2, 0))).sum(1)
    - x,
    "twice": lambda w, x: w @ jnp.tanh(w @ x) - x,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_equals_dense_and_runs_on_nonzeros(form, products):
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    f = lambda x: FORMS[form](w.value, x)  # noqa: E731
    jf = rayjac.jacfwd(f, sparsity="auto")
    assert_exact(jf, f)
    assert products, "the product ran dense"


def test_a_rectangular_matrix(products):
    w = rayjac.Variable(jnp.asarray(connectivity(1, p=0.1, shape=(N // 2, N))))
    f = lambda x: jnp.concatenate([w.value @ jnp.sin(x), x[: N // 2] ** 2])  # noqa: E731
    assert_exact(rayjac.jacfwd(f, sparsity="auto"), f)
    assert products


def test_new_values_keep_the_program_and_moved_zeros_make_a_new_one(products):
    w = rayjac.Variable(jnp.asarray(connectivity(2)))
    f = lambda x: -x + w.value @ jnp.tanh(x)  # noqa: E731
    jf = rayjac.jacfwd(f, sparsity="auto")
    assert_exact(jf, f)
    traced = len(products)
    w.value = w.value * 3.0  # the same zeros: the same program, the new values
    assert_exact(jf, f)
    assert len(products) == traced
    # Nonzeros on the diagonal: the Jacobian's pattern holds them already (-x), so detection
    # finds the same pattern, but the kernel's indices must change.
    w.value = jnp.asarray(connectivity(2, diagonal=True))
    assert_exact(jf, f)
    assert len(products) > traced
    w.value = jnp.asarray(connectivity(3))  # zeros elsewhere: a new pattern
    assert_exact(jf, f)


def test_dense_written_and_differentiated_matrices_keep_the_dense_product(products):
    dense = rayjac.Variable(jnp.asarray(connectivity(4, p=0.5)))
    f = lambda x: -x + dense.value @ jnp.tanh(x)  # noqa: E731
    assert_exact(rayjac.jacfwd(f, sparsity="auto"), f)
    written = rayjac.Variable(jnp.asarray(connectivity(5)))

    def g(x):
        out = -x + written.value @ jnp.tanh(x)
        written.value = written.value * 1.0
        return out
    jg = rayjac.jacfwd(g, sparsity="auto")
    for seed in (0, 1):
        x = point(seed)
        want = jax.jacfwd(lambda y: -y + written.value @ jnp.tanh(y))(x)
        np.testing.assert_allclose(jg(x).todense(), want, rtol=1e-5, atol=1e-5)
    grad = rayjac.Variable(jnp.asarray(connectivity(6)))
    jh = rayjac.jacfwd(lambda x: grad.value @ x, grad_vars=grad, argnums=0, sparsity="auto")
    x = point(0)
    dw, dx = jh(x)
    np.testing.assert_allclose(dx.todense(), grad.value, rtol=1e-6)
    np.testing.assert_allclose(dw.todense(), jax.jacfwd(lambda m: m @ x)(grad.value),
                               rtol=1e-6)
    assert not products


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_chunked_mapped_and_under_jit(products, chunk_size):
    w = rayjac.Variable(jnp.asarray(connectivity(7)))

    def f(x):
        out = -x + w.value @ jnp.tanh(x)
        return out, jnp.sum(out)

    jf = rayjac.jacfwd(f, sparsity="auto", chunk_size=chunk_size, has_aux=True,
                       return_value=True)
    dense = jax.jacfwd(lambda y: f(y)[0])
    xs = jnp.stack([point(0), point(1)])
    jac, value, aux = jax.jit(jf)(xs[0])
    np.testing.assert_allclose(jac.todense(), dense(xs[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, f(xs[0])[0], rtol=1e-6)
    jacs, values, auxes = jf.map(xs)
    for i in range(2):
        np.testing.assert_allclose(jacs.todense()[i], dense(xs[i]), rtol=1e-5, atol=1e-5)
    assert products


def test_sharded(ray_local, products):
    w = rayjac.Variable(jnp.asarray(connectivity(8)))
    f = lambda x: -x + w.value @ jnp.tanh(x)  # noqa: E731
    assert_exact(rayjac.jacfwd(f, sparsity="auto", shards=2), f)


def test_a_closed_over_matrix(products):
    w = jnp.asarray(connectivity(9))
    f = lambda x: -x + w @ jnp.tanh(x)  # noqa: E731
    assert_exact(rayjac.jacfwd(f, sparsity="auto"), f)
    assert products


def test_a_hub_row_keeps_the_dense_product(products):
    """One row with every column would pad all rows to N slots: the dense product instead."""
    hub = connectivity(10)
    hub[0] = 1.0
    w = rayjac.Variable(jnp.asarray(hub))
    f = lambda x: -x + w.value @ jnp.tanh(x)  # noqa: E731
    with pytest.warns(rayjac.DenseColoringWarning):  # the hub row needs N colours
        jf = rayjac.jacfwd(f, sparsity="auto")
        assert_exact(jf, f)
    assert not products
    f_t = lambda x: -x + jnp.tanh(x) @ w.value  # noqa: E731 - contracted the other way,
    assert_exact(rayjac.jacfwd(f_t, sparsity="auto"), f_t)  # the hub row pads nothing
    assert products
