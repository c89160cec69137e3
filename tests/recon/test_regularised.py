"""Wavelets, finite differences, ADMM-TV against sigpy, FISTA optimality, coil compression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrecon.recon import classical, coils, masks, metrics, simulation
from diffrecon.recon.operators import Sense
from diffrecon.recon.solvers import (
    admm_tv,
    finite_differences,
    finite_differences_adjoint,
    soft_threshold,
)
from diffrecon.recon.wavelets import Wavelet2D


def test_wavelet_is_orthonormal():
    w = Wavelet2D((32, 48), levels=3)
    x = torch.randn(2, 32, 48, dtype=torch.complex128)
    c = w.forward(x)
    assert torch.allclose(torch.linalg.vector_norm(c), torch.linalg.vector_norm(x))
    assert torch.allclose(w.inverse(c), x, atol=1e-12)
    y = torch.randn(2, 32, 48, dtype=torch.complex128)
    lhs = (w.forward(x).conj() * y).sum()
    rhs = (x.conj() * w.adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    smooth = torch.ones(32, 48, dtype=torch.float64)
    assert (w.forward(smooth)[4:, :].abs().max()) < 1e-10  # constants live in the coarse band
    with pytest.raises(ValueError, match="not divisible by 2\\^3"):
        Wavelet2D((30, 48), levels=3)


@pytest.mark.parametrize("periodic", [True, False])
def test_finite_differences_adjoint(periodic):
    x = torch.randn(3, 5, 6, 7, dtype=torch.complex128)
    dims = (-3, -2, -1)
    p = torch.randn(3, 3, 5, 6, 7, dtype=torch.complex128)
    lhs = (finite_differences(x, dims, periodic).conj() * p).sum()
    rhs = (x.conj() * finite_differences_adjoint(p, dims, periodic)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    if not periodic:  # Neumann: a ramp has constant differences and a zero last one
        ramp = torch.arange(5.0)[None, :, None, None].expand(3, 5, 6, 7)
        d = finite_differences(ramp, (-3,), periodic=False)[0]
        assert torch.equal(d[:, :4], torch.ones_like(d[:, :4])) and d[:, 4].abs().max() == 0


def _small_problem(n=48, coils_=8, accel=3, seed=0):
    rng = np.random.default_rng(seed)
    maps = simulation.birdcage_maps(coils_, (n, n))
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    img = ((yy**2 + xx**2 < 0.5) * 1.0 + (np.abs(yy) < 0.2) * (np.abs(xx) < 0.3) * 0.5)
    x = torch.from_numpy(img.astype(np.complex64))
    mask = masks.make_mask("random", (n, n), accel, seed=1)
    k = simulation.add_noise(simulation.simulate_kspace(x, maps), 1e-2, rng) * mask
    return k / k.abs().max(), maps, mask, x


def test_admm_tv_matches_sigpy_total_variation_recon():
    import sigpy.mri

    k, maps, mask, _ = _small_problem()
    lam = 2e-3
    op = Sense(maps.to(torch.complex128), mask)
    ours = admm_tv(op.normal, op.adjoint(k.to(torch.complex128)), lam, rho=2e-2, iters=600,
                   cg_iters=10, isotropic=False, periodic=True, batch_dims=0)
    ref = sigpy.mri.app.TotalVariationRecon(
        k.numpy().astype(np.complex128), maps.numpy().astype(np.complex128), lam,
        weights=mask.numpy().astype(np.float64), max_iter=3000, show_pbar=False).run()
    ref = torch.from_numpy(np.asarray(ref))

    def objective(x):
        tv = finite_differences(x, (-2, -1), True).abs().sum()
        return 0.5 * (op.forward(x) - k).abs().square().sum() + lam * tv

    assert float(objective(ours)) <= float(objective(ref)) * (1 + 1e-3)
    assert float((ours - ref).norm() / ref.norm()) < 2e-2


def test_fista_l1_wavelet_reaches_a_fixed_point():
    k, maps, mask, truth = _small_problem()
    lam = 1e-3
    x = classical.l1_wavelet_sense(k[None], maps[None], mask, lam=lam, iters=400, levels=2)[0]
    op = Sense(maps, mask)
    w = Wavelet2D((48, 48), 2)
    # optimality: x = prox_{lam |W.|_1}(x - grad f(x)) with step 1 (k is scaled to max 1)
    step = x - (op.normal(x) - op.adjoint(k))
    fixed = w.adjoint(soft_threshold(w.forward(step), lam))
    assert float((fixed - x).norm() / x.norm()) < 1e-3
    zf = metrics.psnr(classical.zero_filled(k[None], mask), truth.abs()[None])
    assert metrics.psnr(x, truth.abs()) > zf


def test_regularised_sense_beats_zero_filling_on_b2(twix_path):
    from diffrecon.testing import b2_case

    case = b2_case(twix_path)
    mask = case.mask(4, "equispaced")
    ku = (case.kspace * mask)[None]
    maps = coils.estimate_coil_maps(ku, mask)
    ref = case.reference[None]
    zf = metrics.psnr(classical.zero_filled(ku, mask), ref)
    for x in (classical.l1_wavelet_sense(ku, maps, mask), classical.tv_sense(ku, maps, mask)):
        assert metrics.psnr(x, ref) > zf + 7


def test_coil_compression_keeps_the_energy_of_correlated_coils():
    k, maps, mask, _ = _small_problem(coils_=12)
    k = k[None].repeat(2, 1, 1, 1)
    kc = coils.compress_coils(k, 6)
    assert kc.shape == (2, 6, 48, 48)
    kept = float(kc.abs().square().sum() / k.abs().square().sum())
    assert 0.95 < kept <= 1.0 + 1e-6
    energies = kc.abs().square().sum(dim=(0, 2, 3))
    assert (energies[:-1] >= energies[1:]).all()  # ordered by energy
    with pytest.raises(ValueError, match="cannot compress 12 coils to 13"):
        coils.compress_coils(k, 13)
