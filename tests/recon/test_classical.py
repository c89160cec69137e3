from __future__ import annotations

import numpy as np
import torch

from diffrecon.recon import classical, coils, masks, metrics, simulation
from diffrecon.recon.operators import Sense


def test_cg_sense_agrees_with_sigpy():
    import sigpy.mri

    rng = np.random.default_rng(0)
    n = 48
    maps = simulation.birdcage_maps(8, (n, n))
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    img = torch.from_numpy(((yy**2 + xx**2 < 0.5) * (1 + 0.2 * rng.random((n, n))))
                           .astype(np.complex64))
    mask = masks.make_mask("equispaced", (n, n), 3)
    k = simulation.add_noise(simulation.simulate_kspace(img, maps) * mask, 1e-3, rng) * mask
    ours = classical.cg_sense(k[None], maps[None], mask, lam=1e-2, max_iter=100, tol=1e-10)[0]
    scale = float(k.abs().max())
    ref = sigpy.mri.app.SenseRecon(
        (k / scale).numpy(), maps.numpy(), lamda=1e-2, weights=mask.numpy().astype(np.float32),
        max_iter=100, show_pbar=False,
    ).run() * scale
    rel = np.linalg.norm(ours.numpy() - ref) / np.linalg.norm(ref)
    assert rel < 1e-3


def test_zero_filled_rss_of_full_data_is_the_magnitude():
    maps = simulation.birdcage_maps(5, (16, 16))
    img = torch.randn(2, 16, 16, dtype=torch.complex64)
    k = simulation.simulate_kspace(img, maps)
    assert torch.allclose(classical.zero_filled(k), img.abs(), atol=1e-5)


def test_cg_sense_on_real_scan_b2(twix_path):
    """B2 at R = 4 equispaced: CG-SENSE with maps from the 10-line centre >= 26 dB."""
    from diffrecon.testing import b2_case

    case = b2_case(twix_path)
    mask = case.mask(4, "equispaced")
    assert int(mask[:, 0].sum()) == 32
    ku = (case.kspace * mask)[None]
    maps = coils.estimate_coil_maps(ku, mask)
    x = classical.cg_sense(ku, maps, mask)
    p = metrics.psnr(x, case.reference[None])
    assert p >= 26.0, p
    assert metrics.psnr(classical.zero_filled(ku, mask), case.reference[None]) < p - 5
    assert metrics.dc_residual(Sense(maps, mask), x, ku) < 0.15
