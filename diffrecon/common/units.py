"""CT units in one place: Hounsfield units <-> the data units of BENCHMARKS.md,
x = clip((HU - lo) / (hi - lo), 0, 1) with the window [lo, hi] = [-1000, 1000] HU unless
a prior declares another. Works on numpy arrays and torch tensors alike."""

from __future__ import annotations

from typing import TypeVar

HU_MIN, HU_MAX = -1000.0, 1000.0

A = TypeVar("A")


def hu_to_unit(hu: A, lo: float = HU_MIN, hi: float = HU_MAX) -> A:
    """clip((HU - lo) / (hi - lo), 0, 1)."""
    return ((hu - lo) / (hi - lo)).clip(0, 1)


def unit_to_hu(x: A, lo: float = HU_MIN, hi: float = HU_MAX) -> A:
    """The inverse of :func:`hu_to_unit` inside the window."""
    return x * (hi - lo) + lo
