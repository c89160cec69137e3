"""DDS and DPS: data consistency against a dense solve, plumbing with an oracle prior,
determinism and batching."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffrecon.recon import masks, simulation
from diffrecon.recon.diffusion.dds import DDSConfig, data_consistency, dds_sample
from diffrecon.recon.diffusion.dps import DPSConfig
from diffrecon.recon.diffusion.networks import EpsNetwork
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.run import sample
from diffrecon.recon.operators import Sense
from tests.recon.diffusion.test_checkpoint import tiny_config


class OracleEps(torch.nn.Module):
    """eps that makes Tweedie's estimate exactly the given clean image (model space)."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x, t):
        a = self.schedule.abar(t, x)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def _problem(n=16, coils=4, slices=2, accel=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = simulation.birdcage_maps(coils, (n, n)).to(torch.complex128)
    maps = maps[None].expand(slices, -1, -1, -1)
    x = torch.randn(slices, n, n, dtype=torch.complex128, generator=g) * 0.3
    mask = masks.make_mask("random", (n, n), accel, seed=seed)
    op = Sense(maps, mask)
    return op, x, op.forward(x)


@pytest.mark.parametrize("gamma", [None, 0.7])
def test_data_consistency_matches_a_dense_least_squares_solve(gamma):
    op, x_true, y = _problem(coils=8)  # 8 coils at R = 2: A^H A has full rank
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(x_true.shape, dtype=torch.complex128, generator=g)
    n = x_true[0].numel()
    for s in range(2):
        # dense A for slice s: columns A e_j
        eye = torch.eye(n, dtype=torch.complex128).reshape(n, 16, 16)
        cols = Sense(op.maps[s], op.mask).forward(eye).reshape(n, -1).T
        aha, aty = cols.mH @ cols, cols.mH @ y[s].reshape(-1)
        assert torch.linalg.matrix_rank(aha) == n
        if gamma is None:
            expected = torch.linalg.solve(aha, aty)
        else:
            expected = torch.linalg.solve(torch.eye(n) + gamma * aha,
                                          x0[s].reshape(-1) + gamma * aty)
        got = data_consistency(op, y, x0, iters=1500, gamma=gamma)[s].reshape(-1)
        assert torch.allclose(got, expected, atol=1e-6), (gamma, s)


def _oracle_prior(x_true, op, y):
    """A prior whose Tweedie estimate is always x_true (at the scale DDS will estimate)."""
    from diffrecon.recon.diffusion.dds import estimate_scale

    prior = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 2), tiny_config())
    scale = estimate_scale(prior, op, y)
    x0 = prior.to_model_space(x_true.to(torch.complex64), scale)
    prior.net = EpsNetwork(OracleEps(x0, prior.schedule), "oracle", 2)
    return prior


def test_dds_with_an_oracle_prior_returns_the_truth():
    op, x_true, y = _problem()
    x_true = x_true / x_true.abs().amax(dim=(-2, -1), keepdim=True)  # prior range: max 1
    y = op.forward(x_true)
    prior = _oracle_prior(x_true, op, y)
    cfg = DDSConfig(nfe=10, eta=0.85, cg_iters=5, clip=False)
    calls = []
    x = dds_sample(prior, op, y, cfg, progress=lambda i, n: calls.append((i, n)))
    assert x.shape == x_true.shape and x.dtype == y.dtype
    assert float((x - x_true).norm() / x_true.norm()) < 1e-4
    assert calls[-1] == (10, 10) and prior.evaluations == 10 * 2


