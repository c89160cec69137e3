"""ESPIRiT in torch against sigpy, CG-SENSE with its maps, and bad calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrecon.demo_data import simulated_multicoil
from diffrecon.recon import classical, coils, masks, metrics
from tests.conftest import DATA, need


def agreement(ours: torch.Tensor, ref: torch.Tensor, image: torch.Tensor) -> float:
    """Fraction of support pixels (SoS of ref > 0.5, image > 5% of max) where
    |<S_ours, S_ref>| / (|S_ours| |S_ref|) >= 0.99."""
    sos = ref.abs().square().sum(1)
    support = (sos > 0.5) & (image > 0.05 * image.amax(dim=(-2, -1), keepdim=True))
    num = (ours.conj() * ref).sum(1).abs()
    den = ours.abs().square().sum(1).sqrt() * sos.sqrt()
    ip = num / den.clamp_min(1e-12)
    return float((ip[support] >= 0.99).float().mean())


@pytest.mark.parametrize("calib, kernel", [(24, 6), (10, 3)])
def test_matches_sigpy_on_the_real_scan(twix_acq, calib, kernel):
    k = torch.from_numpy(twix_acq.kspace)
    params = dict(calib=calib, kernel_width=kernel, thresh=0.02, crop=0.8)
    ours = coils.estimate_coil_maps(k, **params)
    ref = coils.estimate_coil_maps(k, method="sigpy", **params)
    rss = classical.zero_filled(k)
    assert agreement(ours, ref, rss) >= 0.99
    assert ours.shape == k.shape and ours.dtype == torch.complex64
    sos = ours.abs().square().sum(1)
    assert torch.allclose(sos[sos > 0], torch.ones_like(sos[sos > 0]), atol=1e-4)


def test_matches_sigpy_on_simulated_15_coils_320():
    k, _, img = simulated_multicoil(1, 320, 15)
    params = dict(calib=24, kernel_width=6, thresh=0.02, crop=0.8)
    ref = coils.estimate_coil_maps(k, method="sigpy", **params)
    image = torch.from_numpy(img)
    for step in (1, 2):  # exact, and the default coarse grid for 320 x 320
        ours = coils.estimate_coil_maps(k, grid_step=step, **params)
        assert agreement(ours, ref, image) >= 0.99, step
    exact = coils.estimate_coil_maps(k, eig="eigh", grid_step=1, **params)
    assert agreement(exact, ref, image) >= 0.999


def test_batched_over_slices_equals_one_by_one():
    k, _, _ = simulated_multicoil(3, 64, 6)
    mask = masks.make_mask("equispaced", (64, 64), 2)
    both = coils.estimate_coil_maps(k * mask, mask, slice_batch=3)
    for s in range(3):
        one = coils.estimate_coil_maps((k * mask)[s : s + 1], mask)
        assert torch.allclose(both[s], one[0], atol=1e-5)


def _best_sigpy_psnr(ku, mask, ref):
    out = []
    for kernel in (3, 4):
        maps = coils.estimate_coil_maps(ku, mask, method="sigpy", calib=10, kernel_width=kernel)
        out.append(metrics.psnr(classical.cg_sense(ku, maps, mask), ref))
    return max(out)


@pytest.mark.parametrize("accel, kind", [(4, "equispaced"), (4, "random"), (8, "equispaced"),
                                         (8, "random")])
def test_cg_sense_with_our_maps_b2(twix_path, accel, kind):
    from diffrecon.testing import b2_case

    case = b2_case(twix_path)
    mask = case.mask(accel, kind)
    ku = (case.kspace * mask)[None]
    ours = metrics.psnr(classical.cg_sense(ku, coils.estimate_coil_maps(ku, mask), mask),
                        case.reference[None])
    assert ours >= _best_sigpy_psnr(ku, mask, case.reference[None]) - 0.2


@pytest.mark.parametrize("accel, kind", [(4, "equispaced"), (8, "random")])
def test_cg_sense_with_our_maps_b1_quick(accel, kind):
    from diffrecon.testing import b1_cases

    cases = b1_cases(need(DATA / "mri" / "ixi_t1"),
                     need(DATA / "mri" / "b1_simulation_maps_16ch_128.npy"), quick=True)
    ours, best = [], []
    for c in cases:
        mask = c.mask(accel, kind)
        ku = (c.kspace * mask)[None]
        maps = coils.estimate_coil_maps(ku, mask)
        ours.append(metrics.psnr(classical.cg_sense(ku, maps, mask), c.reference[None]))
        best.append(_best_sigpy_psnr(ku, mask, c.reference[None]))
    assert np.mean(ours) >= np.mean(best) - 0.2


def test_calibration_region_is_rectangular():
    m = masks.make_mask("equispaced", (128, 128), 4)
    assert coils.calibration_region(m) == (10, 128)
    assert coils.default_kernel(10) == 3 and coils.default_kernel(24) == 6
    assert coils.choose_kernel(10, 128, 16, None) == (6, 6)
    assert coils.choose_kernel(6, 128, 16, None) == (4, 4)
    assert coils.choose_kernel(8, 96, 16, None) == (4, 4)  # 5 patch rows, not 3


def test_bad_calibration_data_gives_clear_errors():
    k = torch.randn(1, 4, 32, 32, dtype=torch.complex64)
    no_centre = torch.zeros(32, 32, dtype=torch.bool)
    no_centre[::2] = True
    no_centre[16] = False
    with pytest.raises(ValueError, match=r"centre is only 0 x 0; ESPIRiT needs at least 5 x 5"):
        coils.estimate_coil_maps(k * no_centre, no_centre)
    narrow = torch.zeros(32, 32, dtype=torch.bool)
    narrow[14:18] = True
    with pytest.raises(ValueError, match=r"centre is only 4 x 32"):
        coils.estimate_coil_maps(k * narrow, narrow)
    with pytest.raises(ValueError, match=r"calibration region 24 x 24 is larger than the fully "
                                         r"sampled centre \(4 x 32\)"):
        coils.estimate_coil_maps(k * narrow, narrow, calib=24)
    with pytest.raises(ValueError, match="no signal in any coil"):
        coils.estimate_coil_maps(torch.zeros(1, 4, 32, 32, dtype=torch.complex64))


def test_an_all_zero_coil_gets_zero_maps_not_nan():
    k, _, _ = simulated_multicoil(1, 64, 6)
    k[:, 2] = 0
    maps = coils.estimate_coil_maps(k)
    assert torch.isfinite(torch.view_as_real(maps)).all()
    assert maps[:, 2].abs().max() < 1e-3
    assert maps[:, 0].abs().max() > 0.1


@pytest.mark.parametrize("shape", [(180, 230), (230, 180)])
def test_calibration_of_a_2d_random_mask_with_a_24_block(shape):
    """The real 8-coil case: 2D Poisson-like samples (30 % here, many beside the block) and a
    fully sampled 24 x 24 centre: the region is that block, in either axis order."""
    rng = np.random.default_rng(0)
    m = rng.random(shape) < 0.3
    cy, cx = shape[0] // 2, shape[1] // 2
    m[cy - 12: cy + 12, cx - 12: cx + 12] = True
    assert coils.calibration_region(torch.from_numpy(m)) == (24, 24)
    m[cy, cx] = False
    assert coils.calibration_region(torch.from_numpy(m)) == (0, 0)
