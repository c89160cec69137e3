from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrecon.recon import metrics


def test_psnr_nmse_known_values():
    ref = np.zeros((2, 8, 8))
    ref[:, 2:6, 2:6] = 2.0
    x = ref + 0.1
    # RMSE 0.1, range 2 -> 20 log10(20)
    assert metrics.psnr(x, ref) == pytest.approx(20 * np.log10(20))
    assert metrics.nmse(x, ref) == pytest.approx(64 * 0.01 / (16 * 4))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    assert metrics.ssim(x + np.random.default_rng(0).random(x.shape), ref) < 0.9


def test_metrics_use_magnitude_and_centre_crop():
    ref = np.ones((1, 4, 4))
    x = np.zeros((1, 8, 8), np.complex64)
    x[:, 2:6, 2:6] = 1j  # magnitude 1 in the central 4x4
    assert metrics.nmse(x, ref) == pytest.approx(0.0)
    assert metrics.psnr(torch.from_numpy(x), ref) == float("inf")


def test_invented_structure_counts_bright_regions_the_reference_lacks():
    """Regions of >= 8 pixels (8-connected) inside the reference's object brighter than it by
    more than 0.1 of its maximum: a 3 x 3 blob and a diagonal streak of 8 count; a blob of 7,
    one brighter by only 0.09 and one outside the object do not; darker is not invented."""
    ref = np.zeros((2, 64, 64))
    ref[:, 8:56, 8:56] = 1.0  # the object; air around it
    x = ref.copy()
    x[0, 10:13, 10:13] += 0.2  # 9 pixels
    for i in range(8):  # 8 pixels touching only at corners
        x[0, 20 + i, 20 + i] += 0.3
    x[0, 30:32, 30:34] += 0.2  # 8 pixels ...
    x[0, 30, 30] -= 0.2  # ... less one: 7, too few
    x[0, 40:43, 40:43] += 0.09  # not bright enough
    x[0, 0:3, 0:3] += 0.5  # outside the object (air)
    x[1, 10:20, 10:20] -= 0.5  # darker
    mask = metrics.invented_mask(x, ref)
    assert mask[0].sum() == 9 + 8 and mask[1].sum() == 0
    assert mask[0, 10:13, 10:13].all() and mask[0, 20, 20] and not mask[0, 31, 31]
    assert metrics.invented_px(x, ref) == pytest.approx((9 + 8) / 2)
    # a support given replaces the object: the air blob then counts
    assert metrics.invented_px(x, ref, np.ones_like(ref, bool)) == pytest.approx((9 + 8 + 9) / 2)
