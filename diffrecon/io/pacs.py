"""Sending a DICOM series to a PACS by DICOMweb STOW-RS, with retries on network faults.

Only the files leave; nothing is deleted, so a failed send leaves the series on disk.
Identifiers are never logged: errors name the series folder and the HTTP status only.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path


class PacsError(RuntimeError):
    pass


def stow_rs(url: str, files: list[Path], retries: int = 3, backoff: float = 1.0,
            timeout: float = 30.0) -> dict:
    """POST the files as one multipart/related request to ``{url}/studies``.

    Retries connection errors and 5xx answers with exponential backoff; a 4xx answer is
    final. Returns {"status": code, "instances": n}.
    """
    import httpx

    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + Path(f).read_bytes() + b"\r\n" for f in files) + b"--" + boundary.encode() + b"--\r\n"
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}", "Accept": "application/dicom+json"}
    target = url.rstrip("/") + "/studies"
    last = None
    for attempt in range(retries + 1):
        try:
            r = httpx.post(target, content=body, headers=headers, timeout=timeout)
            if r.status_code < 300:
                return {"status": r.status_code, "instances": len(files)}
            if r.status_code < 500:
                raise PacsError(f"STOW-RS to {target} refused the series: HTTP {r.status_code}")
            last = f"HTTP {r.status_code}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    raise PacsError(f"STOW-RS to {target} failed after {retries + 1} attempts ({last})")
