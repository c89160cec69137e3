"""Exports as a flow of their own, for the CPU work pool: DICOM/HDF5/PNG/NIfTI files and
PACS sends of finished reconstructions, without holding a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from diffrecon.config import Output
from diffrecon.tasks.export import export_result, source_of


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      task_run_name="export-{image}")
def _export_one(image: str, to: list[str], out_dir: str | None, pacs: str | None,
                source: dict, header: str | None, deidentify: bool,
                modality: str | None = None, description: str | None = None,
                pacs_secret: str | None = None) -> dict:
    return export_result(image, to, out_dir or Path(image).parent, modality, description,
                         source=source, header=header, deidentify=deidentify, pacs=pacs,
                         pacs_secret=pacs_secret)


@flow(name="export-results")
def export_results(images: list[str], to: list[Output], out_dir: str | None = None,
                   pacs: str | None = None, source: str | None = None,
                   deidentify: bool = False, modality: Literal["mri", "ct"] | None = None,
                   description: str | None = None,
                   identity: dict[str, str] | None = None,
                   pacs_secret: str | None = None) -> list[dict]:
    """Export reconstruction NIfTI files (as the flows write them) ``to`` dicom, pacs, h5,
    nifti, png; study/patient attributes from ``source`` (a DICOM folder or raw file), the
    DICOM keywords in ``identity`` (e.g. AccessionNumber) winning over it; ``modality``
    and ``description`` only for images without a QA record beside them.
    One image failing does not stop the others; each gets {"image", "state", ...}. The
    destination is checked before any work; credentials: ``pacs_secret`` (a Prefect Secret
    block's name) or the environment (``io.pacs``)."""
    from diffrecon.io.pacs import parse_destination, redact

    if pacs:
        parse_destination(pacs)
    attrs, header = source_of(source, **(identity or {}))
    out = []
    for image in images:
        try:
            r = _export_one(image, to, out_dir, pacs, attrs, header, deidentify, modality,
                            description, pacs_secret)
            out.append({"image": image, "state": "done", **r})
        except Exception as exc:
            error = redact(str(exc))
            get_run_logger().error("export of %s failed: %s", Path(image).name, error)
            out.append({"image": image, "state": "failed", "error": error})
    return out
