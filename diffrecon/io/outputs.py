"""A reconstructed :class:`~diffrecon.io.records.Volume` to the files a user asked for:
``OUT/<scan>_<method>.nii.gz``, ``_dicom/``, ``.h5`` and ``.png``. One function for the
flows and ``diffrecon export``; every file written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.io.records import Volume

# what a reconstruction can be written as ("pacs": the DICOM series, then sent)
OUTPUTS = ("nifti", "dicom", "png", "h5", "pacs")

# preview windows: CT soft tissue in HU; MRI 0 to the 99.5th percentile
CT_PREVIEW_WINDOW = (-160.0, 240.0)


def preview_window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """(low, high) display window of a preview."""
    if modality == "ct":
        return CT_PREVIEW_WINDOW
    return 0.0, float(np.percentile(np.abs(image), 99.5))


def write_outputs(vol: Volume, outputs: list[str], out_dir: str | Path,
                  deidentify: bool = False, uid_seed: str | None = None) -> list[str]:
    """Write the requested ``outputs`` of ``vol`` into ``out_dir``; the paths written, the
    NIfTI first. DICOM UIDs derive from ``uid_seed`` (the image's digest), so a re-export
    writes the same series.

    A volume with a std map also gets ``<scan>_<method>_std.nii.gz``, a DICOM series of its
    own in the same study (``_std_dicom``, SeriesDescription "STD uncertainty: ...", ImageType
    ending UNCERTAINTY,
    MR grey levels of the image's scale) and, in the PNG, the std map of the same slices
    beside the image's (0 to its 99.5th percentile); the image's paths come first."""
    from diffrecon.common.previews import grid, save_png
    from diffrecon.io.dicom import write_dicom_series
    from diffrecon.io.fastmri import write_reconstruction_h5
    from diffrecon.io.nifti import write_nifti

    ct = vol.modality == "ct"
    x = np.asarray(vol.image, np.float32) if ct else np.abs(vol.image).astype(np.float32)
    std = None if vol.std is None else np.abs(vol.std).astype(np.float32)
    aff = np.asarray(vol.affine, np.float64)
    base = Path(out_dir) / f"{vol.name}_{vol.method}"
    paths: list[str] = []
    extra: list[str] = []  # the std map's files, after the image's
    if "nifti" in outputs:
        paths.append(str(write_nifti(base.with_name(base.name + ".nii.gz"), x, aff)))
        if std is not None:
            extra.append(str(write_nifti(base.with_name(base.name + "_std.nii.gz"), std, aff)))
    if "dicom" in outputs or "pacs" in outputs:
        modality = "CT" if ct else "MR"
        files = write_dicom_series(base.with_name(base.name + "_dicom"), x, aff, modality,
                                   vol.description, vol.source, deidentify=deidentify,
                                   uid_seed=uid_seed)
        paths.append(str(files[0].parent))
        if std is not None:  # the marker first: descriptions are cut at 64 characters
            import hashlib

            files = write_dicom_series(
                base.with_name(base.name + "_std_dicom"), std, aff, modality,
                f"STD uncertainty: {vol.description}", vol.source, deidentify=deidentify,
                derivation="per-pixel standard deviation of the diffusion samples, by diffrecon",
                uid_seed=uid_seed, image_kind="UNCERTAINTY",
                # the series' UIDs follow its own content (another --std-scale: another series)
                series_key="std-" + hashlib.sha256(np.ascontiguousarray(std).tobytes())
                .hexdigest()[:16],
                peak=None if ct else float(x.max()) or 1.0)
            extra.append(str(files[0].parent))
    if "h5" in outputs:
        paths.append(str(write_reconstruction_h5(base.with_name(base.name + ".h5"), x, aff,
                                                 vol.method, vol.description, vol.header,
                                                 deidentify)))
    if "png" in outputs:
        every = max(1, len(x) // 16)
        lo, hi = preview_window(x, vol.modality)
        sheet = grid(x[::every], vmin=lo, vmax=hi)
        if std is not None:
            top = float(np.percentile(std, 99.5)) or 1.0
            sheet = np.concatenate([sheet, grid(std[::every], vmin=0.0, vmax=top)], axis=1)
        paths.append(str(save_png(base.with_name(base.name + ".png"), sheet)))
    return paths + extra
