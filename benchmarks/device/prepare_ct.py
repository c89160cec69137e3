"""Convert the CT training DICOM series to NIfTI for the device machine (it has no pydicom),
block-averaged in-plane to about 2.5-3 mm so that a 128 x 128 crop covers a body section
like the other CT training volumes, and the LIDC-IDRI chest (1 mm slices) with pairs of
slices averaged to 2 mm, which halves the file (the device machine receives at most 64 MiB:
repository, wheels and data together). Writes into the folder given (default .devdata/ct)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from diffrecon.io.dicom import read_dicom_series

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct"
LIDC = SHARED / "lidc_idri" / "lidc_idri_0314_chest.nii.gz"
SERIES = {"totalsegmentator_dicom": SHARED / "totalsegmentator" / "example_ct_dicom",
          "lungmask": SHARED / "lungmask"}


def block_average(hu: np.ndarray, factor: int) -> np.ndarray:
    s, r, c = hu.shape
    r2, c2 = r // factor * factor, c // factor * factor
    return hu[:, :r2, :c2].reshape(s, r2 // factor, factor, c2 // factor, factor).mean((2, 4))


def average_slice_pairs(src: Path, dst: Path) -> None:
    """The volume's last voxel axis halved: each pair of slices averaged (HU rounded, int16),
    the affine's slice step doubled and its origin moved to the pair's centre."""
    im = nib.load(str(src))
    hu = np.asarray(im.dataobj, dtype=np.float32)
    n = hu.shape[2] // 2 * 2
    pairs = hu[:, :, :n].reshape(*hu.shape[:2], n // 2, 2).mean(-1)
    aff = im.affine.copy()
    aff[:3, 3] += 0.5 * aff[:3, 2]
    aff[:3, 2] *= 2
    nib.save(nib.Nifti1Image(np.round(pairs).astype(np.int16), aff), str(dst))
    print(f"{src.name}: {hu.shape} -> {pairs.shape}, slices {np.linalg.norm(aff[:3, 2]):.2f} mm")


def main(out: str = ".devdata/ct") -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    average_slice_pairs(LIDC, Path(out) / LIDC.name)
    for name, folder in SERIES.items():
        vol = read_dicom_series(folder)
        factor = max(1, int(round(2.75 / vol.spacing[1])))
        hu = block_average(vol.hu, factor)
        aff = vol.affine.copy()
        aff[:3, 1:3] *= factor
        # NIfTI voxel axes = (slice, row, col) with the affine to RAS; training reslices it
        nib.save(nib.Nifti1Image(hu.astype(np.float32), aff), str(Path(out) / f"{name}.nii.gz"))
        print(f"{name}: {hu.shape} at {vol.spacing[0]:.2f} x {vol.spacing[1] * factor:.2f} mm")


if __name__ == "__main__":
    main(*sys.argv[1:])
