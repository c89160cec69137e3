"""Sending a DICOM series to a PACS, by DICOMweb STOW-RS or DIMSE C-STORE, with retries on
network faults.

A destination is one string: ``http(s)://host:port/dicom-web`` (STOW-RS to its
``/studies``) or ``dicom://AE_TITLE@host:port`` (C-STORE; the calling AE title is
DIFFRECON unless given as ``dicom://CALLING:CALLED@host:port``). Only the files leave;
nothing is deleted, so a failed send leaves the series on disk. Identifiers are never
logged: errors name the destination and the status only.
"""

from __future__ import annotations

import re
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


_DIMSE = re.compile(r"^dicom://(?:(?P<calling>[^:@/]{1,16}):)?(?P<called>[^:@/]{1,16})@"
                    r"(?P<host>[^:/]+):(?P<port>\d+)/?$")


def parse_destination(dest: str) -> dict:
    """{"kind": "stow-rs", "url"} or {"kind": "c-store", "host", "port", "called",
    "calling"}; a ValueError saying what a destination looks like otherwise."""
    if dest.startswith(("http://", "https://")):
        return {"kind": "stow-rs", "url": dest.rstrip("/")}
    m = _DIMSE.match(dest)
    if m is None:
        raise ValueError(f"PACS destination {dest!r}: expected http(s)://host:port/dicom-web "
                         "or dicom://AE_TITLE@host:port")
    return {"kind": "c-store", "host": m["host"], "port": int(m["port"]),
            "called": m["called"], "calling": m["calling"] or "DIFFRECON"}


def c_store(host: str, port: int, files: list[Path], called_ae: str = "ORTHANC",
            calling_ae: str = "DIFFRECON", retries: int = 3, backoff: float = 1.0,
            timeout: float = 30.0) -> dict:
    """Send the files by DIMSE C-STORE over one association (per attempt). A refused
    association or a lost connection is retried with exponential backoff; a failure
    status for an instance is final. Returns {"status": 0, "instances": n}."""
    from pydicom import dcmread
    from pynetdicom import AE, StoragePresentationContexts

    datasets = [dcmread(str(f)) for f in files]
    target = f"dicom://{called_ae}@{host}:{port}"
    last = None
    for attempt in range(retries + 1):
        ae = AE(ae_title=calling_ae)
        ae.requested_contexts = StoragePresentationContexts
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        assoc = ae.associate(host, port, ae_title=called_ae)
        if assoc.is_established:
            try:
                for ds in datasets:
                    status = assoc.send_c_store(ds)
                    if not status:  # no answer: the connection was lost
                        last = "connection lost during the transfer"
                        break
                    code = int(status.Status)
                    if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success or warnings
                        raise PacsError(f"C-STORE to {target} refused an instance: status "
                                        f"0x{code:04X}")
                else:
                    return {"status": 0, "instances": len(datasets)}
            finally:
                assoc.release()
        elif assoc.is_rejected:  # the PACS does not accept us (AE title): final
            raise PacsError(f"C-STORE to {target}: association rejected")
        else:
            last = "no association (connection refused or timed out)"
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    raise PacsError(f"C-STORE to {target} failed after {retries + 1} attempts ({last})")


def send(dest: str, files: list[Path], retries: int = 3, backoff: float = 1.0) -> dict:
    """Send a series to a destination string (see the module); {"status", "instances",
    "destination"}."""
    d = parse_destination(dest)
    if d["kind"] == "stow-rs":
        out = stow_rs(d["url"], files, retries=retries, backoff=backoff)
    else:
        out = c_store(d["host"], d["port"], files, d["called"], d["calling"], retries, backoff)
    return {**out, "destination": dest}