def test_dds_is_deterministic_and_batched_per_slice():
    op, x_true, y = _problem(slices=3)
    cfg = tiny_config()
    torch.manual_seed(0)
    from diffrecon.recon.diffusion.networks import build_network

    prior = Prior(EpsNetwork(build_network(cfg.architecture, cfg.network), "m", 2), cfg)
    a = dds_sample(prior, op, y, DDSConfig(nfe=4, seed=3))
    b = dds_sample(prior, op, y, DDSConfig(nfe=4, seed=3))
    c = dds_sample(prior, op, y, DDSConfig(nfe=4, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # noiseless DC with many CG steps fits the data; without DC the prior alone does not
    d = dds_sample(prior, op, y, DDSConfig(nfe=4, cg_iters=60))
    free = dds_sample(prior, op, y, DDSConfig(nfe=4, cg_iters=0))
    fit = float((op.forward(d) - y).norm() / y.norm())
    assert fit < 1e-2 and fit < float((op.forward(free) - y).norm() / y.norm()) / 20


def test_samplers_are_invariant_to_the_datas_phase():
    """Coil maps referenced to one coil (and real scans) give the image a phase the priors
    never saw; the scale divides each image by its smooth phase (the priors' images are
    nearly real), so DDS, dds-tv and the volume sampler of data y e^(i theta) return their
    result for y times e^(i theta), the network the same (a random one here); and a smooth
    phase is taken off what the network sees."""
    import cmath

    from diffrecon.recon.diffusion.dds import DDSTVConfig, estimate_scale
    from diffrecon.recon.diffusion.networks import build_network
    from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_3d_tv_sample

    op, _, y = _problem(slices=2)
    cfg = tiny_config()
    torch.manual_seed(0)
    prior = Prior(EpsNetwork(build_network(cfg.architecture, cfg.network), "m", 2), cfg)
    rot = cmath.exp(2.9j)
    s0, s1 = estimate_scale(prior, op, y), estimate_scale(prior, op, y * rot)
    assert s0.shape == y.shape[:1] + y.shape[-2:] and torch.allclose(s1, s0 * rot, atol=1e-6)
    for sampler, c in ((dds_sample, DDSConfig(nfe=4, seed=3)),
                       (dds_sample, DDSTVConfig(nfe=4, seed=3, tv_lam=1e-2)),
                       (dds_3d_tv_sample, DDS3DConfig(nfe=3, seed=3))):
        a, b = sampler(prior, op, y, c), sampler(prior, op, y * rot, c)
        assert float((b - a * rot).norm() / a.norm()) < 1e-4, type(c).__name__
    # a positive image times a smooth phase (a ramp of 2 pi across the image): the network
    # sees it nearly real (fully sampled data; the map's smoothing blurs only the edges)
    n = 32
    g = torch.Generator().manual_seed(1)
    mag = 0.5 + torch.rand(1, n, n, generator=g, dtype=torch.float64)
    ramp = torch.polar(torch.ones(n, n, dtype=torch.float64),
                       torch.linspace(-torch.pi, torch.pi, n, dtype=torch.float64)[None, :]
                       .expand(n, n))
    full = Sense(simulation.birdcage_maps(4, (n, n)).to(torch.complex128)[None],
                 torch.ones(n, n))
    x = (mag * ramp).to(torch.complex128)
    z = prior.to_model_space(x, estimate_scale(prior, full, full.forward(x)))
    left = torch.atan2(z[:, 1], z[:, 0]).abs()  # the phase the network sees (rad)
    assert float(left[:, 4:-4, 4:-4].max()) < 0.1 and float(left.max()) < 0.5
    assert float(z[:, 0].abs().max()) == pytest.approx(1.0, abs=1e-3)  # max 1, as before


class EchoEps(torch.nn.Module):
    """eps(x_t) = x_t: Tweedie's estimate shrinks x_t, so it depends on x_t (DPS's gradient
    flows through it)."""

    def forward(self, x, t):
        return x


def test_dps_moves_towards_the_data():
    """DPS's guidance lowers the data residual, the more the larger its step (the same
    prior and noise; step 0 is the unguided sampler)."""
    op, x_true, y = _problem(slices=1)
    y = op.forward(x_true / x_true.abs().max())
    prior = Prior(EpsNetwork(EchoEps(), "echo", 2), tiny_config())
    res = [float((op.forward(sample(prior, op, y, DPSConfig(steps=20, step_size=z))) - y).norm())
           for z in (0.0, 1.0, 3.0, 10.0)]
    assert res == sorted(res, reverse=True) and res[-1] < 0.75 * res[0]


def test_z_super_resolution_operator_is_adjoint():
    from diffrecon.recon.operators import ZSuperResolution, adjointness_error

    op = ZSuperResolution(4)
    assert adjointness_error(op, (8, 5, 6), (2, 5, 6), dtype=torch.complex128) < 1e-12
    x = torch.arange(8.0)[:, None, None].expand(8, 2, 2)
    assert torch.allclose(op.forward(x)[:, 0, 0], torch.tensor([1.5, 5.5]))
    with pytest.raises(ValueError, match="not divisible"):
        op.forward(torch.zeros(6, 2, 2))


def test_dds_3d_tv_with_an_oracle_prior_and_a_smoother_z_profile():
    from diffrecon.recon.diffusion.networks import build_network
    from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_3d_tv_sample
    from diffrecon.recon.operators import ZSuperResolution
    from diffrecon.recon.solvers import finite_differences

    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 16, generator=g, dtype=torch.float64)
    vol = (base[None] * torch.linspace(0.5, 1.0, 8, dtype=torch.float64)[:, None, None])
    vol = (vol / vol.abs().max()).to(torch.complex128)  # smooth along z, max 1
    op = ZSuperResolution(4)
    y = op.forward(vol)
    # an oracle prior returns the truth (at the volume scale DDS estimates)
    from diffrecon.recon.diffusion.dds import estimate_scale

    prior = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 2), tiny_config())
    scale = estimate_scale(prior, op, y, volume=True)
    prior.net = EpsNetwork(OracleEps(prior.to_model_space(vol.to(torch.complex64), scale),
                                     prior.schedule), "oracle", 2)
    x = dds_3d_tv_sample(prior, op, y, DDS3DConfig(nfe=6, clip=False, lam=1e-6))
    assert float((x - vol).norm() / vol.norm()) < 1e-3
    # with a (random) network prior, TV along z gives a smoother z profile than plain DDS
    cfg = tiny_config()
    torch.manual_seed(0)
    net = Prior(EpsNetwork(build_network(cfg.architecture, cfg.network), "m", 2), cfg)
    tv = dds_3d_tv_sample(net, op, y, DDS3DConfig(nfe=4, lam=0.5, rho=1.0, cg_iters=10))
    plain = dds_3d_tv_sample(net, op, y, DDS3DConfig(nfe=4, lam=0.0, rho=0.0, cg_iters=10))
    z_tv = float(finite_differences(tv, (-3,), periodic=False).abs().sum())
    z_plain = float(finite_differences(plain, (-3,), periodic=False).abs().sum())
    assert z_tv < 0.9 * z_plain


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_volume_views_are_the_benchmark_slicing(orientation):
    import numpy as np

    from diffrecon.common.geometry import slice_volume, unslice_volume
    from diffrecon.recon.diffusion.volume import volume_unview, volume_view

    axial = torch.arange(5 * 6 * 7, dtype=torch.float64).reshape(5, 6, 7)
    ras = unslice_volume(axial.numpy(), "axial")
    expected = slice_volume(ras, orientation)
    got = volume_view(axial[None], orientation)[0]  # with a leading (channel) axis
    np.testing.assert_array_equal(got.numpy(), expected)
    assert torch.equal(volume_unview(got, orientation), axial)


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_perpendicular_priors_with_oracles_return_the_truth(rho):
    """An axial and a coronal oracle alternating (AAB) give back the volume; the coronal
    slices (8 rows) are padded to the prior's 16 and cropped back. rho > 0
    (dds-perpendicular-tv): the same with the TV-z ADMM data consistency."""
    from diffrecon.recon.diffusion.volume import (
        DDS3DConfig,
        dds_perpendicular_sample,
        dds_volume_sample,
        volume_view,
    )
    from diffrecon.recon.operators import ZSuperResolution

    g = torch.Generator().manual_seed(1)
    vol = torch.rand(8, 16, 16, generator=g, dtype=torch.float64) * 0.8 + 0.1  # CT units
    op = ZSuperResolution(2)
    y = op.forward(vol)
    axial = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 1), tiny_config(modality="ct"))
    coronal_cfg = tiny_config("tiny-coronal", modality="ct").model_copy(
        update={"orientation": "coronal"})
    coronal = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 1), coronal_cfg)
    truth = axial.to_model_space(vol.float())  # (8, 1, 16, 16)
    axial.net = EpsNetwork(OracleEps(truth, axial.schedule), "oracle", 1)
    cor = volume_view(truth.transpose(0, 1), "coronal").transpose(0, 1)  # (16, 1, 8, 16)
    cor = torch.nn.functional.pad(cor, (0, 0, 4, 4), value=-1.0)  # centred to 16 x 16
    coronal.net = EpsNetwork(OracleEps(cor, coronal.schedule), "oracle", 1)
    x = dds_perpendicular_sample(axial, coronal, op, y,
                                 DDS3DConfig(nfe=6, clip=False, rho=rho, lam=1e-6,
                                             slice_batch=16))
    assert float((x - vol).norm() / vol.norm()) < 1e-3
    assert axial.evaluations == 4 * 8 and coronal.evaluations == 2 * 16  # steps A A B A A B
    with pytest.raises(ValueError, match="same orientation"):
        dds_perpendicular_sample(axial, axial, op, y)
    with pytest.raises(ValueError, match="same orientation"):  # the flow's entry point
        dds_volume_sample([coronal, coronal], op, y)


