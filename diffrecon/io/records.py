"""Typed records that the readers return (numpy only; no torch, no Prefect).

Conventions (DESIGN.md): k-space is (slices, coils, ky, kx) complex64 with the
readout (kx) last; images are (slices, rows, cols) with rows along the
phase-encode direction; the affine maps (slice, row, col) indices to RAS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffrecon.io.errors import InvalidScanError


def axial_affine(voxel_mm: tuple[float, float, float], n_rows: int) -> np.ndarray:
    """Affine from (slice, row, col) indices to RAS mm for the axial layout.

    Axial layout of BENCHMARKS.md: rows anterior -> posterior, columns patient
    left -> right, slices inferior -> superior. ``voxel_mm`` is (slice, row, col)
    spacing. The origin is put so the in-plane centre sits at x = y = 0.
    """
    dz, dr, dc = (float(v) for v in voxel_mm)
    a = np.zeros((4, 4))
    a[0, 2] = dc  # column index -> +x (towards the patient's right, RAS)
    a[1, 1] = -dr  # row index -> -y (rows go anterior to posterior)
    a[2, 0] = dz  # slice index -> +z (superior)
    a[3, 3] = 1.0
    return a


@dataclass
class MRIAcquisition:
    """One MRI scan as read from disk.

    kspace: (slices, coils, ky, kx) complex64, centred (DC at index n // 2).
    mask: (ky, kx) bool, True where k-space was sampled.
    encoded_matrix / recon_matrix: (x, y, z) as in the ISMRMRD header, with x the
    readout, y the phase encode.
    fov_mm: encoded field of view (x, y, z) in mm.
    reference: optional (slices, rows, cols) float32 magnitude image to compare with.
    metadata: study attributes (never logged in clear).
    """

    name: str
    kspace: np.ndarray
    mask: np.ndarray
    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    reference: np.ndarray | None = None
    reference_kind: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kspace.shape)

    @property
    def fully_sampled(self) -> bool:
        return bool(self.mask.all())

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """(slice, row, col) spacing in mm: rows follow ky (y), columns kx (x)."""
        ny, nx = self.kspace.shape[-2:]
        fx, fy, fz = self.fov_mm
        nz = max(1, self.encoded_matrix[2])
        return (fz / nz if fz else 1.0, fy / ny if fy else 1.0, fx / nx if fx else 1.0)

    @property
    def pixel_mm(self) -> tuple[float, float] | None:
        """(row, col) pixel size in mm from the header's field of view; None where the header
        gives none (the affine then assumes 1 mm)."""
        ny, nx = self.kspace.shape[-2:]
        fx, fy, _ = self.fov_mm
        return (float(fy) / ny, float(fx) / nx) if fx > 0 and fy > 0 else None

    @property
    def affine(self) -> np.ndarray:
        return axial_affine(self.voxel_size_mm, self.kspace.shape[-2])

    def validate(self) -> MRIAcquisition:
        """Raise InvalidScanError naming the file if the record is unusable."""
        where = self.source or self.name
        k = self.kspace
        if k.ndim != 4:
            raise InvalidScanError(
                where, f"k-space has rank {k.ndim}, expected 4 (slices, coils, ky, kx)"
            )
        if k.size == 0 or 0 in k.shape:
            raise InvalidScanError(where, f"k-space is empty (shape {tuple(k.shape)})")
        if not np.isfinite(k).all():
            raise InvalidScanError(where, "k-space contains NaN or Inf values")
        if not np.any(k):
            raise InvalidScanError(where, "k-space is all zeros")
        if self.mask.shape != k.shape[-2:]:
            raise InvalidScanError(
                where, f"mask shape {self.mask.shape} does not match k-space {k.shape[-2:]}"
            )
        if not self.mask.any():
            raise InvalidScanError(where, "sampling mask selects no k-space line")
        if self.reference is not None:
            if self.reference.ndim != 3 or self.reference.shape[0] != k.shape[0]:
                raise InvalidScanError(
                    where,
                    f"reference image shape {self.reference.shape} does not match "
                    f"{k.shape[0]} slices",
                )
            if not np.isfinite(self.reference).all():
                raise InvalidScanError(where, "reference image contains NaN or Inf values")
        return self


def crop_readout(kspace: np.ndarray, keep: int) -> np.ndarray:
    """k-space whose image is the central ``keep`` columns of ``kspace``'s along the readout
    (last axis): centred orthonormal FFTs, the image values kept."""
    def shift_fft(x: np.ndarray, inverse: bool) -> np.ndarray:
        f = np.fft.ifft if inverse else np.fft.fft
        return np.fft.fftshift(f(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)

    start = (kspace.shape[-1] - keep) // 2
    img = shift_fft(kspace, inverse=True)[..., start: start + keep]
    return np.ascontiguousarray(shift_fft(img, inverse=False).astype(np.complex64))


def remove_readout_oversampling(acq: MRIAcquisition) -> MRIAcquisition:
    """The scan without readout oversampling, as fastMRI does: when the header's
    reconstruction matrix is smaller than the encoded readout (x: 320 of 640) and whole
    readout lines were sampled, the image is cropped to the central ``recon x`` columns
    (:func:`crop_readout`) and the field of view follows. Anything else is returned as it
    is."""
    from dataclasses import replace

    nx = acq.kspace.shape[-1]
    rx = int(acq.recon_matrix[0])
    full_lines = bool((acq.mask.all(axis=1) == acq.mask.any(axis=1)).all())
    if not (0 < rx < nx and int(acq.encoded_matrix[0]) == nx and full_lines):
        return acq
    start = (nx - rx) // 2
    fx, fy, fz = acq.fov_mm
    return replace(acq, kspace=crop_readout(acq.kspace, rx),
                   mask=acq.mask[:, start: start + rx],
                   encoded_matrix=(rx, *acq.encoded_matrix[1:]),
                   fov_mm=(fx * rx / nx, fy, fz))


def mask_from_kspace(kspace: np.ndarray) -> np.ndarray:
    """(ky, kx) sampling mask: a k-space location is sampled if any slice/coil is nonzero."""
    return np.abs(kspace).reshape(-1, *kspace.shape[-2:]).max(axis=0) > 0


def scan_label(path: str | Path, mode: str = "stem") -> str:
    """A scan's name in run names, logs and outputs: the file stem, or with ``mode`` "hash"
    a short one-way hash of it ("scan-1a2b3c4d5e"), for sites whose file names carry
    identifiers."""
    stem = scan_name(path)
    if mode == "hash":
        return "scan-" + short_hash(stem, 10)
    return stem


def short_hash(text: str, n: int = 8) -> str:
    """The first ``n`` hex digits of sha256(text): a stable, one-way tag."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:n]


def unique_label(label: str, key: str, taken: set[str] | dict) -> str:
    """``label``, or ``label-<hash of key>`` when ``label`` is already ``taken`` by another
    scan (two files with one stem: ``a/scan.h5`` and ``b/scan.h5``, ``scan.h5`` and
    ``scan.hdf5``); ``key`` is what tells the two apart (the path, the inbox entry)."""
    return label if label not in taken else f"{label}-{short_hash(key)}"


def scan_labels(paths: list[str] | list[Path], mode: str = "stem") -> list[str]:
    """One label per scan of a batch, never two alike: :func:`scan_label`, and where several
    paths share one, each of them gets the short hash of its resolved path (so neither
    output can be mistaken for the other). Raises ValueError when a path is given twice."""
    resolved = [str(Path(p).resolve()) for p in paths]
    if len(set(resolved)) < len(resolved):
        twice = sorted({r for r in resolved if resolved.count(r) > 1})
        raise ValueError(f"a scan is given more than once: {', '.join(twice)}")
    base = [scan_label(p, mode) for p in paths]
    shared = {b for b in base if base.count(b) > 1}
    return [unique_label(b, r, shared) for b, r in zip(base, resolved, strict=True)]


def scan_name(path: str | Path) -> str:
    """A scan's name in logs and outputs: the file stem without .gz/.nii/.h5 suffixes."""
    name = Path(path).name
    for suffix in (".gz", ".nii", ".h5", ".hdf5", ".dat", ".mrd", ".dcm"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """A reconstructed volume on its way to QA and export: the image, where it lies, and
    where it comes from.

    image: (slices, rows, cols) in output units (MRI magnitude, or complex; CT in HU).
    affine: (slice, row, col) -> RAS mm.
    name / method: the scan's identity and the method that made the image.
    provenance: how it was made (e.g. SeriesDescription ``description``, the study and
    patient DICOM attributes ``source``, the ISMRMRD ``header``); never logged.
    std: the per-pixel standard deviation of a sampled reconstruction (same shape and
    units; CT in HU), or None.
    """

    name: str
    method: str
    modality: str
    image: np.ndarray
    affine: np.ndarray
    description: str = ""
    source: dict = field(default_factory=dict)
    header: str | None = None
    std: np.ndarray | None = None
