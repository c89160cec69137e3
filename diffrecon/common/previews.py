"""Preview PNGs in one place: image grids for sample sheets and reconstruction previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_path


def grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
         vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(N, H, W) real images -> one (rows*H, cols*W) uint8 sheet, windowed to [vmin, vmax]."""
    imgs = np.abs(np.asarray(images, dtype=np.float64)) if np.iscomplexobj(images) \
        else np.asarray(images, dtype=np.float64)
    n, h, w = imgs.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    lo = float(imgs.min()) if vmin is None else vmin
    hi = float(imgs.max()) if vmax is None else vmax
    scaled = np.clip((imgs - lo) / max(hi - lo, 1e-12), 0, 1)
    sheet = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad))
    for i in range(n):
        r, c = divmod(i, ncols)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h,
              pad + c * (w + pad): pad + c * (w + pad) + w] = scaled[i]
    return (sheet * 255).round().astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W) image as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
