"""A lesion no training image has: a bright disc in a brain slice must survive DDS."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import DATA, need


def _disc_contrast(x: np.ndarray, disc: np.ndarray, ring: np.ndarray) -> float:
    a = np.abs(x)
    return float(a[disc].mean() - a[ring].mean())


def test_a_bright_disc_survives_dds_at_r4_and_its_std_is_reported():
    """A disc of radius 4 pixels at 1.5 x the white matter's brightness (brighter than any
    tissue of the T1 slices the prior learnt) in an IXI training-split slice, simulated as
    B1 simulates (16 coils, smooth phase, noise), R = 4 equispaced. DDS (the shipped brain
    prior, 50 steps, K = 8 samples sharing all but their last 14 steps) keeps the disc's
    contrast against the ring around it within 20 % of the truth's and at least as well as
    CG-SENSE does (measured: 13 % against CG-SENSE's 19.5 %). The std map of the shipped
    error model (``--std-model prior``) is higher on the disc than around it, as the error
    is (measured: 1.04 x; the error 1.17 x), and mean +- 2 std covers the truth on >= 90 %
    of the disc (measured: 96 %). The raw spread of the samples alone is not: 0.83 x (K = 4
    without branching 0.74 x; before the samplers took the image's phase off, 1.15 x)."""
    from diffrecon.config import ReconConfig
    from diffrecon.recon import classical, coils
    from diffrecon.recon.diffusion.dds import DDSConfig
    from diffrecon.recon.diffusion.registry import resolve_prior, resolve_prior_path
    from diffrecon.recon.diffusion.run import run_diffusion
    from diffrecon.recon.operators import Sense
    from diffrecon.recon.uncertainty import error_model, error_model_map
    from diffrecon.testing import MRICase, _b1_kspace, b1_image, ixi_split

    maps_file = need(DATA / "mri" / "b1_simulation_maps_16ch_128.npy")
    train, _ = ixi_split(need(DATA / "mri" / "ixi_t1"))
    img = b1_image(train[0], 70)
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 52, xx - 76)
    disc, ring = r <= 4, (r > 6) & (r <= 10)
    truth = img.copy()
    truth[disc] = 1.5 * float(np.median(img[ring]))
    truth = (truth / truth.max()).astype(np.float32)
    maps = torch.from_numpy(np.load(maps_file))
    case = MRICase("disc", 70, _b1_kspace("disc", 70, truth, maps), torch.from_numpy(truth))
    mask = case.mask(4, "equispaced")
    ku = (case.kspace * mask)[None]
    smaps = coils.estimate_coil_maps(ku, mask)
    op = Sense(smaps, mask)
    cfg = ReconConfig()
    cg = classical.cg_sense(ku, smaps, mask, cfg.lam, cfg.cg_iters)[0].numpy()
    prior = resolve_prior("brain-t1-axial-128")
    mean, std, _ = run_diffusion([prior], DDSConfig(branch_steps=14), lambda a, b: op, ku,
                                 samples=8)
    u = error_model_map(op, mean, std, error_model(
        resolve_prior_path("brain-t1-axial-128") / "error_model.json"), "dds")[0].numpy()
    true_c = _disc_contrast(truth, disc, ring)
    dds_err = abs(_disc_contrast(mean[0].numpy(), disc, ring) / true_c - 1)
    cg_err = abs(_disc_contrast(cg, disc, ring) / true_c - 1)
    err = np.abs(np.abs(mean[0].numpy()) - truth)
    print(f"contrast error: dds {dds_err:.3f}, cg-sense {cg_err:.3f}; disc / ring: error "
          f"{err[disc].mean() / err[ring].mean():.2f}, model std "
          f"{u[disc].mean() / u[ring].mean():.2f}, spread "
          f"{float(std[0][disc].mean() / std[0][ring].mean()):.2f}; covered "
          f"{(err[disc] <= 2 * u[disc]).mean():.2f}")
    assert dds_err <= 0.2
    assert dds_err <= cg_err
    assert u[disc].mean() > u[ring].mean()
    assert (err[disc] <= 2 * u[disc]).mean() >= 0.9
