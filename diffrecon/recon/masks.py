"""Undersampling masks (simulating the data they sample: :mod:`diffrecon.recon.simulation`).

Masks are deterministic for a seed. The 1D Cartesian masks follow BENCHMARKS.md (B1),
generalised to any matrix size n: exactly ``n // R`` phase-encode lines in total,
including a fully sampled centre of ``round(0.08 n)`` lines (10 of 128: indices 59..68).
All functions return torch tensors; a 1D mask has shape (ky,), and
:func:`expand_mask` turns it into (ky, kx).
"""

from __future__ import annotations

import numpy as np
import torch

MASK_KINDS = ("equispaced", "random", "gaussian", "poisson")


def centre_lines(n: int, n_centre: int | None = None) -> np.ndarray:
    """Indices of the fully sampled centre lines (10 central lines 59..68 for n = 128)."""
    c = int(round(0.08 * n)) if n_centre is None else int(n_centre)
    start = n // 2 - c // 2
    return np.arange(start, start + c)


def _line_budget(n: int, accel: float, n_centre: int) -> int:
    total = int(n // accel)
    if total < n_centre:
        raise ValueError(
            f"acceleration {accel} leaves {total} of {n} lines, fewer than the {n_centre} "
            "centre lines"
        )
    return total - n_centre


def mask_1d(
    kind: str, n: int, accel: float, seed: int | None = None, n_centre: int | None = None
) -> torch.Tensor:
    """(n,) bool phase-encode mask with exactly n // accel lines, the centre included.

    kind: ``equispaced`` (outer lines at round(linspace) positions, no randomness),
    ``random`` (outer lines drawn uniformly without replacement), ``gaussian`` (outer
    lines drawn with a Gaussian density around the centre, sd n / 6).
    """
    centre = centre_lines(n, n_centre)
    outer = np.setdiff1d(np.arange(n), centre)
    k = _line_budget(n, accel, len(centre))
    if kind == "equispaced":
        chosen = outer[np.round(np.linspace(0, len(outer) - 1, k)).astype(int)] if k else []
    elif kind in ("random", "gaussian"):
        rng = np.random.default_rng(seed)
        if kind == "random":
            p = None
        else:
            w = np.exp(-0.5 * ((outer - n / 2) / (n / 6)) ** 2)
            p = w / w.sum()
        chosen = rng.choice(outer, k, replace=False, p=p)
    else:
        raise ValueError(f"unknown 1D mask kind {kind!r}; expected equispaced, random or gaussian")
    m = np.zeros(n, bool)
    m[centre] = True
    m[np.asarray(chosen, dtype=int)] = True
    return torch.from_numpy(m)


def poisson_2d(
    shape: tuple[int, int], accel: float, seed: int, calib: tuple[int, int] = (12, 12)
) -> torch.Tensor:
    """Variable-density Poisson-disc mask (ky, kz), as ``sigpy.mri.poisson`` draws it."""
    import sigpy.mri

    m = sigpy.mri.poisson(tuple(shape), accel=accel, calib=tuple(calib), seed=int(seed))
    return torch.from_numpy(np.abs(np.asarray(m)) > 0)


def expand_mask(mask_1d_: torch.Tensor, n_kx: int) -> torch.Tensor:
    """(ky,) -> (ky, kx): every readout point of a sampled line is sampled."""
    return mask_1d_[:, None].expand(-1, n_kx).contiguous()


def make_mask(
    kind: str, shape: tuple[int, int], accel: float, seed: int | None = None
) -> torch.Tensor:
    """(ky, kx) bool mask for a 2D slice: 1D kinds along ky, ``poisson`` over (ky, kx)."""
    if kind == "poisson":
        return poisson_2d(shape, accel, 0 if seed is None else seed)
    return expand_mask(mask_1d(kind, shape[0], accel, seed), shape[1])


def sampling_pattern(mask: torch.Tensor) -> str:
    """``equispaced`` for a 1D Cartesian mask (ky, kx) whose lines outside the fully
    sampled centre block are evenly spread (on each side of the block, the gaps between
    consecutive lines vary by under 20 % of their mean: 0-15 % for BENCHMARKS.md's
    equispaced masks); ``random`` for any other mask (irregular lines, 2D or radial masks):
    the aliasing of the first is coherent, of the second noise-like."""
    m = torch.as_tensor(mask).reshape(-1, *mask.shape[-2:])[0].bool()
    if not bool((m == m[:, :1]).all()):  # not the same lines in every column: 2D
        return "random"
    lines = m[:, 0].cpu().numpy()
    lo = hi = len(lines) // 2  # the centre block: the run of sampled lines at the centre
    while lo > 0 and lines[lo - 1]:
        lo -= 1
    while hi < len(lines) - 1 and lines[hi + 1]:
        hi += 1
    idx = np.nonzero(lines)[0]
    gaps = np.concatenate([np.diff(idx[idx < lo]), np.diff(idx[idx > hi])]).astype(float)
    if gaps.size < 2:
        return "equispaced"
    return "equispaced" if gaps.std() / gaps.mean() < 0.2 else "random"
