"""Eigenvalues of Jacobians (`spectrum`) and what they say about stability (`stability_summary`).

Dense input goes to LAPACK (`numpy.linalg.eigvals`, one batched call for a stack). Sparse input
(a BCOO or a `scipy.sparse` matrix) that asks for k < n - 1 eigenvalues goes to ARPACK
(`scipy.sparse.linalg.eigs`), one point at a time, and is never made dense. scipy and JAX are
imported only when the input needs them, so importing this module costs numpy alone.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

SYSTEMS = ("continuous", "discrete")
SPARSE_DENSE_LIMIT = 4096  # the largest n whose sparse J is made dense to get every eigenvalue
_WHICH = {"continuous": "LR", "discrete": "LM"}
_ARPACK_TOL = 1e-12  # relative residual; 0 (machine precision) stalls on clustered spectra
# A try's subspace is ncv = max(2k + 1, 20) times these: a larger one is what rescues a clustered
# spectrum. A restart costs ~(ncv - k) products J @ v and ~4 n ncv^2 flops, so a try gets
# max(300, 3e7 / n) (20 / ncv)^2 restarts (at most scipy's default, 10 n): 300 with ncv = 20
# for n >= 10^5 (~15 s at n = 10^5 on one core), more where n is small and restarts cheap, fewer
# for a larger subspace, so that a hopeless solve gives up instead of running on for minutes.
_ARPACK_NCV = (1, 4)
_ARPACK_SEED = 0  # the starting vector is a fixed random one, so results are reproducible


def spectrum(J: Any, k: int | None = None, system: str = "continuous") -> np.ndarray:
    """Eigenvalues of a square Jacobian, or of each one in a stack, sorted leading first.

    Args:
      J: a square matrix (a numpy or JAX array, a 2-D ``jax.experimental.sparse.BCOO`` or a
        ``scipy.sparse`` array or matrix) or a stack of them (a 3-D array, or a BCOO of shape
        ``(B, n, n)`` as ``jf.map`` gives). Real, integer and complex entries are all fine.
      k: None for every eigenvalue (LAPACK), or a positive int for the k leading ones (all n
        when ``k >= n``). On sparse input with ``k < n - 1`` ARPACK finds them without making J
        dense; a sparse J larger than 4096 x 4096 needs k.
      system: ``"continuous"`` (a flow dx/dt = f(x)): leading means largest real part;
        ``"discrete"`` (a map x -> f(x)): leading means largest modulus. Ties in any order.

    Returns:
      A complex128 array of shape ``(n,)`` or ``(B, n)``; with k, ``(min(k, n),)`` or
      ``(B, min(k, n))``.

    Raises:
      ValueError: J is not square or not 2-D/3-D, has NaN or inf entries, ``k`` or ``system``
        is not a valid option, or ``k=None`` is asked of a sparse J larger than 4096 x 4096.
      TypeError: J holds no numbers, or is not an array at all (a JAX tracer, say: spectrum
        runs on the host, outside ``jax.jit``).
      RuntimeError: ARPACK did not converge, even after a retry with a larger subspace.

    Example:
      >>> import numpy as np
      >>> from rayjac.analysis import spectrum
      >>> J = np.array([[-1.0, 2.0], [0.0, -3.0]])
      >>> spectrum(J)
      array([-1.+0.j, -3.+0.j])
      >>> spectrum(J, k=1, system="discrete")
      array([-3.+0.j])
    """
    _check_system(system)
    k = _check_k(k)
    batched, n, points = _as_points(J)
    m = n if k is None else min(k, n)
    if isinstance(points, np.ndarray):
        lam = _lapack(points, m, system)
    elif k is not None and k < n - 1:
        lam = _arpack_stack(points, k, system)
    else:
        _check_densify(k, J.shape)
        lam = _lapack(_densify(points, n), m, system)
    return lam if batched else lam[0]


def stability_summary(lam: Any, system: str = "continuous") -> dict[str, np.ndarray]:
    """Stability of each point from its (computed) eigenvalues, as ``spectrum`` returns them.

    A point is stable when every eigenvalue lies strictly on the stable side: real part < 0
    for ``"continuous"``, modulus < 1 for ``"discrete"``. ``unstable`` counts the eigenvalues
    that do not (real part >= 0, or modulus >= 1; a NaN counts as unstable), so
    ``stable == (unstable == 0)`` always. Only the eigenvalues given are looked at: for the k
    leading ones of a spectrum that is all that matters for ``stable``.

    Args:
      lam: eigenvalues, shape ``(k,)`` for one point or ``(B, k)`` for B points.
      system: ``"continuous"`` or ``"discrete"``, as for ``spectrum``.

    Returns:
      A dict of arrays of shape ``(B,)`` (B = 1 for a 1-D ``lam``): ``abscissa`` (float64, the
      largest real part; -inf if k = 0), ``radius`` (float64, the largest modulus; 0 if k = 0),
      ``stable`` (bool) and ``unstable`` (int32).

    Example:
      >>> import numpy as np
      >>> from rayjac.analysis import stability_summary
      >>> s = stability_summary(np.array([[-1 + 2j, -1 - 2j], [0.5, -3.0]]))
      >>> s["abscissa"], s["stable"], s["unstable"]
      (array([-1. ,  0.5]), array([ True, False]), array([0, 1], dtype=int32))
      >>> stability_summary(np.array([0.5j, -0.9]), system="discrete")["stable"]
      array([ True])
    """
    _check_system(system)
    lam = _eigenvalue_array(lam)
    abscissa = np.max(lam.real, axis=1, initial=-np.inf)
    radius = np.max(np.abs(lam), axis=1, initial=0.0)
    if system == "continuous":
        stable_side = lam.real < 0
    else:
        stable_side = np.abs(lam) < 1
    unstable = np.count_nonzero(~stable_side, axis=1).astype(np.int32)
    return {"abscissa": abscissa, "radius": radius, "stable": unstable == 0, "unstable": unstable}


# --- checks at the public boundary --------------------------------------------------------------


def _check_system(system: Any) -> None:
    """Raise unless `system` names one of SYSTEMS."""
    if not isinstance(system, str) or system not in SYSTEMS:
        raise ValueError(
            f"system must be one of {SYSTEMS!r} (a flow dx/dt = f(x), or a map x -> f(x)); "
            f"got system={system!r}."
        )


def _check_k(k: Any) -> int | None:
    """Return `k` as an int (or None); raise unless it is None or a positive int."""
    if k is None:
        return None
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(
            "k must be None (every eigenvalue) or a positive int (the k leading ones); "
            f"got k={k!r}."
        )
    return int(k)


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    """Raise unless `shape` is (n, n) or (B, n, n)."""
    if len(shape) not in (2, 3) or shape[-1] != shape[-2]:
        raise ValueError(
            "spectrum needs a square J of shape (n, n), or a stack of shape (B, n, n); got "
            f"{what} of shape {tuple(shape)}. Pass the Jacobian of a function from R^n to R^n."
        )


def _check_finite(finite: np.ndarray) -> None:
    """Raise unless every point (an entry of `finite`) has finite entries only."""
    if not finite.all():
        points = np.flatnonzero(~finite).tolist()
        raise ValueError(
            f"J has NaN or inf entries at point(s) {points[:10]}{' ...' * (len(points) > 10)} "
            "(point 0 for a single matrix), so its eigenvalues are undefined. Check the state "
            "the Jacobian was taken at."
        )


def _check_densify(k: int | None, shape: tuple[int, ...]) -> None:
    """Raise if a sparse J of `shape` would be made dense while too large."""
    n = shape[-1]
    if n <= SPARSE_DENSE_LIMIT:
        return
    asked = "k=None asks for every eigenvalue" if k is None else f"k={k} >= n - 1 asks for all"
    raise ValueError(
        f"{asked} of a sparse J of shape {tuple(shape)}, which needs it dense; sparse J larger "
        f"than {SPARSE_DENSE_LIMIT} x {SPARSE_DENSE_LIMIT} are not made dense. Pass k < n - 1, "
        "e.g. spectrum(J, k=6), for the 6 leading eigenvalues (ARPACK)."
    )


# --- input kinds -> a dense (B, n, n) stack or a list of B CSR matrices -------------------------


def _as_points(J: Any) -> tuple[bool, int, np.ndarray | list]:
    """(batched, n, points): points is a float64/complex128 (B, n, n) array or B CSR arrays."""
    if _is_bcoo(J):
        _check_shape(J.shape, "a BCOO")
        return J.ndim == 3, J.shape[-1], _bcoo_points(J)
    if _is_scipy_sparse(J):
        _check_shape(J.shape, f"a scipy.sparse {type(J).__name__}")
        if len(J.shape) == 3:  # n-D COO arrays exist in scipy; stacks are BCOO or dense
            raise ValueError(
                f"a scipy.sparse J must be 2-D; got shape {J.shape}. For a stack, pass a 3-D "
                "array or a BCOO with n_batch=1."
            )
        return False, J.shape[-1], [_scipy_csr(J)]
    A = _dense_array(J)
    _check_shape(A.shape, "an array")
    stack = A if A.ndim == 3 else A[None]
    _check_finite(np.isfinite(stack).all(axis=(1, 2)))
    return A.ndim == 3, A.shape[-1], stack


def _is_bcoo(J: Any) -> bool:
    """Whether J is a JAX BCOO (it can only be one if jax.experimental.sparse is imported)."""
    module = sys.modules.get("jax.experimental.sparse")
    return module is not None and isinstance(J, module.BCOO)


def _is_scipy_sparse(J: Any) -> bool:
    """Whether J is a scipy.sparse array or matrix (only if scipy.sparse is imported)."""
    module = sys.modules.get("scipy.sparse")
    return module is not None and module.issparse(J)


def _float_dtype(dtype: np.dtype, what: str) -> type:
    """float64, or complex128 for complex `dtype`; TypeError if `dtype` holds no numbers."""
    target = np.complex128 if dtype.kind == "c" else np.float64
    if not np.can_cast(dtype, target, casting="safe"):  # bool, ints, bfloat16 ... all can
        raise TypeError(f"spectrum needs real or complex numbers in {what}; got dtype {dtype}.")
    return target


def _as_float(a: np.ndarray, what: str) -> np.ndarray:
    """`a` as float64, or complex128 if complex."""
    return a.astype(_float_dtype(a.dtype, what), copy=False)


def _dense_array(J: Any) -> np.ndarray:
    """J as a float64/complex128 numpy array."""
    try:
        a = np.asarray(J)
    except (TypeError, ValueError) as err:  # e.g. a JAX tracer
        raise TypeError(
            "spectrum expected J as a numpy or JAX array, a BCOO or a scipy.sparse matrix; got "
            f"{type(J).__name__}. It runs on the host (LAPACK/ARPACK): call it outside jax.jit "
            "and jax.vmap, on the computed Jacobian."
        ) from err
    return _as_float(a, "J")


def _eigenvalue_array(lam: Any) -> np.ndarray:
    """`lam` as a complex128 (B, k) array, B = 1 for a 1-D `lam`."""
    a = np.asarray(lam)
    if a.ndim not in (1, 2):
        raise ValueError(
            "stability_summary needs eigenvalues of shape (k,) or (B, k), as spectrum returns "
            f"them; got shape {a.shape}."
        )
    return np.atleast_2d(_as_float(a, "lam").astype(np.complex128, copy=False))


def _bcoo_points(J: Any) -> list:
    """One CSR matrix per point of a (n, n) or (B, n, n) BCOO of any layout, in numpy.

    numpy rather than `bcoo_update_layout`, which would compile a JAX kernel per shape.
    """
    coords, vals = _bcoo_entries(J)
    shape = np.array(J.shape)[:, None]
    keep = ((coords >= 0) & (coords < shape)).all(axis=0)  # BCOO pads with index n: drop those
    B = J.shape[0] if J.ndim == 3 else 1
    point = coords[0] if J.ndim == 3 else np.zeros(len(vals), np.intp)
    finite = np.ones(B, bool)
    finite[point[keep & ~np.isfinite(vals)]] = False
    _check_finite(finite)
    coords, vals, point = coords[:, keep], vals[keep], point[keep]
    order = np.argsort(point, kind="stable")  # already sorted for n_batch = 1
    bounds = np.searchsorted(point[order], np.arange(B + 1))
    parts = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [_coo_to_csr(coords[-2:, p], vals[p], J.shape[-1]) for p in parts]


def _bcoo_entries(J: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coords of shape (J.ndim, N), values (N,)) of every stored entry, padding included."""
    n_batch, n_dense = J.n_batch, J.n_dense
    batch, dense = tuple(J.shape[:n_batch]), tuple(J.shape[J.ndim - n_dense:])
    indices = np.broadcast_to(np.asarray(J.indices), batch + (J.nse, J.n_sparse))
    data = np.broadcast_to(_as_float(np.asarray(J.data), "J.data"), batch + (J.nse,) + dense)
    axis = np.indices(data.shape, sparse=True)  # the position along each axis of data
    sparse = [indices[..., j].reshape(batch + (J.nse,) + (1,) * n_dense)
              for j in range(J.n_sparse)]
    coords = [*axis[:n_batch], *sparse, *axis[n_batch + 1:]]
    return np.stack([np.broadcast_to(c, data.shape).ravel() for c in coords]), data.ravel()


