"""The ``rayjac`` command line (``run``, ``submit``, ``show``, ``plot``): the top layer, thin
over the Python API."""

from ._command import main as main

__all__ = ["main"]
