"""Shared fixtures: real data from ../shared (skipped when absent) and small synthetic scans."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
TWIX_16CH = DATA / "mri" / "raw_twix" / "invivo_brain_16ch_gre.dat"


def need(path: Path) -> Path:
    """Skip the test with a clear reason when a file from ../shared is absent."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def twix_path() -> Path:
    return need(TWIX_16CH)


@pytest.fixture(scope="session")
def twix_acq(twix_path):
    from diffrecon.io.twix import read_twix

    return read_twix(twix_path)


def make_acquisition(
    n_slices: int = 2, n_coils: int = 4, ny: int = 32, nx: int = 24, seed: int = 0,
    reference: bool = True,
):
    """A small synthetic multi-coil acquisition (k-space of a disc seen by birdcage coils)."""
    import torch

    from diffrecon.io.records import MRIAcquisition
    from diffrecon.recon.simulation import birdcage_maps, simulate_kspace

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    disc = (yy**2 + xx**2 < 0.6).astype(np.float32)
    img = np.stack([disc * (1 + 0.3 * rng.standard_normal((ny, nx))) for _ in range(n_slices)])
    maps = birdcage_maps(n_coils, (ny, nx))
    k = simulate_kspace(torch.from_numpy(img.astype(np.complex64)), maps).numpy()
    return MRIAcquisition(
        name="synthetic",
        kspace=k.astype(np.complex64),
        mask=np.ones((ny, nx), bool),
        encoded_matrix=(nx, ny, 1),
        recon_matrix=(nx, ny, 1),
        fov_mm=(2.0 * nx, 2.0 * ny, 3.0),
        reference=np.abs(img).astype(np.float32) if reference else None,
        reference_kind="reconstruction_rss" if reference else None,
        metadata={"protocol_name": "synthetic", "frequency_hz": 123.0e6},
    )


@pytest.fixture
def synthetic_acq():
    return make_acquisition()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness, entered once per session, with the flow heartbeat off."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float = 60.0, auth: tuple[str, str] | None = None) -> bool:
    """Poll ``url`` until it answers 200 (a server a test started is up)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, auth=auth).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


class Orthanc:
    """A running Orthanc: ``url`` (REST and DICOMweb under /dicom-web) and ``dicom``
    (C-STORE destination, AE title ORTHANC)."""

    def __init__(self, http: int, dicom: int, login: tuple[str, str] | None = None):
        self.url = f"http://127.0.0.1:{http}"
        self.dicom = f"dicom://ORTHANC@127.0.0.1:{dicom}"
        self.login = login

    def series(self) -> list[dict]:
        import httpx

        return [httpx.get(f"{self.url}/series/{s}", auth=self.login).json()
                for s in httpx.get(self.url + "/series", auth=self.login).json()]

    def tags(self, instance: str) -> dict:
        import httpx

        return httpx.get(f"{self.url}/instances/{instance}/simplified-tags",
                         auth=self.login).json()


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc PACS on 127.0.0.1 with a temporary database, stopped after the test."""
    yield from _orthanc(tmp_path)


@pytest.fixture
def orthanc_login(tmp_path):
    """Orthanc that wants HTTP basic authentication (``.login``: user, password) for its
    REST and DICOMweb APIs."""
    yield from _orthanc(tmp_path, ("pacs-user", "s3cret-Passw0rd"))


def _orthanc(tmp_path, login: tuple[str, str] | None = None):
    import json
    import shutil
    import subprocess

    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
    if not os.path.exists(binary) or not os.path.exists(plugin):
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (.ci/run installs it)")
    http, dicom = free_port(), free_port()
    folder = tmp_path / "orthanc"
    folder.mkdir()
    cfg = {"Name": "diffrecon-test", "StorageDirectory": str(folder / "db"),
           "IndexDirectory": str(folder / "db"), "HttpPort": http, "DicomPort": dicom,
           "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "AuthenticationEnabled": login is not None, "Plugins": [plugin],
           "RegisteredUsers": dict([login]) if login else {},
           "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Orthanc(http, dicom, login)
    if not wait_http(server.url + "/system", 20, login):
        proc.terminate()
        pytest.fail("Orthanc did not start")
    yield server
    proc.terminate()
    proc.wait(timeout=20)
