"""The pure-JAX core of a ``jacfwd`` call: Variables and the tracing that finds them, the tangent
basis and the layout of the Jacobian blocks, the traced program with its ``vmap(jvp)`` kernels,
the sparse decompression plan, the points of a map and its batched kernels, and the ``Problem``
a job factory returns. No Ray, no storage."""

from ._basis import Layout as Layout
from ._basis import TangentBasis as TangentBasis
from ._plan import SparsePlan as SparsePlan
from ._plan import SparseShard as SparseShard
from ._points import MapPart as MapPart
from ._problem import Problem as Problem
from ._program import TangentProgram as TangentProgram
from ._variables import Variable as Variable

__all__ = ["Layout", "MapPart", "Problem", "SparsePlan", "SparseShard", "TangentBasis",
           "TangentProgram", "Variable"]
