"""Global Jacobian sparsity detection from a jaxpr.

``detect(jaxpr, seeded)`` interprets a closed jaxpr on abstract values: each array element
carries the set of seeded input elements it depends on (rows of a CSR matrix) and, when known
at trace time, its value. One rule per primitive family lives in its own module
(``_elementwise``, ``_layout``, ``_indexing``, ``_reduce``, ``_contract``, ``_control``,
``_loops``); ``_interpret`` holds the walk, constant folding, the fallback and the table.

The pattern holds for every input value: it may have more entries than the Jacobian's
structural nonzeros, never fewer.
"""

from ._interpret import ConservativeRuleWarning as ConservativeRuleWarning
from ._interpret import Reads as Reads
from ._interpret import detect as detect
from ._interpret import detect_reads as detect_reads
