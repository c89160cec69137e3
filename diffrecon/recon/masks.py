"""Undersampling masks and simulation helpers (k-space from images and coil maps, noise).

Masks are deterministic for a seed. The 1D Cartesian masks follow BENCHMARKS.md (B1),
generalised to any matrix size n: exactly ``n // R`` phase-encode lines in total,
including a fully sampled centre of ``round(0.08 n)`` lines (10 of 128: indices 59..68).
All functions return torch tensors; a 1D mask has shape (ky,), and
:func:`expand_mask` turns it into (ky, kx).
"""

from __future__ import annotations

import numpy as np
import torch

from diffrecon.recon.fft import fft2c

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


def smooth_phase_from(coeffs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """exp(i pi (a u + b v + c u v)) for coefficient rows (..., 3) -> (..., H, W) complex64.

    The grid is B1's: ``v, u = meshgrid(linspace(-1, 1, H), linspace(-1, 1, W), "ij")``.
    """
    v, u = torch.meshgrid(torch.linspace(-1, 1, shape[0], dtype=torch.float64),
                          torch.linspace(-1, 1, shape[1], dtype=torch.float64), indexing="ij")
    c = coeffs.to(torch.float64)[..., None, None]
    arg = torch.pi * (c[..., 0, :, :] * u + c[..., 1, :, :] * v + c[..., 2, :, :] * u * v)
    return torch.polar(torch.ones_like(arg), arg).to(torch.complex64)


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """B1's smooth phase with a, b, c = rng.uniform(-0.5, 0.5, 3) (complex64, (H, W))."""
    return smooth_phase_from(torch.from_numpy(rng.uniform(-0.5, 0.5, 3)), shape)


def simulate_kspace(image: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
    """Fully sampled k-space of complex images (..., H, W) seen by coils (C, H, W).

    Returns (..., C, ky, kx); without maps, a single coil of unit sensitivity.
    """
    if maps is None:
        return fft2c(image)[..., None, :, :]
    return fft2c(image[..., None, :, :] * maps)


def add_noise(kspace: torch.Tensor, rel_sigma: float, rng: np.random.Generator) -> torch.Tensor:
    """Complex Gaussian noise of sigma = rel_sigma * max |k| on real and imaginary parts."""
    sigma = rel_sigma * float(kspace.abs().max())
    shape = tuple(kspace.shape)
    noise = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return kspace + torch.from_numpy((sigma * noise).astype(np.complex64)).to(kspace.device)


def birdcage_maps(
    n_coils: int, shape: tuple[int, int], radius: float = 1.1, width: float = 0.7
) -> torch.Tensor:
    """Smooth synthetic coil maps (C, H, W): coils on a circle, unit sum of squares.

    Coil centres sit at ``radius`` (the image spans [-1, 1]); each sensitivity falls off as
    exp(-d^2 / width^2) with distance d from its centre and carries a phase
    that winds with the angle; used for the built-in demo and synthetic tests.
    """
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = []
    for c in range(n_coils):
        ang = 2 * np.pi * c / n_coils
        cy, cx = radius * np.sin(ang), radius * np.cos(ang)
        d2 = (y - cy) ** 2 + (x - cx) ** 2
        phase = np.exp(1j * (np.arctan2(y - cy, x - cx) + ang))
        maps.append(np.exp(-d2 / width**2) * phase)
    m = np.stack(maps)
    m /= np.sqrt((np.abs(m) ** 2).sum(0, keepdims=True))
    return torch.from_numpy(m.astype(np.complex64))