def test_scale_is_the_least_squares_images_maximum():
    """z super-resolution by 4 of a volume that is constant within each group of 4 slices:
    the least-squares image is the volume, max 1; the adjoint's maximum would be 1/4 and
    put the prior's input at 4 times its range."""
    from diffrecon.recon.diffusion.dds import estimate_scale
    from diffrecon.recon.operators import ZSuperResolution

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 12, 12, generator=g).repeat_interleave(4, dim=0).to(torch.complex64)
    x = x / x.abs().max()
    op = ZSuperResolution(4)
    y = op.forward(x)
    prior = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 2), tiny_config())
    assert float(op.adjoint(y).abs().max()) == pytest.approx(0.25, abs=1e-6)
    assert estimate_scale(prior, op, y, volume=True) == pytest.approx(1.0, abs=1e-5)
    assert estimate_scale(prior, op, y, factor=2.0, volume=True) == pytest.approx(2.0, abs=1e-5)


def test_real_object_drops_the_priors_phase_in_the_null_space():
    """z super-resolution of a real volume, with a prior whose Tweedie estimate is the truth
    plus an imaginary part that averages to zero in each group of 4 slices (invisible to the
    data): complex DDS keeps that phase, ``real=True`` returns the truth."""
    from diffrecon.recon.diffusion.dds import estimate_scale
    from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_3d_tv_sample
    from diffrecon.recon.operators import ZSuperResolution

    g = torch.Generator().manual_seed(1)
    vol = torch.rand(8, 16, 16, generator=g, dtype=torch.float64)
    vol = (vol / vol.max()).to(torch.complex128)
    w = 0.2 * torch.tensor([1.0, -1.0, 1.0, -1.0] * 2, dtype=torch.float64)[:, None, None]
    op = ZSuperResolution(4)
    y = op.forward(vol)
    assert float(op.forward(1j * w * torch.ones_like(vol)).abs().max()) < 1e-12  # null space
    prior = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 2), tiny_config())
    scale = estimate_scale(prior, op, y, volume=True)
    target = prior.to_model_space((vol + 1j * w).to(torch.complex64), scale)
    prior.net = EpsNetwork(OracleEps(target, prior.schedule), "oracle", 2)
    cfg = DDS3DConfig(nfe=6, clip=False, rho=0.0)
    plain = dds_3d_tv_sample(prior, op, y, cfg)
    assert float(plain.imag.abs().mean()) == pytest.approx(0.2, rel=1e-3)
    real = dds_3d_tv_sample(prior, op, y, replace(cfg, real=True))
    assert float((real - vol).norm() / vol.norm()) < 1e-4


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_volume_noisy_data_consistency_matches_a_dense_solve(rho):
    """One diffusion step (nfe 1) with an oracle whose Tweedie estimate x0 is not the truth:
    the volume sampler returns the noisy-form solution (I + gamma (A^H A + rho D^H D)) x =
    x0 + gamma (A^H y + rho D^H D x0) (ADMM's first iteration: z = D x0, u = 0)."""
    from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_3d_tv_sample
    from diffrecon.recon.operators import ZSuperResolution
    from diffrecon.recon.solvers import finite_differences, finite_differences_adjoint

    g = torch.Generator().manual_seed(5)
    vol = torch.rand(4, 16, 16, generator=g, dtype=torch.float64) * 0.8 + 0.1  # CT units
    start = (vol + 0.1 * torch.randn(vol.shape, generator=g, dtype=torch.float64)).float()
    op = ZSuperResolution(2)
    y = op.forward(vol)
    prior = Prior(EpsNetwork(torch.nn.Identity(), "oracle", 1), tiny_config(modality="ct"))
    prior.net = EpsNetwork(OracleEps(prior.to_model_space(start), prior.schedule), "oracle", 1)
    x0 = prior.from_model_space(prior.to_model_space(start)).double()
    gamma = 3.0
    got = dds_3d_tv_sample(prior, op, y, DDS3DConfig(nfe=1, clip=False, rho=rho, lam=0.0,
                                                     gamma=gamma, cg_iters=200))

    def dtd(v):
        return finite_differences_adjoint(finite_differences(v, (-3,), periodic=False),
                                          (-3,), periodic=False)

    n = vol.numel()
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *vol.shape)
    cols = torch.stack([op.normal(e) + rho * dtd(e) for e in eye]).reshape(n, n).T
    rhs = x0.reshape(-1) + gamma * (op.adjoint(y) + rho * dtd(x0)).reshape(-1)
    expected = torch.linalg.solve(torch.eye(n, dtype=torch.float64) + gamma * cols, rhs)
    assert float((got.reshape(-1) - expected).norm() / expected.norm()) < 1e-5
    # and it is not the noiseless solution, which fits the data exactly
    assert float((op.forward(got) - y).norm() / y.norm()) > 1e-3


