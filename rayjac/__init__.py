"""rayjac: forward-mode Jacobians of stateful JAX functions, in process or sharded over Ray
workers, stored as Arrow tables."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ._lazy import attributes as _attributes

if TYPE_CHECKING:
    from ._jacobian import JacFwd as JacFwd
    from ._jacobian import jacfwd as jacfwd
    from .analysis import spectrum as spectrum
    from .core import Problem as Problem
    from .core import Variable as Variable
    from .sparsity import ConservativeRuleWarning as ConservativeRuleWarning
    from .sparsity import DenseColoringWarning as DenseColoringWarning
    from .sparsity import Sparsity as Sparsity
    from .store import Result as Result
    from .store import load as load

# The public names and their homes; they load on first use (see _lazy).
_HOMES = {"JacFwd": "._jacobian", "jacfwd": "._jacobian", "spectrum": ".analysis",
          "Problem": ".core", "Variable": ".core", "ConservativeRuleWarning": ".sparsity",
          "DenseColoringWarning": ".sparsity", "Sparsity": ".sparsity", "Result": ".store",
          "load": ".store"}
_PACKAGES = ("analysis", "cli", "core", "engine", "runs", "sparsity", "store")
__all__ = sorted(_HOMES)

try:
    __version__ = version("rayjac")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"


__getattr__, __dir__ = _attributes(__name__, _HOMES, _PACKAGES)
