"""Writing a reconstruction out (one task for MRI and CT, over io.outputs.write_outputs),
PACS sends, the per-scan report artifact, and ``diffrecon export`` of finished results.
Outputs are written atomically, so a crash leaves a complete file or none."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from diffrecon.common.units import unit_to_hu
from diffrecon.io.outputs import preview_window, write_outputs
from diffrecon.io.records import Volume
from diffrecon.tasks.common import retry_transient
from diffrecon.tasks.store import ArrayRef, ArtifactStore, array_digest

if TYPE_CHECKING:
    from diffrecon.results import ResultRecord


def series_description(method: str, prior: str | None, setting: str) -> str:
    """SeriesDescription: the method, its prior and the sampling ("DDS brain-..., R=8")."""
    return " ".join(p for p in (method.upper() if len(method) <= 4 else method, prior) if p) \
        + f", {setting}"


class VolumeRef(BaseModel):
    """A reconstructed volume as tasks pass it (io.records.Volume with the image in the
    store, CT in CT units): scan identity, method, geometry and provenance."""

    name: str
    method: str
    modality: Literal["mri", "ct"]
    image: ArrayRef
    affine: list[list[float]]
    description: str = ""
    source: dict[str, str] = {}
    header: str | None = None
    std: ArrayRef | None = None  # the std map of a sampled reconstruction (CT in CT units)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_transient, task_run_name="export-{volume.method}-{volume.name}")
def export(volume: VolumeRef, outputs: list[str], out_dir: str, store_root: str,
           deidentify: bool = False) -> list[str]:
    """Write the requested outputs of a volume; the paths, the NIfTI first when written.
    DICOM UIDs derive from the image's digest."""
    store = ArtifactStore(store_root)
    x = store.get(volume.image)
    std = None if volume.std is None else store.get(volume.std)
    if volume.modality == "ct":  # HU; a std scales by the window's width only
        x = unit_to_hu(x.astype(np.float32))
        std = None if std is None else std * float(unit_to_hu(1.0) - unit_to_hu(0.0))
    vol = Volume(volume.name, volume.method, volume.modality, x, np.asarray(volume.affine),
                 volume.description, volume.source, volume.header, std)
    return write_outputs(vol, outputs, out_dir, deidentify,
                         uid_seed=f"{volume.image.digest}/{volume.method}")


def pacs_credentials(secret: str | None) -> tuple[str, str] | None:
    """(user, password) for STOW-RS: from the Prefect Secret block named ``secret``
    ('user:password'), else the environment (see ``io.pacs``), else None."""
    from diffrecon.io.pacs import env_credentials

    if secret:
        from prefect.blocks.system import Secret

        value = str(Secret.load(secret).get())
        user, _, password = value.partition(":")
        return user, password
    return env_credentials()


@task(cache_policy=NO_CACHE, task_run_name="send-{method}-{name}")
def send_series(name: str, method: str, folder: str, destination: str,
                secret: str | None = None) -> str:
    """Send a written DICOM series to the PACS (retries inside, see ``io.pacs``); a line
    for the results and the ledger. The files stay on disk whatever happens."""
    from diffrecon.io.pacs import send

    files = sorted(Path(folder).glob("*.dcm"))
    out = send(destination, files, auth=pacs_credentials(secret))
    return f"{out['instances']} instances to {destination}"


