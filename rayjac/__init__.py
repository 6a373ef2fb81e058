"""rayjac: forward-mode Jacobians of stateful JAX functions, in process or over Ray workers."""

from importlib.metadata import PackageNotFoundError, version

from ._jacobian import JacFwd as JacFwd
from ._jacobian import jacfwd as jacfwd
from ._pattern import DenseColoringWarning as DenseColoringWarning
from ._pattern import Sparsity as Sparsity
from ._problem import Problem as Problem
from ._sparsity import ConservativeRuleWarning as ConservativeRuleWarning
from ._storage import Result as Result
from ._storage import load as load
from ._variables import Variable as Variable

try:
    __version__ = version("rayjac")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
