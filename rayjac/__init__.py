"""rayjac: forward-mode Jacobians of stateful JAX functions, in process or sharded over Ray
workers, stored as Arrow tables."""

from importlib.metadata import PackageNotFoundError, version

from ._jacobian import JacFwd as JacFwd
from ._jacobian import jacfwd as jacfwd
from .core import Problem as Problem
from .core import Variable as Variable
from .sparsity import ConservativeRuleWarning as ConservativeRuleWarning
from .sparsity import DenseColoringWarning as DenseColoringWarning
from .sparsity import Sparsity as Sparsity
from .store import Result as Result
from .store import load as load

try:
    __version__ = version("rayjac")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"
