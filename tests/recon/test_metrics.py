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