def test_dds_tv_with_an_oracle_prior_returns_the_truth_and_without_tv_is_dds():
    from diffrecon.recon.diffusion.settings import DDSTVConfig

    op, x_true, y = _problem()
    x_true = x_true / x_true.abs().amax(dim=(-2, -1), keepdim=True)
    y = op.forward(x_true)
    prior = _oracle_prior(x_true, op, y)
    cfg = DDSTVConfig(nfe=10, cg_iters=5, clip=False, tv_lam=1e-7, tv_iters=2)
    x = sample(prior, op, y, cfg)
    assert float((x - x_true).norm() / x_true.norm()) < 1e-4
    # a heavy TV weight pulls the oracle's truth towards piecewise-constant images
    heavy = sample(prior, op, y, replace(cfg, tv_lam=1e-1))
    assert float((heavy - x_true).norm() / x_true.norm()) > 1e-2
    # tv_lam 0 is plain DDS, bit for bit
    plain = DDSConfig(nfe=4, seed=2)
    assert torch.equal(sample(prior, op, y, DDSTVConfig(nfe=4, seed=2, tv_lam=0.0)),
                       sample(prior, op, y, plain))


def test_dds_tv_data_consistency_converges_to_the_classical_admm_tv():
    """Run long, dds-tv's data-consistency step solves the problem the classical ADMM-TV
    solves (same units: k-space scaled to max 1, same weight)."""
    from diffrecon.recon.classical import tv_sense
    from diffrecon.recon.diffusion.dds import tv_data_consistency
    from diffrecon.recon.diffusion.settings import DDSTVConfig

    op, x_true, y = _problem(coils=4, accel=2, slices=1)
    y = y.to(torch.complex64)
    op = Sense(op.maps.to(torch.complex64), op.mask)
    lam = 1e-3
    ref = tv_sense(y, op.maps, op.mask, lam=lam, iters=400, cg_iters=4)
    scale = float(y.abs().max())
    got = tv_data_consistency(op, torch.zeros_like(ref), op.adjoint(y),
                              DDSTVConfig(tv_lam=lam, tv_iters=400, cg_iters=4), scale,
                              periodic=True)
    assert float((got - ref).norm() / ref.norm()) < 1e-3
