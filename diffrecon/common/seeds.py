"""Seeds of BENCHMARKS.md: ``crc32("{volume}/{z}/{what}")``, one generator per purpose."""

from __future__ import annotations

import zlib

import numpy as np


def benchmark_seed(volume: str, z: int | str | None, what: str) -> int:
    """crc32 of ``"{volume}/{z}/{what}"`` (z None: ``"{volume}/{what}"``, as B3's noise and
    B4's Poisson masks use)."""
    key = f"{volume}/{what}" if z is None else f"{volume}/{z}/{what}"
    return zlib.crc32(key.encode())


def benchmark_rng(volume: str, z: int | str | None, what: str) -> np.random.Generator:
    """``numpy.random.default_rng`` seeded with :func:`benchmark_seed`."""
    return np.random.default_rng(benchmark_seed(volume, z, what))
