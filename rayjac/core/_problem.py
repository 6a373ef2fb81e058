"""What a job factory returns: a function, its arguments and its named Variables, and (for a
map over many points) which arguments and Variables carry the points."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ._variables import Variable


@dataclasses.dataclass(frozen=True)
class Problem:
    """A function to differentiate, with its positional arguments and named Variables.

    Job factories (``make(**params)`` in a module of ``jobs/``) return one. ``variables`` names
    the Variables that a config's ``jacfwd.grad_vars`` may refer to. An ``in_axes`` that is not
    None, or ``states``, makes the run a map over points (``jf.map``): ``in_axes`` says which
    positional arguments carry the points along axis 0 (``0``, or one ``0``/``None`` per
    argument); ``states`` maps variable names to arrays ``(B,) + v.shape`` whose rows are the
    Variable's value at each point.

    Example:
        >>> import jax.numpy as jnp, rayjac
        >>> w = rayjac.Variable(jnp.ones(3))
        >>> p = rayjac.Problem(lambda x: w.value * x, args=(jnp.arange(3.0),), variables={"w": w})
        >>> sorted(p.variables)
        ['w']
    """

    func: Callable[..., Any]
    args: tuple = ()
    variables: dict[str, Variable] = dataclasses.field(default_factory=dict)
    in_axes: Any = None
    states: dict[str, Any] | None = None

    @property
    def is_map(self) -> bool:
        """Whether the run computes the Jacobian at many points (``jf.map``)."""
        return self.in_axes is not None or bool(self.states)

    def __post_init__(self):
        if not callable(self.func):
            raise TypeError(f"Problem.func must be callable, got {type(self.func).__name__}.")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "variables", dict(self.variables))
        for name, var in self.variables.items():
            if not isinstance(var, Variable):
                raise TypeError(
                    f"Problem.variables[{name!r}] must be a rayjac.Variable, got "
                    f"{type(var).__name__}. Wrap the array: rayjac.Variable(array).")
        unknown = [name for name in self.states or {} if name not in self.variables]
        if unknown:
            raise ValueError(
                f"Problem.states names {unknown}, which are not in Problem.variables "
                f"({sorted(self.variables)}); key states by the names of variables.")
