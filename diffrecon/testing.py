"""The benchmark protocols of ../shared/BENCHMARKS.md as data builders, for tests and
benchmarks (not used by the product).

Benchmarks and tests both build B1/B2 from here, so every figure comes from the same
simulation. Paths to the data are arguments: nothing here assumes ../shared exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffrecon.common.seeds import benchmark_rng, benchmark_seed
from diffrecon.common.units import hu_to_unit
from diffrecon.recon.masks import mask_1d
from diffrecon.recon.simulation import add_noise, simulate_kspace, smooth_phase

if TYPE_CHECKING:
    from diffrecon.recon.ct import CTGeometry
    from diffrecon.recon.operators import LinearOperator

B1_SLICES = tuple(range(55, 91, 5))
B1_QUICK_SLICES = (60, 70, 80, 90)
TRAIN_Z = (65, 85)  # slices of IXI training volumes for choosing settings, never test slices


def ixi_split(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(training, test) IXI volumes: the first 26 by name train, the last 6 test."""
    files = sorted(Path(folder).glob("*.nii.gz"), key=lambda p: p.name)
    return files[:26], files[26:]


@dataclass
class MRICase:
    """One benchmark slice: fully sampled noisy k-space and the reference magnitude."""

    volume: str
    z: int
    kspace: torch.Tensor  # (C, ky, kx) complex64, fully sampled
    reference: torch.Tensor  # (H, W) float32

    def mask(self, accel: int, kind: str) -> torch.Tensor:
        """(ky, kx) B1 mask: exactly n / R lines with the 10 centre lines."""
        from diffrecon.recon.masks import expand_mask

        seed = benchmark_seed(self.volume, self.z, f"{accel}/{kind}")
        n_ky, n_kx = self.kspace.shape[-2:]
        return expand_mask(mask_1d(kind, n_ky, accel, seed), n_kx)


def b1_image(path: str | Path, z: int) -> np.ndarray:
    """The axial slice z of an IXI volume, padded to 128 x 128, magnitude max 1."""
    from diffrecon.common.geometry import slice_volume
    from diffrecon.io.nifti import load_volume

    vol, _ = load_volume(path)
    s = np.abs(slice_volume(vol, "axial")[z])
    if s.shape != (120, 90):
        raise ValueError(f"{Path(path).name}: axial slice has shape {s.shape}, B1 expects 120 x 90")
    s = np.pad(s, ((4, 4), (19, 19)))
    return (s / s.max()).astype(np.float32)


def _b1_kspace(volume: str, z: int, img: np.ndarray, maps: torch.Tensor) -> torch.Tensor:
    """B1's simulation of a magnitude slice: its smooth phase, the coil maps, the noise."""
    x = torch.from_numpy(img) * smooth_phase(img.shape, benchmark_rng(volume, z, "phase"))
    return add_noise(simulate_kspace(x, maps), 1e-3, benchmark_rng(volume, z, "noise"))


def b1_case(path: str | Path, z: int, maps: torch.Tensor) -> MRICase:
    """B1: the slice with its smooth phase, seen by the 16 simulation maps, plus noise."""
    volume = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    img = b1_image(path, z)
    return MRICase(volume, z, _b1_kspace(volume, z, img, maps), torch.from_numpy(img))


