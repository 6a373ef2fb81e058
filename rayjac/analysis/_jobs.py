"""Spectra of a run's Jacobians, computed where each point's Jacobian was computed: from the
J^T rows (dense) or the nonzeros (sparse) of whole points, as the kernels produce them, so that
with ``keep_jacobian: false`` only eigenvalues leave the worker."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._spectrum import SPARSE_DENSE_LIMIT, spectrum


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A run's ``analysis`` section: which eigenvalues of each point's flat Jacobian to keep.

    Attributes:
      k: None for every eigenvalue, else the k leading ones.
      system: ``"continuous"`` or ``"discrete"`` (which ones lead, and what stable means).
      keep_jacobian: also store the Jacobian (else only the spectrum, value and aux).

    Example:
      >>> import numpy as np
      >>> rows = [np.array([[[-1.0, 0.0], [2.0, -3.0]]])]  # one point: J^T of [[-1, 2], [0, -3]]
      >>> Analysis(None, "continuous", True).dense_spectra(rows)
      array([[-1.+0.j, -3.+0.j]])
    """

    k: int | None
    system: str = "continuous"
    keep_jacobian: bool = True

    def check(self, m: int, n: int, sparse: bool) -> list[str]:
        """Problems with asking for this spectrum of an ``(m, n)`` Jacobian (config wording)."""
        if m != n:
            return [f"analysis.spectrum: the Jacobian is {m} x {n} (m outputs, n inputs); "
                    "eigenvalues need a square one (m == n)"]
        if sparse and self.k is None and n > SPARSE_DENSE_LIMIT:
            return [f"analysis.spectrum: 'all' of a sparse {n} x {n} Jacobian would make it "
                    f"dense (the limit is {SPARSE_DENSE_LIMIT}); give k, the number of leading "
                    "eigenvalues to compute"]
        return []

    def dense_spectra(self, rows: list[np.ndarray]) -> np.ndarray:
        """``(P, k)`` eigenvalues from each point's J^T rows: ``rows[k]`` is
        ``(P, n, *out_shape_k)``."""
        points, n = rows[0].shape[:2]
        flat = np.concatenate([np.reshape(r, (points, n, -1)) for r in rows], axis=2)
        return spectrum(np.swapaxes(flat, 1, 2), self.k, self.system).reshape(points, -1)

    def sparse_spectra(self, plan: Any, values: list[np.ndarray]) -> np.ndarray:
        """``(P, k)`` eigenvalues from each point's nonzeros: ``values[k]`` is ``(P, e_k)``, the
        entries of output leaf k of every colour, in ``plan.positions(k, 0, colours)`` order."""
        import scipy.sparse as sp

        entries = np.concatenate([e[plan.positions(k, 0, plan.num_colors)]
                                  for k, e in enumerate(plan.entries)])
        rows, cols = plan.pattern.rows[entries], plan.pattern.cols[entries]
        data = np.concatenate([np.asarray(v) for v in values], axis=1)
        shape = plan.pattern.shape
        out = [spectrum(sp.csr_array((d, (rows, cols)), shape=shape), self.k, self.system)
               for d in data]
        return np.stack(out) if out else np.zeros((0, 0), np.complex128)


class SinglePoint:
    """The flat Jacobian of a one-point call gathered from its shards (as they go to storage),
    for its spectrum: dense ``(m, n)``, or the entries of a sparse plan."""

    def __init__(self, layout: Any, plan: Any):
        self.layout, self.plan = layout, plan
        m = sum(math.prod(s) for s in layout.out_shapes)
        if plan is None:
            dtype = np.result_type(*layout.out_dtypes) if layout.out_dtypes else np.float32
            self.flat = np.zeros((m, layout.basis.n), dtype)
        else:
            self.values = [np.zeros(e.size, d) for e, d in zip(plan.entries, layout.out_dtypes)]

    def add(self, shard: Any) -> None:
        """One shard: ``(start, rows)`` (dense J^T rows) or a ``SparseShard``."""
        if self.plan is None:
            start, rows = shard
            stop = start + len(rows[0])
            self.flat[:, start:stop] = np.concatenate(
                [np.reshape(r, (stop - start, -1)) for r in rows], axis=1).T
            return
        for k, part in enumerate(shard.values):
            self.values[k][self.plan.positions(k, shard.start, shard.stop)] = part

    def spectra(self, analysis: Analysis) -> np.ndarray:
        """``(1, k)``: the eigenvalues of the gathered Jacobian."""
        if self.plan is None:
            return spectrum(self.flat, analysis.k, analysis.system)[None]
        ordered = [v[self.plan.positions(k, 0, self.plan.num_colors)]
                   for k, v in enumerate(self.values)]
        return analysis.sparse_spectra(self.plan, [v[None] for v in ordered])