def _coo_to_csr(coords: np.ndarray, vals: np.ndarray, n: int) -> Any:
    """An (n, n) CSR array from (2, nse) coordinates and (nse,) values, duplicates summed."""
    from scipy import sparse

    return sparse.csr_array((vals, (coords[0], coords[1])), shape=(n, n))


def _scipy_csr(J: Any) -> Any:
    """A scipy.sparse J as a float64/complex128 CSR array, never made dense."""
    from scipy import sparse

    A = sparse.csr_array(J)
    A = A.astype(_float_dtype(A.dtype, "J"), copy=False)
    _check_finite(np.array([np.isfinite(A.data).all()]))
    return A


def _densify(points: list, n: int) -> np.ndarray:
    """Stack small CSR matrices into a dense (B, n, n) array."""
    if not points:
        return np.zeros((0, n, n))
    return np.stack([A.toarray() for A in points])


# --- solvers ------------------------------------------------------------------------------------


def _sort(lam: np.ndarray, system: str) -> np.ndarray:
    """Sort the last axis leading first: by real part, or modulus; then real, imag part."""
    keys = (-lam.imag, -lam.real)
    if system == "discrete":
        keys += (-np.abs(lam),)
    return np.take_along_axis(lam, np.lexsort(keys, axis=-1), axis=-1)


