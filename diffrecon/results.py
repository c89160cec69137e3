"""The one results model: results.json, benchmark JSON, Prefect tables and QA files."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from diffrecon.common.files import atomic_path


class ResultRecord(BaseModel):
    scan: str
    modality: str = "mri"
    method: str
    prior: str | None = None
    setting: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    nmse: float | None = None
    dc_residual: float | None = None
    # MRI with a reference: mean pixels per slice of bright structure the reference lacks
    # (recon.metrics.invented_mask: regions of >= 8 pixels brighter by > 0.1 of its maximum)
    invented_px: float | None = None
    seconds: float | None = None  # the method's own time (the shared coil maps apart)
    maps_seconds: float | None = None  # the scan's coil-map estimation, for methods using it
    nfe: int | None = None
    samples: int | None = None  # diffusion samples per slice (the image is their mean)
    # with samples > 1, the std map over the object, relative to the data range (the
    # slice's maximum for MRI, 2000 HU for CT): mean, 99th percentile, share above the
    # config's std_threshold
    std_mean: float | None = None
    std_p99: float | None = None
    std_above: float | None = None
    state: str = "done"  # done | failed (may succeed on a retry) | invalid (bad input)
    error: str | None = None
    output: str | None = None
    sent: str | None = None  # the PACS send: "N instances to DEST"
    worker: str | None = None  # the Dask worker that reconstructed it (scale-out runs)


_LIST = TypeAdapter(list[ResultRecord])

_COLUMNS = (
    ("scan", "{}"),
    ("modality", "{}"),
    ("method", "{}"),
    ("setting", "{}"),
    ("prior", "{}"),
    ("nfe", "{}"),
    ("psnr", "{:.2f}"),
    ("ssim", "{:.4f}"),
    ("nmse", "{:.4f}"),
    ("dc_residual", "{:.4f}"),
    ("invented_px", "{:.0f}"),
    ("std_mean", "{:.4f}"),
    ("seconds", "{:.2f}"),
    ("maps_seconds", "{:.2f}"),
    ("state", "{}"),
)


def _cell(value: object, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table_rows(records: list[ResultRecord]) -> list[dict]:
    """Rows with formatted cells, as the console table and the Prefect artifact show them."""
    return [
        {name: _cell(getattr(r, name), fmt) for name, fmt in _COLUMNS}
        | ({"error": r.error} if r.error else {})
        for r in records
    ]


def format_table(records: list[ResultRecord]) -> str:
    """A plain-text table of the records, one line each (errors below the table)."""
    rows = table_rows(records)
    names = [n for n, _ in _COLUMNS]
    widths = {n: max([len(n)] + [len(r[n]) for r in rows]) for n in names}
    lines = ["  ".join(n.ljust(widths[n]) for n in names)]
    lines.append("  ".join("-" * widths[n] for n in names))
    lines += ["  ".join(r[n].ljust(widths[n]) for n in names) for r in rows]
    errors = [f"{r.scan}: {r.error}" for r in records if r.error]
    if errors:
        lines += ["", "errors:"] + [f"  {e}" for e in errors]
    return "\n".join(lines)


def write_results(records: list[ResultRecord], path: str | Path) -> Path:
    """Write results.json atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_LIST.dump_json(records, indent=2))
    return path


def read_results(path: str | Path) -> list[ResultRecord]:
    return _LIST.validate_json(Path(path).read_bytes())


def results_as_dicts(records: list[ResultRecord]) -> list[dict]:
    return json.loads(_LIST.dump_json(records))
