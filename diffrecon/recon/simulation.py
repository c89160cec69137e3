"""Simulating MRI data: k-space of images seen by coil maps, complex noise, B1's smooth
phase, synthetic birdcage coil maps."""

from __future__ import annotations

import numpy as np
import torch

from diffrecon.recon.fft import fft2c


def smooth_phase_from(coeffs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """exp(i pi (a u + b v + c u v)) for coefficient rows (..., 3) -> (..., H, W) complex64,
    on the coefficients' device.

    The grid is B1's: ``v, u = meshgrid(linspace(-1, 1, H), linspace(-1, 1, W), "ij")``.
    """
    dev = coeffs.device
    v, u = torch.meshgrid(torch.linspace(-1, 1, shape[0], dtype=torch.float64, device=dev),
                          torch.linspace(-1, 1, shape[1], dtype=torch.float64, device=dev),
                          indexing="ij")
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