def b1_case_resized(case: MRICase, maps: torch.Tensor, shape: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(k-space (C, h, w), truth (h, w)) of a B1 slice resampled to another matrix: the truth
    (cubic, max 1) and the 16 simulation maps (linear, renormalised to unit root-sum-of-
    squares) resampled, phase and noise drawn as B1 draws them."""
    from scipy.ndimage import zoom

    h, w = shape
    img = case.reference.numpy()
    f = (h / img.shape[0], w / img.shape[1])
    truth = np.clip(zoom(img, f, order=3), 0, None).astype(np.float32)
    truth /= truth.max()
    m = maps.numpy()
    mr = zoom(m.real, (1, *f), order=1) + 1j * zoom(m.imag, (1, *f), order=1)
    mr /= np.sqrt((np.abs(mr) ** 2).sum(0, keepdims=True)) + 1e-12
    k = _b1_kspace(case.volume, case.z, truth, torch.from_numpy(mr.astype(np.complex64)))
    return k, torch.from_numpy(truth)


def b1_cases(ixi_folder: str | Path, maps_file: str | Path, quick: bool = False) -> list[MRICase]:
    """All B1 slices (6 test volumes x 8 slices), or B1-quick (2 volumes x 4 slices)."""
    maps = torch.from_numpy(np.load(maps_file))
    _, test = ixi_split(ixi_folder)
    vols, zs = (test[:2], B1_QUICK_SLICES) if quick else (test, B1_SLICES)
    return [b1_case(v, z, maps) for v in vols for z in zs]


def b1_training_cases(ixi_folder: str | Path, maps_file: str | Path, volumes: int = 2
                      ) -> list[MRICase]:
    """B1-style slices (TRAIN_Z) of the first ``volumes`` IXI training volumes: where the
    benchmarks choose settings and fit calibrations without looking at test slices."""
    return _at_train_z(ixi_split(ixi_folder)[0][:volumes], maps_file)


def b1_validation_cases(ixi_folder: str | Path, maps_file: str | Path) -> list[MRICase]:
    """B1-style slices (TRAIN_Z) of the IXI volumes that prior training holds out for its
    validation loss (the last tenth of the training split, as train_priors.py splits it):
    held-out slices for judging a new prior without touching the test volumes."""
    from diffrecon.io.training_slices import split_by_volume

    return _at_train_z(split_by_volume(ixi_split(ixi_folder)[0], 0.1)[1], maps_file)


def _at_train_z(volumes: list[Path], maps_file: str | Path) -> list[MRICase]:
    maps = torch.from_numpy(np.load(maps_file))
    return [b1_case(v, z, maps) for v in volumes for z in TRAIN_Z]


def b2_case(twix_path: str | Path) -> MRICase:
    """B2: the real 16-coil scan and its SENSE reference."""
    from diffrecon.io.twix import read_twix
    from diffrecon.recon.classical import sense_reference

    acq = read_twix(twix_path)
    k = torch.from_numpy(acq.kspace)
    return MRICase(acq.name, 0, k[0], sense_reference(k)[0])


B3_DETECTORS = 183  # the smallest odd count >= 128 sqrt 2


@dataclass
class CTCase:
    """One B3 slice: the image in CT units x = clip((HU + 1000) / 2000, 0, 1), 128 x 128."""

    volume: str
    z: int
    image: torch.Tensor

    def geometry(self, setting: str) -> CTGeometry:
        """'8', '16', '32' (sparse views over [0, pi)) or 'limited' (0..89 degrees)."""
        from diffrecon.recon.ct import CTGeometry

        if setting == "limited":
            angles = np.deg2rad(np.arange(90))
        else:
            angles = np.linspace(0, np.pi, int(setting), endpoint=False)
        return CTGeometry.parallel(angles, B3_DETECTORS, 1.0, (128, 128))

    def sinogram(self, projector: LinearOperator) -> torch.Tensor:
        s = projector.forward(self.image.double()[None])
        g = benchmark_rng(self.volume, self.z, "noise")
        sigma = 1e-3 * float(s.abs().max())
        return s + torch.from_numpy(sigma * g.standard_normal(tuple(s.shape)))


def ct_training_slices(folder: str | Path, per_volume: int = 2) -> list[CTCase]:
    """The first ``per_volume`` of every 16th axial slice of the CT training volumes
    (TotalSegmentator's aorta and pulmonary crops in ``folder``): where the benchmarks choose
    CT settings and fit calibrations without looking at example_ct."""
    return [c for name in ("aorta_ct_cropped.nii.gz", "pulmonary_ct_cropped.nii.gz")
            for c in ct_slices(Path(folder) / name, every=16)[:per_volume]]


def ct_slices(path: str | Path, every: int = 4) -> list[CTCase]:
    """Axial slices (every ``every``-th) of a CT volume in canonical RAS, padded (with
    -1000 HU) or centre-cropped to 128 x 128, in CT units."""
    from diffrecon.common.geometry import pad_or_crop, slice_volume
    from diffrecon.io.nifti import load_volume

    vol, _ = load_volume(path)
    hu = slice_volume(vol, "axial")
    volume = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    out = []
    for z in range(0, hu.shape[0], every):
        s = pad_or_crop(hu[z], 128, fill=-1000.0)
        x = hu_to_unit(s).astype(np.float32)
        out.append(CTCase(volume, z, torch.from_numpy(x)))
    return out
