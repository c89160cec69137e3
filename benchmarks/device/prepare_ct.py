"""Convert the CT training DICOM series to NIfTI for the device machine (it has no pydicom),
block-averaged in-plane to about 2.5-3 mm so that a 128 x 128 crop covers a body section
like the other CT training volumes. Writes into the folder given (default .devdata/ct)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from diffrecon.io.dicom import read_dicom_series

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct"
SERIES = {"totalsegmentator_dicom": SHARED / "totalsegmentator" / "example_ct_dicom",
          "lungmask": SHARED / "lungmask"}


def block_average(hu: np.ndarray, factor: int) -> np.ndarray:
    s, r, c = hu.shape
    r2, c2 = r // factor * factor, c // factor * factor
    return hu[:, :r2, :c2].reshape(s, r2 // factor, factor, c2 // factor, factor).mean((2, 4))


def main(out: str = ".devdata/ct") -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
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
