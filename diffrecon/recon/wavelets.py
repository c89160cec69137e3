"""Orthonormal periodised 2D wavelet transform (Daubechies) in torch, as matrices per axis.

For a length-n axis (n even) the one-level analysis is the n x n orthogonal matrix whose
first n/2 rows are the lowpass filter shifted by 2 (with wrap-around) and whose last n/2
rows are the quadrature-mirror highpass. Levels recurse on the low-low quadrant, so the
coefficients of an (H, W) image pack into an (H, W) array and the inverse is the
transpose. Sizes must be divisible by 2^levels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=32)
def _analysis_matrix(n: int, name: str) -> np.ndarray:
    import pywt

    h = np.asarray(pywt.Wavelet(name).dec_lo[::-1], dtype=np.float64)  # orthonormal lowpass
    g = np.array([(-1) ** j * h[len(h) - 1 - j] for j in range(len(h))])  # QMF highpass
    m = np.zeros((n, n))
    for k in range(n // 2):
        for j in range(len(h)):
            m[k, (2 * k + j) % n] += h[j]
            m[n // 2 + k, (2 * k + j) % n] += g[j]
    return m


class Wavelet2D:
    """x (..., H, W) real or complex -> packed coefficients (..., H, W), orthonormal."""

    def __init__(self, shape: tuple[int, int], levels: int = 3, name: str = "db4") -> None:
        h, w = shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"image {h} x {w} is not divisible by 2^{levels} for the wavelets")
        self.shape, self.levels, self.name = (h, w), levels, name
        self._mats: dict = {}

    def _m(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.device, like.dtype)
        if key not in self._mats:
            self._mats[key] = torch.from_numpy(_analysis_matrix(n, self.name)).to(
                like.device, like.real.dtype if like.is_complex() else like.dtype)
        m = self._mats[key]
        return m.to(like.dtype) if like.is_complex() else m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        h, w = self.shape
        for _ in range(self.levels):
            sub = out[..., :h, :w]
            out[..., :h, :w] = self._m(h, x) @ sub @ self._m(w, x).T
            h, w = h // 2, w // 2
        return out

    def adjoint(self, c: torch.Tensor) -> torch.Tensor:
        out = c.clone()
        sizes = [(self.shape[0] >> i, self.shape[1] >> i) for i in range(self.levels)]
        for h, w in reversed(sizes):
            sub = out[..., :h, :w]
            out[..., :h, :w] = self._m(h, c).T @ sub @ self._m(w, c)
        return out

    inverse = adjoint
