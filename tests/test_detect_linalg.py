"""Sparsity rules for linear algebra (``_detect/_linalg.py``) against dense ``jax.jacfwd`` at
random points (made well conditioned by a diagonal shift, which keeps the structure):
``cholesky``, ``triangular_solve``, ``lu``, ``qr`` and ``custom_linear_solve``, batched too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from detect_cases import Case, check, detected, f32


def _spd(x, n):
    """A symmetric-positive-definite-making shift of an n x n (batch of) matrix."""
    return x.reshape(x.shape[:-1] + (n, n)) + 8.0 * jnp.eye(n)


def _solve(lower, left, transpose, unit=False):
    def f(a, b):
        return lax.linalg.triangular_solve(a + 6.0 * jnp.eye(3), b, left_side=left,
                                           lower=lower, transpose_a=transpose,
                                           unit_diagonal=unit)
    return f


BANDED = np.tril(np.triu(np.random.default_rng(0).normal(size=(6, 6)) + 3 * np.eye(6), -1))
BLOCKS = np.kron(np.eye(3), np.array([[4.0, 1.0], [2.0, 5.0]]))  # 3 blocks of 2 x 2

CASES = [
    Case("cholesky_symmetrized", lambda x: jnp.linalg.cholesky(_spd(x, 3)), (f32(9),)),
    Case("cholesky_primitive", lambda x: lax.linalg.cholesky(
        _spd(x, 4), symmetrize_input=False), (f32(16),)),
    Case("cholesky_batched", lambda x: jnp.linalg.cholesky(_spd(x.reshape(2, 9), 3)),
         (f32(18),)),
    *[Case(f"triangular_solve_{lo}_{side}_{tr}", _solve(lo == "lower", side == "left",
                                                        tr == "t"),
           (f32(3, 3), f32(3, 2) if side == "left" else f32(2, 3)), (True, True))
      for lo, side, tr in [("lower", "left", "n"), ("upper", "left", "t"),
                           ("lower", "right", "t"), ("upper", "right", "n")]],
    Case("triangular_solve_unit", _solve(True, True, False, unit=True), (f32(3, 3), f32(3, 2)),
         (True, True)),
    Case("triangular_solve_known_banded", lambda b: jax.scipy.linalg.solve_triangular(
        BANDED, b, lower=True), (f32(6, 2),)),
    Case("triangular_solve_known_upper_right", lambda b: lax.linalg.triangular_solve(
        BANDED.T, b, left_side=False, lower=False, transpose_a=True), (f32(2, 6),)),
    Case("triangular_solve_batched", lambda a, b: jax.scipy.linalg.solve_triangular(
        a + 6.0 * jnp.eye(3), b, lower=True), (f32(2, 3, 3), f32(2, 3)), (True, True)),
    Case("lu", lambda x: lax.linalg.lu(_spd(x, 3))[0], (f32(9),), exact=False),
    Case("lu_tall_and_wide", lambda a, b: (lax.linalg.lu(a)[0], lax.linalg.lu(b)[0]),
         (f32(4, 3), f32(3, 4)), (True, True), exact=False),
    Case("lu_permutation_is_constant", lambda x: x * jax.scipy.linalg.lu(
        _spd(x, 3))[0].ravel(), (f32(9),), exact=False),
    Case("qr_square", lambda x: jnp.linalg.qr(x.reshape(3, 3)), (f32(9),), exact=False),
    Case("qr_tall_complete", lambda x: jnp.linalg.qr(x.reshape(4, 3), mode="complete"),
         (f32(12),), exact=False),
    Case("qr_wide_batched", lambda x: jnp.linalg.qr(x.reshape(2, 2, 3)), (f32(12),),
         exact=False),
    Case("solve", lambda a, b: jnp.linalg.solve(a + 6.0 * jnp.eye(3), b), (f32(3, 3), f32(3)),
         (True, True)),
    Case("solve_known_blocks", lambda b: jnp.linalg.solve(BLOCKS, b), (f32(6),)),
    Case("custom_linear_solve_diagonal", lambda d, b: lax.custom_linear_solve(
        lambda v: (d + 3.0) * v, b, lambda mv, v: v / (d + 3.0)), (f32(5), f32(5)),
         (True, True)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_linalg_rule_against_dense_jacobian(case: Case):
    check(case)


def test_cholesky_3x3_is_tighter_than_a_dense_block():
    got = detected(lambda x: jnp.linalg.cholesky(_spd(x, 3)), (f32(9),), (True,))
    assert got.sum() == 30 < 54  # rows of the upper triangle are empty: 6 x 9 = 54 before


def test_known_factor_prunes_by_reach():
    got = detected(lambda b: jax.scipy.linalg.solve_triangular(BANDED, b, lower=True),
                   (f32(6),), (True,))
    np.testing.assert_array_equal(got, np.tril(np.ones((6, 6), bool)))  # a chain: all below
    diagonal = np.diag(np.arange(1.0, 7.0))
    got = detected(lambda b: jax.scipy.linalg.solve_triangular(diagonal, b, lower=True),
                   (f32(6),), (True,))
    np.testing.assert_array_equal(got, np.eye(6, dtype=bool))
    np.testing.assert_array_equal(
        detected(lambda b: jnp.linalg.solve(BLOCKS, b), (f32(6),), (True,)),
        np.kron(np.eye(3), np.ones((2, 2))) > 0)
