"""Writing a reconstruction out: NIfTI, a DICOM series, a PNG montage (one task for MRI
and CT). Outputs are written atomically, so a crash leaves a complete file or none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from diffrecon.tasks.mri import retry_transient
from diffrecon.tasks.store import ArrayRef, ArtifactStore

OUTPUTS = ("nifti", "dicom", "png", "h5")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_transient, task_run_name="export-{method}-{name}")
def export(name: str, method: str, image: ArrayRef, affine: list[list[float]], modality: str,
           outputs: list[str], out_dir: str, store_root: str, description: str,
           deidentify: bool = False, source: dict | None = None) -> list[str]:
    """Write the requested outputs; CT images arrive in CT units and leave in HU. Returns
    the paths, the NIfTI first when written."""
    from diffrecon.io.dicom import write_dicom_series
    from diffrecon.io.nifti import write_nifti
    from diffrecon.io.previews import grid, save_png

    x = ArtifactStore(store_root).get(image)
    if modality == "ct":
        x = x.astype(np.float32) * 2000.0 - 1000.0
    else:
        x = np.abs(x).astype(np.float32)
    aff = np.asarray(affine)
    base = Path(out_dir) / f"{name}_{method}"
    paths: list[str] = []
    if "nifti" in outputs:
        paths.append(str(write_nifti(base.with_name(base.name + ".nii.gz"), x, aff)))
    if "dicom" in outputs:
        files = write_dicom_series(base.with_name(base.name + "_dicom"), x, aff,
                                   "CT" if modality == "ct" else "MR", description, source,
                                   deidentify=deidentify)
        paths.append(str(files[0].parent))
    if "h5" in outputs:
        paths.append(str(write_reconstruction_h5(base.with_name(base.name + ".h5"), x, aff,
                                                 method, description)))
    if "png" in outputs:
        lo, hi = (-160.0, 240.0) if modality == "ct" else (0.0, float(np.percentile(x, 99.5)))
        paths.append(str(save_png(base.with_name(base.name + ".png"),
                                  grid(x[:: max(1, len(x) // 16)], vmin=lo, vmax=hi))))
    return paths


def write_reconstruction_h5(path: Path, image: np.ndarray, affine: np.ndarray, method: str,
                            description: str) -> Path:
    """fastMRI-style HDF5 of a reconstruction: ``reconstruction`` (slices, rows, cols)
    float32 in fastMRI's layout (the last two axes swapped, as fastMRI stores images),
    with the affine and the method as attributes. Written atomically."""
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.swapaxes(image, -1, -2).astype(np.float32))
        f.attrs.update({"method": method, "description": description,
                        "affine_slice_row_col_to_ras": np.asarray(affine, np.float64),
                        "layout": "fastMRI (slices, readout, phase): transpose the last "
                                  "two axes for diffrecon's (slices, rows, cols)"})
    tmp.replace(path)
    return path


@task(cache_policy=NO_CACHE, task_run_name="report-{name}")
def scan_report(name: str, modality: str, records: list, images: dict[str, ArrayRef],
                store_root: str) -> str:
    """A markdown artifact per scan: the QA table and a preview of the middle slice of each
    method, embedded as a PNG data URI so it renders without a file server."""
    import base64
    import io
    import re

    from PIL import Image
    from prefect.artifacts import create_markdown_artifact

    from diffrecon.io.previews import grid

    store = ArtifactStore(store_root)
    slices = []
    for ref in images.values():
        x = store.get(ref)
        x = x * 2000.0 - 1000.0 if modality == "ct" else np.abs(x)
        slices.append(x[len(x) // 2])
    lines = [f"# {name}", "", "| method | setting | PSNR | SSIM | DC residual | s | state |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        def f(v, fmt):
            return "-" if v is None else fmt.format(v)
        lines.append(f"| {r.method} | {r.setting or '-'} | {f(r.psnr, '{:.2f}')} | "
                     f"{f(r.ssim, '{:.3f}')} | {f(r.dc_residual, '{:.4f}')} | "
                     f"{f(r.seconds, '{:.1f}')} | {r.state} |")
    if slices and len({s.shape for s in slices}) == 1:
        lo, hi = (-160.0, 240.0) if modality == "ct" else (0.0, float(np.percentile(
            np.stack(slices), 99.5)))
        sheet = grid(np.stack(slices), ncols=len(slices), vmin=lo, vmax=hi)
        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG")
        uri = base64.b64encode(buf.getvalue()).decode()
        lines += ["", " | ".join(images), "", f"![preview](data:image/png;base64,{uri})"]
    key = re.sub(r"[^a-z0-9-]+", "-", f"report-{name}".lower()).strip("-")[:100]
    create_markdown_artifact(markdown="\n".join(lines), key=key,
                             description=f"QA report for {name}")
    return key
