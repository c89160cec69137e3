"""Linear operators, batched over leading dimensions, and a reusable adjointness check.

An operator maps x (its ``in_shape`` trailing dims, any leading batch dims) to y.
``adjoint`` is the exact Hermitian adjoint; ``normal`` defaults to A^H A.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffrecon.recon.fft import fft2c, fft3c, ifft2c, ifft3c


class LinearOperator:
    """Base class: subclasses implement ``forward`` and ``adjoint``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))

    def support(self) -> torch.Tensor | None:
        """Where the measurements can say anything about x (None: everywhere)."""
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - the usual name for the adjoint
        return _Adjoint(self)


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator) -> None:
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)


class Composed(LinearOperator):
    """outer(inner(x)); the adjoint is inner^H(outer^H(y))."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        self.outer, self.inner = outer, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


def stacked_copies(v: torch.Tensor | float, copies: int) -> torch.Tensor | float:
    """``copies`` copies of a per-slice tensor stacked along its first dimension, the
    layout :class:`Repeated` takes (scalars and floats stay as they are)."""
    if not isinstance(v, torch.Tensor) or v.ndim == 0:
        return v
    return v.repeat(copies, *([1] * (v.ndim - 1)))


class Repeated(LinearOperator):
    """``copies`` stacked copies of an operator's slices: x (copies * S, ...) -> y
    (copies * S, ...), each block of S slices through ``op`` (K samples of one scan drawn
    in one batch)."""

    def __init__(self, op: LinearOperator, copies: int) -> None:
        self.op, self.copies = op, int(copies)

    def _each(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
              ) -> torch.Tensor:
        if x.shape[0] % self.copies:
            raise ValueError(f"{x.shape[0]} slices are not {self.copies} equal copies")
        return torch.cat([fn(part) for part in x.chunk(self.copies)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._each(self.op.forward, x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._each(self.op.adjoint, y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self._each(self.op.normal, x)

    def support(self) -> torch.Tensor | None:
        s = self.op.support()
        if s is None or s.ndim < 3:  # one support for every slice: the copies' too
            return s
        return torch.cat([s] * self.copies)


class FourierResample(LinearOperator):
    """Images on a ``src`` grid -> the same field of view on a ``dst`` grid: k-space cropped
    or zero-padded (centred, orthonormal, scaled so that image values are kept: a constant
    stays that constant); the adjoint pads or crops back."""

    def __init__(self, src: tuple[int, int], dst: tuple[int, int]) -> None:
        self.src, self.dst = tuple(src), tuple(dst)
        self.c = (dst[0] * dst[1]) ** 0.5 / (src[0] * src[1]) ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from diffrecon.common.geometry import pad_or_crop

        return self.c * ifft2c(pad_or_crop(fft2c(x), self.dst))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        from diffrecon.common.geometry import pad_or_crop

        return self.c * ifft2c(pad_or_crop(fft2c(y), self.src))


class Sense(LinearOperator):
    """Multi-coil Cartesian MRI: y = M F (S x).

    maps: (..., C, H, W) complex coil sensitivities (batch dims broadcast with x);
    mask: broadcastable to (..., ky, kx), 1 where sampled.
    x: (..., H, W) complex image; y: (..., C, ky, kx) k-space (zero where not sampled).
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor) -> None:
        self.maps = maps
        self.mask = mask.to(device=maps.device, dtype=maps.real.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * fft2c(self.maps * x.unsqueeze(-3))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (self.maps.conj() * ifft2c(self.mask * y)).sum(dim=-3)

    def support(self) -> torch.Tensor:
        """Pixels seen by at least one coil (ESPIRiT's crop sets the maps to 0 elsewhere)."""
        return self.maps.abs().square().sum(dim=-3) > 0

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        # the mask is binary: M^H M = M
        return (self.maps.conj() * ifft2c(self.mask * fft2c(self.maps * x.unsqueeze(-3)))).sum(-3)


class SingleCoil(Sense):
    """Single-coil Cartesian MRI, y = M F x, with y of shape (..., 1, ky, kx)."""

    def __init__(self, mask: torch.Tensor, shape: tuple[int, int],
                 dtype: torch.dtype = torch.complex64,
                 device: torch.device | str | None = None) -> None:
        super().__init__(torch.ones((1, *shape), dtype=dtype, device=device), mask)


class ZSuperResolution(LinearOperator):
    """Thick slices from thin ones: each group of ``factor`` consecutive slices averaged.

    x: (S, H, W) with S divisible by ``factor``; y: (S / factor, H, W). The adjoint spreads
    each measured slice back over its group, divided by ``factor``.
    """

    def __init__(self, factor: int) -> None:
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-3]
        if s % self.factor:
            raise ValueError(f"{s} slices are not divisible by the factor {self.factor}")
        return x.reshape(*x.shape[:-3], s // self.factor, self.factor, *x.shape[-2:]).mean(-3)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y / self.factor).repeat_interleave(self.factor, dim=-3)


class Cartesian3D(LinearOperator):
    """3D Cartesian MRI (B4 (b)): y = M F3 (S x), the readout (columns) fully sampled and
    the (z, rows) phase-encoding plane undersampled.

    maps: (C, H, W) coil maps repeated along z, or (C, Z, H, W); None: single coil.
    mask: (Z, H) sampled (kz, ky) positions, broadcast along the readout.
    x: (Z, H, W) complex volume; y: (C, kz, ky, kx).
    """

    def __init__(self, maps: torch.Tensor | None, mask: torch.Tensor,
                 dtype: torch.dtype = torch.complex64) -> None:
        if maps is None:
            maps = torch.ones(1, 1, 1, 1, dtype=dtype, device=mask.device)
        elif maps.ndim == 3:
            maps = maps[:, None]
        self.maps = maps
        self.mask = mask.to(device=maps.device, dtype=maps.real.dtype)[..., None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * fft3c(self.maps * x.unsqueeze(-4))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (self.maps.conj() * ifft3c(self.mask * y)).sum(dim=-4)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))  # the mask is binary: M^H M = M


