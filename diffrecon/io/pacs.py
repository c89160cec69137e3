"""Sending a DICOM series to a PACS, by DICOMweb STOW-RS or DIMSE C-STORE, with retries on
network faults.

A destination is one string: ``http(s)://host:port/dicom-web`` (STOW-RS to its
``/studies``) or ``dicom://AE_TITLE@host:port`` (C-STORE; the calling AE title is
DIFFRECON unless given as ``dicom://CALLING:CALLED@host:port``). Only the files leave;
nothing is deleted, so a failed send leaves the series on disk. Identifiers are never
logged: errors name the destination and the status only.

Credentials (STOW-RS basic authentication) never travel in the destination, which is
printed, logged and stored: they come as ``(user, password)`` from the environment
(``DIFFRECON_PACS_USER`` / ``DIFFRECON_PACS_PASSWORD``) or from a Prefect Secret block
(the tasks' job). ``https`` certificates are checked (``DIFFRECON_PACS_CA_BUNDLE`` names a
site CA bundle); plain ``http`` is accepted with a warning. :func:`redact` removes any
user-info from URLs in a text.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

USER_ENV, PASSWORD_ENV, CA_ENV = ("DIFFRECON_PACS_USER", "DIFFRECON_PACS_PASSWORD",
                                  "DIFFRECON_PACS_CA_BUNDLE")
_USERINFO = re.compile(r"(?i)\b(https?://)[^/@\s]*@")


class PacsError(RuntimeError):
    pass


def redact(text: str) -> str:
    """``text`` with the user-info (user:password@) of every http(s) URL replaced by ***."""
    return _USERINFO.sub(r"\1***@", text)


def split_credentials(dest: str) -> tuple[str, tuple[str, str] | None]:
    """(the destination without user-info, (user, password) from it or None)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not dest.lower().startswith(("http://", "https://")):
        return dest, None
    parts = urlsplit(dest)
    if parts.username is None:
        return dest, None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), (unquote(parts.username),
                                                       unquote(parts.password or ""))


def env_credentials() -> tuple[str, str] | None:
    """(user, password) from DIFFRECON_PACS_USER / DIFFRECON_PACS_PASSWORD, or None."""
    import os

    user = os.environ.get(USER_ENV)
    return None if not user else (user, os.environ.get(PASSWORD_ENV, ""))


def stow_rs(url: str, files: list[Path], retries: int = 3, backoff: float = 1.0,
            timeout: float = 30.0, auth: tuple[str, str] | None = None) -> dict:
    """POST the files as one multipart/related request to ``{url}/studies`` (basic
    authentication with ``auth``; certificates checked for https).

    Retries connection errors and 5xx answers with exponential backoff; a 4xx answer is
    final. Returns {"status": code, "instances": n}.
    """
    import os

    import httpx

    if url.lower().startswith("http://"):
        import warnings

        warnings.warn(f"PACS destination {url} is plain http: the series (and any password) "
                      "travel unencrypted; use https", stacklevel=2)

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
            r = httpx.post(target, content=body, headers=headers, timeout=timeout, auth=auth,
                           verify=os.environ.get(CA_ENV) or True)
            if r.status_code < 300:
                return {"status": r.status_code, "instances": len(files)}
            if r.status_code in (401, 403):
                raise PacsError(f"STOW-RS to {target} refused the credentials (HTTP "
                                f"{r.status_code}); set {USER_ENV} / {PASSWORD_ENV} or a "
                                "Prefect Secret block (--pacs-secret)")
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
    "calling"}; a one-line ValueError saying what is wrong otherwise (a URL with a password
    is refused: credentials go in the environment or a Secret block)."""
    from urllib.parse import urlsplit

    shown = redact(dest)
    forms = "expected http(s)://host:port/dicom-web or dicom://AE_TITLE@host:port"
    if dest.lower().startswith(("http://", "https://")):
        try:
            parts = urlsplit(dest)
            port = parts.port
        except ValueError:
            raise ValueError(f"PACS destination {shown}: the port is not a number from 1 "
                             "to 65535") from None
        if not parts.hostname:
            raise ValueError(f"PACS destination {shown}: no host; {forms}")
        if port == 0:
            raise ValueError(f"PACS destination {shown}: the port is not a number from 1 "
                             "to 65535")
        if parts.username is not None:
            raise ValueError(f"PACS destination {shown}: credentials in the URL would be "
                             f"printed and stored; set {USER_ENV} / {PASSWORD_ENV} or a "
                             "Prefect Secret block (--pacs-secret) instead")
        return {"kind": "stow-rs", "url": dest.rstrip("/")}
    m = _DIMSE.match(dest)
    if m is None:
        raise ValueError(f"PACS destination {shown}: {forms}")
    if not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"PACS destination {shown}: the port is not a number from 1 to 65535")
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


def send(dest: str, files: list[Path], retries: int = 3, backoff: float = 1.0,
         auth: tuple[str, str] | None = None) -> dict:
    """Send a series to a destination string (see the module), STOW-RS with ``auth`` or
    the environment's credentials; {"status", "instances", "destination"}."""
    d = parse_destination(dest)
    if d["kind"] == "stow-rs":
        out = stow_rs(d["url"], files, retries=retries, backoff=backoff,
                      auth=auth or env_credentials())
    else:
        out = c_store(d["host"], d["port"], files, d["called"], d["calling"], retries, backoff)
    return {**out, "destination": dest}
