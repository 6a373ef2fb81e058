"""Sparsity of flat Jacobians: the public ``Sparsity`` (a pattern and its column colouring), the
colouring, and global detection from a jaxpr. The lowest layer: it imports no other rayjac
package.

Example:
    >>> import numpy as np
    >>> from rayjac.sparsity import Sparsity
    >>> Sparsity(np.array([0, 1, 1]), np.array([0, 0, 1]), (2, 2))
    Sparsity(shape=(2, 2), nnz=3, density=0.75, num_colors=2)
"""

from ._coloring import color_columns as color_columns
from ._detect import ConservativeRuleWarning as ConservativeRuleWarning
from ._detect import detect as detect
from ._pattern import DenseColoringWarning as DenseColoringWarning
from ._pattern import Sparsity as Sparsity
from ._pattern import is_bcoo as is_bcoo

__all__ = ["ConservativeRuleWarning", "DenseColoringWarning", "Sparsity", "color_columns",
           "detect", "is_bcoo"]
