"""Quality metrics of BENCHMARKS.md, on magnitude images, averaged over slices."""

from __future__ import annotations

import numpy as np
import torch

from diffrecon.common.geometry import pad_or_crop
from diffrecon.recon.operators import LinearOperator


def magnitudes(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """|x| as float64 numpy (S, H, W); one slice (H, W) gets its slice axis."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.abs(np.asarray(x)).astype(np.float64)
    return x[None] if x.ndim == 2 else x


def _pair(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    r = magnitudes(ref)
    a = magnitudes(x)
    if a.shape[-2:] != r.shape[-2:]:
        a = pad_or_crop(a, r.shape[-2:])
    if a.shape != r.shape:
        raise ValueError(f"image shape {a.shape} does not match reference {r.shape}")
    return a, r


def ct_window(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CT image in BENCHMARKS.md's units as it is scored: the real part clipped to [0, 1]
    (-1000 to 1000 HU), so an FBP undershoot below air counts as air, not as its magnitude."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.real(a), 0.0, 1.0)


def psnr(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray,
         data_range: float | None = None) -> float:
    """Mean over slices of 20 log10(range / RMSE), range = max |ref| of the slice (MRI)."""
    a, r = _pair(x, ref)
    vals = []
    for s in range(r.shape[0]):
        rng = float(r[s].max()) if data_range is None else data_range
        mse = float(np.mean((a[s] - r[s]) ** 2))
        vals.append(float("inf") if mse == 0 else 20 * np.log10(rng / np.sqrt(mse)))
    return float(np.mean(vals))


def ssim(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray,
         data_range: float | None = None) -> float:
    """Mean over slices of scikit-image's SSIM with the same data range as PSNR."""
    from skimage.metrics import structural_similarity

    a, r = _pair(x, ref)
    m = min(r.shape[-2:])
    win = min(7, m if m % 2 else m - 1)  # small images: the largest odd window that fits
    if win < 3:
        return float("nan")
    vals = [
        structural_similarity(
            a[s], r[s], win_size=win,
            data_range=float(r[s].max()) if data_range is None else data_range,
        )
        for s in range(r.shape[0])
    ]
    return float(np.mean(vals))


def nmse(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    """Mean over slices of ||x - ref||^2 / ||ref||^2 on magnitudes."""
    a, r = _pair(x, ref)
    vals = [float(np.sum((a[s] - r[s]) ** 2) / max(np.sum(r[s] ** 2), 1e-30))
            for s in range(r.shape[0])]
    return float(np.mean(vals))


INVENTED_LEVEL = 0.1  # of the slice's maximum |reference|
INVENTED_PX = 8  # the smallest region that counts (32 mm^2 at 2 mm pixels)


def invented_mask(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray,
                  support: np.ndarray | None = None) -> np.ndarray:
    """Bright structure the reference does not have, (S, H, W) bool: the pixels of
    8-connected regions of at least INVENTED_PX pixels inside ``support`` (default: the
    reference's object, recon.uncertainty.object_support) where |x| exceeds |ref| by more
    than INVENTED_LEVEL of the slice's maximum |ref| -- blobs or streaks a reader could take
    for something (a lesion, a vessel); folded copies of the skull count too."""
    from scipy.ndimage import label

    a, r = _pair(x, ref)
    if support is None:
        from diffrecon.recon.uncertainty import object_support

        support = object_support(r)
    sup = np.asarray(support, bool).reshape(r.shape)
    out = np.zeros(r.shape, bool)
    for s in range(r.shape[0]):
        over = (a[s] - r[s] > INVENTED_LEVEL * float(r[s].max())) & sup[s]
        regions, _ = label(over, structure=np.ones((3, 3)))
        big = np.bincount(regions.ravel()) >= INVENTED_PX
        big[0] = False  # not a region
        out[s] = big[regions]
    return out


def invented_px(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray,
                support: np.ndarray | None = None) -> float:
    """Mean over slices of the pixels of :func:`invented_mask`."""
    return float(invented_mask(x, ref, support).sum(axis=(-2, -1)).mean())


def dc_residual(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Data-consistency residual ||A x - y|| / ||y|| over the whole batch."""
    return float(torch.linalg.vector_norm(op.forward(x) - y) / torch.linalg.vector_norm(y))
