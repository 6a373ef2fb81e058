"""Spectra and stability of Jacobians (SPEC 1.8): `spectrum` and `stability_summary`."""

from ._spectrum import spectrum as spectrum
from ._spectrum import stability_summary as stability_summary

__all__ = ["spectrum", "stability_summary"]
