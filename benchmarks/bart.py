"""BART (Debian package ``bart``) as an outside reference: .cfl files and ``ecalib``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def available() -> bool:
    return shutil.which("bart") is not None


def write_cfl(stem: Path, array: np.ndarray) -> None:
    """BART's .hdr/.cfl pair: dimensions in Fortran order, complex64 data."""
    dims = array.shape + (1,) * (16 - array.ndim)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    array.astype(np.complex64).flatten(order="F").tofile(stem.with_suffix(".cfl"))


def read_cfl(stem: Path) -> np.ndarray:
    dims = [int(d) for d in stem.with_suffix(".hdr").read_text().splitlines()[1].split()]
    data = np.fromfile(stem.with_suffix(".cfl"), dtype=np.complex64)
    return data.reshape(dims, order="F")


def ecalib(kspace: np.ndarray, *flags: str) -> tuple[np.ndarray, float]:
    """BART ESPIRiT maps of one slice (C, ky, kx) -> ((C, ky, kx), seconds incl. file I/O).

    Default flags ``-m1 -c 0.8`` (one map set, crop 0.8, BART's own calibration region).
    """
    flags = flags or ("-m1", "-c", "0.8")
    with tempfile.TemporaryDirectory() as d:
        k, m = Path(d) / "k", Path(d) / "m"
        write_cfl(k, np.transpose(kspace, (1, 2, 0))[:, :, None, :])  # (ky, kx, 1, C)
        t0 = time.perf_counter()
        subprocess.run(["bart", "ecalib", *flags, str(k), str(m)], check=True,
                       capture_output=True)
        seconds = time.perf_counter() - t0
        maps = read_cfl(m)
    maps = maps.reshape(maps.shape[0], maps.shape[1], -1)[..., : kspace.shape[0]]
    return np.transpose(maps, (2, 0, 1)).astype(np.complex64), seconds
