"""Classical MRI reconstructions: zero-filled root-sum-of-squares and CG-SENSE."""

from __future__ import annotations

import torch

from diffrecon.recon.fft import ifft2c
from diffrecon.recon.operators import Sense
from diffrecon.recon.solvers import conjugate_gradient


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root sum of squares over the coil axis."""
    return coil_images.abs().square().sum(dim=dim).sqrt()


def zero_filled(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-filled RSS image (..., H, W) from k-space (..., C, ky, kx)."""
    k = kspace if mask is None else kspace * mask.to(kspace.device, kspace.real.dtype)
    return rss(ifft2c(k))


def sense_combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """sum_c conj(S_c) x_c / sum_c |S_c|^2, 0 where the maps vanish (B2's reference)."""
    num = (maps.conj() * coil_images).sum(dim=-3)
    den = maps.abs().square().sum(dim=-3)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def cg_sense(
    kspace: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 1e-2,
    max_iter: int = 30,
    tol: float = 1e-6,
) -> torch.Tensor:
    """CG-SENSE: argmin ||M F S x - y||^2 + lam ||x||^2, batched over slices.

    kspace: (S, C, ky, kx); maps (S, C, H, W); mask (ky, kx). ``lam`` is relative: the
    k-space is scaled to max |y| = 1 for the solve and the result scaled back, so the same
    lam works for any scanner's units. Returns complex images (S, H, W).
    """
    scale = float(kspace.abs().max()) or 1.0
    y = kspace / scale
    op = Sense(maps, mask)
    b = op.adjoint(y)
    x, _ = conjugate_gradient(lambda v: op.normal(v) + lam * v, b, max_iter=max_iter, tol=tol)
    return x * scale
