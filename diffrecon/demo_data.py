"""The built-in sample scan of ``diffrecon demo``: no download, nothing from ../shared.

The MNI152 2009 T1 template ships inside nilearn's wheel. A few axial slices of it get
a smooth phase and 12 simulated coils, and are written as a fully sampled multi-coil
fastMRI HDF5 file. Its ``reconstruction_rss`` slot holds the noise-free magnitude image,
the ground truth a simulation knows (as benchmark B1 compares with).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

TEMPLATE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_path() -> Path:
    return Path(str(resources.files("nilearn") / TEMPLATE))


def demo_slices(n_slices: int = 4, size: int = 128, voxel_mm: int = 2
                ) -> tuple[np.ndarray, np.ndarray]:
    """(slices, size, size) axial magnitude slices, max 1, and their affine.

    voxel_mm 2 (block-averaged template, fits 128) or 1 (the template itself, fits 256+).
    """
    from diffrecon.common.geometry import pad_or_crop, slice_volume, slices_affine
    from diffrecon.io.nifti import load_volume

    vol, aff = load_volume(template_path())
    if voxel_mm == 2:  # 1 mm -> 2 mm by 2x2x2 block averaging
        sx, sy, sz = (s // 2 * 2 for s in vol.shape)
        vol = vol[:sx, :sy, :sz].reshape(sx // 2, 2, sy // 2, 2, sz // 2, 2).mean(axis=(1, 3, 5))
        aff = aff @ np.diag([2.0, 2.0, 2.0, 1.0])
    slices = slice_volume(vol, "axial")
    s_aff = slices_affine(aff, vol.shape, "axial")
    centre = slices.shape[0] // 2 + 16 // voxel_mm
    zs = np.arange(n_slices) * (8 // voxel_mm) + centre - (4 // voxel_mm) * n_slices
    img = slices[zs]
    h, w = img.shape[1:]
    ph, pw = ((size - n) // 2 if size >= n else -((n - size) // 2) for n in (h, w))
    img = pad_or_crop(img, size)
    img = img / img.max()
    shift = np.eye(4)
    shift[0, 3] = zs[0]
    shift[1, 3] = -ph
    shift[2, 3] = -pw
    step = np.diag([4.0, 1.0, 1.0, 1.0])
    return img.astype(np.float32), s_aff @ shift @ step


def simulated_multicoil(n_slices: int = 1, size: int = 128, n_coils: int = 12, seed: int = 0,
                        rel_noise: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Fully sampled k-space (S, C, size, size) of template slices with a smooth phase and
    birdcage coils, the true maps (C, size, size) and the magnitude images (S, size, size)."""
    from diffrecon.recon.simulation import add_noise, birdcage_maps, simulate_kspace, smooth_phase

    rng = np.random.default_rng(seed)
    img, _ = demo_slices(n_slices, size, voxel_mm=2 if size <= 192 else 1)
    phase = torch.stack([smooth_phase((size, size), rng) for _ in range(img.shape[0])])
    maps = birdcage_maps(n_coils, (size, size))
    k = add_noise(simulate_kspace(torch.from_numpy(img) * phase, maps), rel_noise, rng)
    return k, maps, img


def write_demo_scan(path: str | Path, n_slices: int = 4, n_coils: int = 12, seed: int = 0) -> Path:
    """Write the sample scan as fastMRI HDF5 (fully sampled; the flow undersamples it)."""
    from diffrecon.io.fastmri import write_fastmri
    from diffrecon.io.records import MRIAcquisition

    k, _, img = simulated_multicoil(n_slices, 128, n_coils, seed)
    n = img.shape[-1]
    ref = np.abs(img).astype(np.float32)  # the ground truth
    acq = MRIAcquisition(
        name="mni152_demo",
        kspace=k.numpy().astype(np.complex64),
        mask=np.ones((n, n), bool),
        encoded_matrix=(n, n, 1),
        recon_matrix=(n, n, 1),
        fov_mm=(2.0 * n, 2.0 * n, 2.0),
        reference=ref,
        reference_kind="reconstruction_rss",
        metadata={"series_description": "MNI152 T1 template, simulated 12-coil k-space",
                  "attrs": {"acquisition": "simulated"}},
    )
    return write_fastmri(acq.validate(), path)
