"""Faces whose names load on first use (PEP 562): the one place rayjac defers imports for
start-up time, so ``import rayjac`` and the ``rayjac`` command's argument and config checks run
before JAX (seconds) or Ray load."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def attributes(package: str, homes: dict[str, str], subpackages: tuple[str, ...] = ()
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``homes`` maps each public name to the
    relative module that defines it; ``subpackages`` load as attributes too.

    Example:
        >>> getattr_, dir_ = attributes("rayjac", {"Sparsity": ".sparsity"})
        >>> getattr_("Sparsity").__name__
        'Sparsity'
    """
    module = importlib.import_module(package)

    def getattr_(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name], package), name)
        elif name in subpackages:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(module), *homes, *subpackages})

    return getattr_, dir_