def _lapack(stack: np.ndarray, m: int, system: str) -> np.ndarray:
    """The m leading eigenvalues of each matrix of a (B, n, n) stack, shape (B, m)."""
    if stack.shape[0] == 0 or stack.shape[-1] == 0:
        return np.zeros((stack.shape[0], m), np.complex128)
    lam = np.linalg.eigvals(stack).astype(np.complex128, copy=False)
    return np.ascontiguousarray(_sort(lam, system)[:, :m])


def _arpack_stack(points: list, k: int, system: str) -> np.ndarray:
    """The k leading eigenvalues of each sparse point, shape (B, k)."""
    if not points:
        return np.zeros((0, k), np.complex128)
    return np.stack([_sort(_arpack(A, k, system, b), system) for b, A in enumerate(points)])


def _arpack_tries(n: int, k: int) -> list[tuple[int, int]]:
    """(ncv, maxiter) of each try; a single one when the first subspace is already all n."""
    ncvs = dict.fromkeys(min(n, f * max(2 * k + 1, 20)) for f in _ARPACK_NCV)
    return [(ncv, int(min(10 * n, max(1, max(300, 3e7 / n) * (20 / ncv) ** 2)))) for ncv in ncvs]


def _arpack(A: Any, k: int, system: str, point: int) -> np.ndarray:
    """The k leading eigenvalues of one sparse (n, n) matrix, k < n - 1, unsorted."""
    from scipy.sparse import linalg

    n = A.shape[0]
    v0 = np.random.default_rng(_ARPACK_SEED).standard_normal(n).astype(A.dtype)
    tries = _arpack_tries(n, k)
    for ncv, maxiter in tries:
        try:
            return linalg.eigs(
                A, k=k, which=_WHICH[system], v0=v0, ncv=ncv, maxiter=maxiter, tol=_ARPACK_TOL,
                return_eigenvectors=False,
            )
        except linalg.ArpackError as err:  # ArpackNoConvergence is one
            failure = err
    found = len(getattr(failure, "eigenvalues", ()))
    leading = "largest real part" if system == "continuous" else "largest modulus"
    raise RuntimeError(
        f"ARPACK found {found} of the k={k} eigenvalues of {leading} of the {n} x {n} sparse J "
        f"at point {point} ({failure}; tried (ncv, maxiter) = {tries}). The leading "
        "eigenvalues are likely clustered (close together for the spread of the spectrum), "
        "where ARPACK converges slowly. Try another k (a larger one often converges faster), "
        f"or, for n <= {SPARSE_DENSE_LIMIT}, k=None (every eigenvalue, dense LAPACK)."
    ) from failure
