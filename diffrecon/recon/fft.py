"""Centred orthonormal 2D FFTs over the last two axes (DC at index n // 2)."""

from __future__ import annotations

import torch


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image (..., H, W) -> k-space (..., ky, kx), centred, orthonormal."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """k-space (..., ky, kx) -> image (..., H, W), centred, orthonormal."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))