def gaussian_smooth(x: torch.Tensor, sigma: float | tuple[float, float]
                    ) -> torch.Tensor:
    """Each slice of a real tensor (S, H, W) convolved with a normalised Gaussian of
    ``sigma`` pixels, or (rows, columns) sigmas, 0 leaving that axis alone (separable,
    truncated at 4 sigma, edges continued by their nearest pixel: scipy.ndimage's
    gaussian_filter with mode "nearest"); ``sigma`` 0 returns ``x``."""
    import torch.nn.functional as F

    sy, sx = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    y = x.reshape(-1, 1, *x.shape[-2:])
    for s, axis in ((sx, -1), (sy, -2)):
        if s <= 0:
            continue
        k = _gaussian_kernel(s, x)
        r = (k.numel() - 1) // 2
        pad = (r, r, 0, 0) if axis == -1 else (0, 0, r, r)
        shape = (1, 1, 1, -1) if axis == -1 else (1, 1, -1, 1)
        y = F.conv2d(F.pad(y, pad, mode="replicate"), k.reshape(shape))
    return y.reshape(x.shape)


def _gaussian_kernel(sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = int(4 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def inner(a: torch.Tensor, b: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """Hermitian inner product <a, b> = sum conj(a) b over all but the first batch_dims axes."""
    dims = tuple(range(batch_dims, a.ndim))
    return (a.conj() * b).sum(dim=dims) if dims else a.conj() * b


def adjointness_error(
    op: LinearOperator,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    dtype: torch.dtype = torch.complex128,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """Relative error |<Ax, y> - <x, A^H y>| / (|<Ax, y>|) for random x, y.

    The reusable adjointness test: < 1e-5 in float64, < 1e-4 in complex64.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(x_shape, dtype=dtype, generator=g).to(device)
    y = torch.randn(y_shape, dtype=dtype, generator=g).to(device)
    lhs = inner(op.forward(x), y)
    rhs = inner(x, op.adjoint(y))
    return float((lhs - rhs).abs() / lhs.abs().clamp_min(torch.finfo(lhs.real.dtype).tiny))
