"""Coil-sensitivity estimation (ESPIRiT).

For now through sigpy's ``EspiritCalib``; a later change puts a batched torch version
behind the same function. sigpy's calibration region is square, so its width is the
smaller of the fully sampled centre's height and width, and the kernel is kept small
when the centre is narrow (10 lines need a 3 x 3 kernel; see FACTS.md).
"""

from __future__ import annotations

import numpy as np
import torch


def calibration_region(mask: torch.Tensor) -> tuple[int, int]:
    """(lines, columns) of the contiguous fully sampled block around the k-space centre.

    mask: (ky, kx) bool. Grows a rectangle from the centre while whole rows / columns of it
    stay sampled.
    """
    m = mask.bool().cpu().numpy()
    ny, nx = m.shape
    cy, cx = ny // 2, nx // 2
    if not m[cy, cx]:
        return 0, 0
    # rows: contiguous sampled lines through the centre column
    lo, hi = cy, cy
    while lo - 1 >= 0 and m[lo - 1, cx]:
        lo -= 1
    while hi + 1 < ny and m[hi + 1, cx]:
        hi += 1
    rows = m[lo : hi + 1]
    left, right = cx, cx
    while left - 1 >= 0 and rows[:, left - 1].all():
        left -= 1
    while right + 1 < nx and rows[:, right + 1].all():
        right += 1
    return hi - lo + 1, right - left + 1


def default_kernel(calib_width: int) -> int:
    """ESPIRiT kernel width for a calibration width: 6 for 24 and more, 3 for 10."""
    return int(min(6, max(3, calib_width // 4)))


def estimate_coil_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    calib_width: int | None = None,
    kernel_width: int | None = None,
    thresh: float = 0.02,
    crop: float = 0.8,
    method: str = "sigpy",
) -> torch.Tensor:
    """ESPIRiT coil maps for every slice.

    kspace: (slices, coils, ky, kx) complex, centred; mask: (ky, kx) sampled locations
    (derived from the data if omitted). Returns maps (slices, coils, H, W) complex64 on the
    input's device, unit sum of squares inside the support and 0 outside (crop).
    """
    if method != "sigpy":
        raise ValueError(f"unknown coil-map method {method!r}; available: 'sigpy'")
    import sigpy.mri

    if mask is None:
        mask = kspace.abs().sum(dim=tuple(range(kspace.ndim - 2))) > 0
    if calib_width is None:
        rows, cols = calibration_region(mask)
        calib_width = min(rows, cols)
    if kernel_width is None:
        kernel_width = default_kernel(calib_width)
    if calib_width < kernel_width + 2:  # fewer than 3 x 3 kernel positions: rank-deficient
        raise ValueError(
            f"the fully sampled k-space centre is only {calib_width} wide; ESPIRiT with a "
            f"{kernel_width} x {kernel_width} kernel needs at least {kernel_width + 2}"
        )
    k = kspace.detach().cpu().numpy()
    scale = float(np.abs(k).max()) or 1.0
    out = np.empty(k.shape, np.complex64)
    for s in range(k.shape[0]):
        app = sigpy.mri.app.EspiritCalib(
            k[s] / scale,
            calib_width=calib_width,
            kernel_width=kernel_width,
            thresh=thresh,
            crop=crop,
            show_pbar=False,
        )
        out[s] = np.asarray(app.run())
    return torch.from_numpy(out).to(kspace.device)
