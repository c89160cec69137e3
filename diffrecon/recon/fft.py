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


def fft3c(x: torch.Tensor) -> torch.Tensor:
    """Volume (..., Z, H, W) -> 3D k-space (..., kz, ky, kx), centred, orthonormal."""
    d = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d,
                                             norm="ortho"), dim=d)


def ifft3c(k: torch.Tensor) -> torch.Tensor:
    """3D k-space (..., kz, ky, kx) -> volume (..., Z, H, W), centred, orthonormal."""
    d = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=d), dim=d,
                                              norm="ortho"), dim=d)