def scan_report(name: str, modality: str, records: list, images: dict[str, ArrayRef],
                store_root: str, stds: dict[str, ArrayRef] | None = None) -> str:
    """A markdown artifact per scan (of the flow run it is called in): the QA table and a
    preview of the middle slice of each method (and, beside a sampled method's image, its
    std map: 0 to its 99.5th percentile), embedded as a PNG data URI so it renders
    without a file server."""
    import base64
    import io
    import re

    from PIL import Image
    from prefect.artifacts import create_markdown_artifact

    from diffrecon.common.previews import grid

    store = ArtifactStore(store_root)
    stds = stds or {}
    slices, labels, std_tiles = [], [], {}
    for method, ref in images.items():
        x = store.get(ref)
        x = unit_to_hu(x) if modality == "ct" else np.abs(x)
        slices.append(x[len(x) // 2])
        labels.append(method)
        if stds.get(method) is not None:
            s = np.abs(store.get(stds[method]))[len(x) // 2]
            std_tiles[len(slices) - 1] = s / max(float(np.percentile(s, 99.5)), 1e-12)
    lines = [f"# {name}", "", "| method | setting | PSNR | SSIM | DC residual | invented px "
             "| mean std | s | state |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        def f(v: float | None, fmt: str):
            return "-" if v is None else fmt.format(v)
        lines.append(f"| {r.method} | {r.setting or '-'} | {f(r.psnr, '{:.2f}')} | "
                     f"{f(r.ssim, '{:.3f}')} | {f(r.dc_residual, '{:.4f}')} | "
                     f"{f(r.invented_px, '{:.0f}')} | {f(r.std_mean, '{:.4f}')} | "
                     f"{f(r.seconds, '{:.1f}')} | {r.state} |")
    if slices and len({s.shape for s in slices}) == 1:
        lo, hi = preview_window(np.stack(slices), modality)
        tiles, names = [], []
        for i, (s, label) in enumerate(zip(slices, labels, strict=True)):
            tiles.append(np.clip((s - lo) / max(hi - lo, 1e-12), 0, 1))
            names.append(label)
            if i in std_tiles:
                tiles.append(np.clip(std_tiles[i], 0, 1))
                names.append(f"{label} std")
        sheet = grid(np.stack(tiles), ncols=len(tiles), vmin=0.0, vmax=1.0)
        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG")
        uri = base64.b64encode(buf.getvalue()).decode()
        lines += ["", " | ".join(names), "", f"![preview](data:image/png;base64,{uri})"]
    key = re.sub(r"[^a-z0-9-]+", "-", f"report-{name}".lower()).strip("-")[:100]
    create_markdown_artifact(markdown="\n".join(lines), key=key,
                             description=f"QA report for {name}")
    return key


def find_record(image_path: str | Path) -> ResultRecord | None:
    """The ResultRecord whose output is ``image_path``, from the results.json or QA files
    beside it (None when the image was not written by diffrecon's flows)."""
    from diffrecon.results import read_results

    image_path = Path(image_path).resolve()
    folder = image_path.parent
    for qa in [folder / "results.json", *sorted(folder.glob("*_qa.json"))]:
        if qa.exists():
            for r in read_results(qa):
                if r.output and Path(r.output).resolve() == image_path:
                    return r
    return None


def source_of(path: str | Path | None, **overrides: str | None) -> tuple[dict, str | None]:
    """(study/patient attributes, ISMRMRD header) of a source scan: a DICOM folder or a raw
    MRI file; the attributes given (DICOM keywords) win. No path: the overrides only."""
    from diffrecon.io.dicom import read_dicom_series, source_attributes

    metadata, header = {}, None
    if path is not None and Path(path).is_dir():
        metadata = read_dicom_series(path).metadata
    elif path is not None:
        from diffrecon.io import load_scan
        from diffrecon.io.ismrmrd_header import acquisition_header

        acq = load_scan(path)
        metadata, header = acq.metadata, acquisition_header(acq)
    return source_attributes(metadata, **overrides), header


def export_result(image_path: str | Path, to: list[str], out_dir: str | Path,
                  modality: str | None = None, description: str | None = None,
                  source: dict | None = None, header: str | None = None,
                  deidentify: bool = False, pacs: str | None = None,
                  pacs_secret: str | None = None) -> dict:
    """Export a reconstruction NIfTI (as the flows write it) to other formats and/or a PACS:
    what ``diffrecon export`` does for one image. Modality, method and description come
    from the QA record beside the image when there is one. Returns {"paths", "sent"}."""
    from diffrecon.io.errors import InvalidScanError
    from diffrecon.io.nifti import read_nifti_slices
    from diffrecon.io.records import scan_name

    if "pacs" in to and not pacs:
        raise ValueError("--to pacs needs a destination (--pacs)")
    record = find_record(image_path)
    modality = modality or (record.modality if record else None)
    if modality not in ("mri", "ct"):
        raise ValueError(f"{image_path}: not a diffrecon result with a QA record; give "
                         "--modality mri or ct")
    try:
        x, aff = read_nifti_slices(image_path, "axial")
    except Exception as exc:
        raise InvalidScanError(image_path, f"cannot read the image ({exc})") from None
    name = record.scan if record else scan_name(image_path)
    method = record.method if record else "export"
    if description is None:
        description = (series_description(record.method, record.prior, record.setting or "")
                       if record else f"diffrecon export of {name}")
    vol = Volume(name, method, modality, x, aff, description, source or {}, header)
    paths = write_outputs(vol, to, out_dir, deidentify, uid_seed=f"{array_digest(x)}/{method}")
    sent = None
    if "pacs" in to:
        from diffrecon.io.pacs import send

        folder = next(p for p in paths if p.endswith("_dicom"))
        out = send(pacs, sorted(Path(folder).glob("*.dcm")), auth=pacs_credentials(pacs_secret))
        sent = f"{out['instances']} instances to {pacs}"
    return {"paths": paths, "sent": sent}
