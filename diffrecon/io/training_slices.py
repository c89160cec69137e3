"""Training slices from NIfTI volumes, in the slicing conventions of BENCHMARKS.md.

MRI: magnitude slices scaled to max 1 each (the complex phase is drawn during training).
CT: data units clip((HU + 1000) / 2000, 0, 1). Slices are centrally padded (with 0, i.e.
air for CT) or cropped to ``size`` x ``size``; nearly empty slices are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffrecon.common.geometry import inplane_axes, pad_or_crop, slice_volume


def volume_files(inputs: list[str | Path], first: int | None = None) -> list[Path]:
    """NIfTI files from files and folders, sorted by name; the first ``first`` of them."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.name.endswith((".nii", ".nii.gz")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    files = sorted(set(files), key=lambda q: q.name)
    return files[:first] if first else files


@dataclass
class SliceSet:
    images: np.ndarray  # (N, size, size) float32
    volumes: list[str] = field(default_factory=list)  # the volumes the slices come from
    slice_volume_index: list[int] = field(default_factory=list)
    # the in-plane pixel sizes (mm) of the slices: lowest, highest; None for no slices
    pixel_mm: tuple[float, float] | None = None


def inplane_spacing(path_or_affine: Path | np.ndarray, orientation: str
                    ) -> tuple[float, float]:
    """(rows, cols) pixel size in mm of ``orientation`` slices of a NIfTI volume (its path:
    read from the header) or of a voxel -> RAS affine: the voxel axis along each RAS axis,
    as the slices are cut in RAS."""
    import nibabel as nib

    affine = (np.asarray(path_or_affine) if isinstance(path_or_affine, np.ndarray)
              else nib.load(str(path_or_affine)).affine)
    ornt = nib.io_orientation(affine)
    ras = np.zeros(3)
    for i in range(3):
        ras[int(ornt[i, 0])] = float(np.linalg.norm(affine[:3, i]))
    rows, cols = inplane_axes(orientation)
    return float(ras[rows]), float(ras[cols])


def volume_slices(path: Path, modality: str, orientation: str, size: int,
                  min_fraction: float = 0.05, pixel_mm: float | None = None) -> np.ndarray:
    """(n, size, size) float32 training slices of one volume; with ``pixel_mm`` resampled
    in-plane (linear) to that pixel size first."""
    from diffrecon.io.nifti import load_volume
    from diffrecon.recon.diffusion.prior import hu_to_unit

    vol, affine = load_volume(path)
    s = slice_volume(vol, orientation)
    if pixel_mm is not None:
        s = _resample_inplane(s, affine, orientation, pixel_mm)
    if modality == "ct":
        s = hu_to_unit(s)
        s = pad_or_crop(s, size, 0.0)
        keep = (s > 0.3).mean(axis=(1, 2)) > min_fraction  # more than a sliver of tissue
        return s[keep].astype(np.float32)
    s = np.abs(s)
    vmax = float(s.max()) or 1.0
    keep = (s > 0.1 * vmax).mean(axis=(1, 2)) > min_fraction
    s = pad_or_crop(s[keep], size, 0.0)
    peak = s.reshape(len(s), -1).max(axis=1).clip(1e-12)
    return (s / peak[:, None, None]).astype(np.float32)


def _resample_inplane(s: np.ndarray, affine: np.ndarray, orientation: str,
                      pixel_mm: float) -> np.ndarray:
    from scipy.ndimage import zoom

    rows, cols = inplane_spacing(np.asarray(affine), orientation)
    factors = (1.0, rows / pixel_mm, cols / pixel_mm)
    return zoom(s, factors, order=1, grid_mode=True, mode="grid-constant", cval=float(s.min()))


def load_slices(files: list[Path], modality: str, orientation: str, size: int,
                pixel_mm: float | None = None) -> SliceSet:
    """Training slices of ``files``; with ``pixel_mm`` resampled to that pixel size."""
    chunks, names, index, pixels = [], [], [], []
    for i, f in enumerate(files):
        s = volume_slices(f, modality, orientation, size, pixel_mm=pixel_mm)
        chunks.append(s)
        names.append(f.name)
        index += [i] * len(s)
        if len(s):
            pixels += [pixel_mm] * 2 if pixel_mm else list(inplane_spacing(f, orientation))
    images = np.concatenate(chunks) if chunks else np.zeros((0, size, size), np.float32)
    return SliceSet(images, names, index,
                    (min(pixels), max(pixels)) if pixels else None)


def split_by_volume(files: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Validation volumes: the last round(val_fraction * n) by name (at least one when
    n >= 2 and val_fraction > 0); never a split by slice."""
    n_val = 0 if val_fraction <= 0 or len(files) < 2 else max(1, round(val_fraction * len(files)))
    return files[: len(files) - n_val], files[len(files) - n_val:]
