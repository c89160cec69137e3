"""Classical MRI reconstructions: zero-filled RSS, CG-SENSE, L1-wavelet and TV SENSE.

The regularised methods work on k-space scaled to max |y| = 1 (so their weights do not
depend on the scanner's units) and scale the result back.
"""

from __future__ import annotations

import torch

from diffrecon.recon.fft import ifft2c
from diffrecon.recon.operators import Sense
from diffrecon.recon.solvers import admm_tv, conjugate_gradient, fista, soft_threshold


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


def _scaled_problem(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor):
    """The SENSE operator, A^H y for k-space scaled to max |y| = 1, and that scale (the
    regularised methods solve in these units and multiply the result back)."""
    scale = float(kspace.abs().max()) or 1.0
    op = Sense(maps, mask)
    return op, op.adjoint(kspace / scale), scale


def cg_sense(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, lam: float = 1e-2,
             max_iter: int = 30, tol: float = 1e-6) -> torch.Tensor:
    """CG-SENSE: argmin ||M F S x - y||^2 + lam ||x||^2, batched over slices.

    kspace: (S, C, ky, kx); maps (S, C, H, W); mask (ky, kx). ``lam`` is relative: the
    k-space is scaled to max |y| = 1 for the solve and the result scaled back, so the same
    lam works for any scanner's units. Returns complex images (S, H, W).
    """
    op, b, scale = _scaled_problem(kspace, maps, mask)
    x, _ = conjugate_gradient(lambda v: op.normal(v) + lam * v, b, max_iter=max_iter, tol=tol)
    return x * scale


def l1_wavelet_sense(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor,
                     lam: float = 1e-4, iters: int = 60, levels: int = 3,
                     wavelet: str = "db4") -> torch.Tensor:
    """argmin 0.5 ||M F S x - y||^2 + lam ||W x||_1 by FISTA; W orthonormal Daubechies.

    Any image size: when a side is not a multiple of 2^levels the problem is solved on the
    image centre-padded to one (the pad is outside the data's reach, A composed with the
    crop, and the wavelet penalty keeps it near zero) and cropped back. Step 1: ||A^H A||
    <= 1 for maps with unit sum of squares and a binary mask.
    """
    from diffrecon.common.geometry import pad_or_crop
    from diffrecon.recon.wavelets import Wavelet2D

    op, b, scale = _scaled_problem(kspace, maps, mask)
    h, w = b.shape[-2:]
    m = 2**levels
    grid = (h + -h % m, w + -w % m)
    wav = Wavelet2D(grid, levels, wavelet)

    def normal(z: torch.Tensor) -> torch.Tensor:
        return pad_or_crop(op.normal(pad_or_crop(z, (h, w))), grid)

    def prox(v: torch.Tensor, step: float):
        return wav.adjoint(soft_threshold(wav.forward(v), lam * step))

    z = fista(normal, pad_or_crop(b, grid), prox, step=1.0, iters=iters)
    return pad_or_crop(z, (h, w)) * scale


def tv_sense(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, lam: float = 1e-4,
             iters: int = 40, cg_iters: int = 4, rho: float | None = None) -> torch.Tensor:
    """argmin 0.5 ||M F S x - y||^2 + lam TV(x) (isotropic, in-plane) by ADMM."""
    op, b, scale = _scaled_problem(kspace, maps, mask)
    x = admm_tv(op.normal, b, lam, dims=(-2, -1), rho=rho,
                iters=iters, cg_iters=cg_iters)
    return x * scale


def sense_reference(kspace: torch.Tensor, method: str = "torch") -> torch.Tensor:
    """Reference image of fully sampled multi-coil data (benchmark B2's definition):
    |sum_c conj(S_c) x_c| / sum_c |S_c|^2 with ESPIRiT maps of the fully sampled data
    (calibration 24, crop 0.8), 0 where the maps vanish. kspace (S, C, ky, kx) -> (S, H, W)."""
    from diffrecon.recon.coils import estimate_coil_maps

    calib = min(24, *kspace.shape[-2:])
    maps = estimate_coil_maps(kspace, calib=calib, crop=0.8, method=method)
    return sense_combine(ifft2c(kspace), maps).abs()
