"""K samples per slice (--samples): the repeated operator, the sample statistics, where the
data pin the image down the samples agree, and the std map's calibration figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrecon.recon import masks, simulation
from diffrecon.recon.diffusion.dds import DDSConfig, dds_sample
from diffrecon.recon.diffusion.networks import EpsNetwork, build_network
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.run import draw_samples, run_diffusion, sample_statistics
from diffrecon.recon.operators import Repeated, Sense, adjointness_error
from tests.recon.diffusion.test_checkpoint import tiny_config


def _random_prior(seed: int = 0) -> Prior:
    cfg = tiny_config()
    torch.manual_seed(seed)
    return Prior(EpsNetwork(build_network(cfg.architecture, cfg.network), "m", 2), cfg)


def _sense(n=16, coils=4, slices=2, accel=2.0, kind="random"):
    maps = simulation.birdcage_maps(coils, (n, n)).to(torch.complex64)
    maps = maps[None].expand(slices, -1, -1, -1)
    mask = masks.make_mask(kind, (n, n), accel, seed=0) if accel > 1 else torch.ones(n, n)
    return Sense(maps, mask)


def test_repeated_operator_is_the_adjoint_of_its_copies():
    op = _sense(slices=2)
    rep = Repeated(Sense(op.maps.to(torch.complex128), op.mask.double()), 3)
    assert adjointness_error(rep, (6, 16, 16), (6, 4, 16, 16), dtype=torch.complex128) < 1e-12
    x = torch.randn(6, 16, 16, dtype=torch.complex128)
    assert torch.allclose(rep.forward(x)[2:4].to(torch.complex64), op.forward(x[2:4].to(
        torch.complex64)), atol=1e-5)
    assert rep.support().shape == (6, 16, 16)
    with pytest.raises(ValueError, match="^5 slices are not 3 equal copies$"):
        rep.forward(x[:5])
    # one support for every slice (single coil, shared maps) stays one support
    from diffrecon.recon.operators import SingleCoil

    one = Repeated(SingleCoil(torch.ones(16, 16), (16, 16)), 3)
    assert one.support().shape == (16, 16)
    assert (one.forward(x.to(torch.complex64)).shape == (6, 1, 16, 16))


def test_sample_statistics_are_the_mean_and_the_unbiased_complex_std():
    g = np.random.default_rng(0)
    x = g.standard_normal((2, 5, 4, 4)) + 1j * g.standard_normal((2, 5, 4, 4))
    mean, std = sample_statistics(torch.from_numpy(x))
    assert np.allclose(mean.numpy(), x.mean(axis=1))
    expected = np.sqrt((np.abs(x - x.mean(axis=1, keepdims=True)) ** 2).sum(1) / 4)
    assert np.allclose(std.numpy(), expected)
    one_mean, one_std = sample_statistics(torch.from_numpy(x[:, :1]))
    assert one_std is None and np.allclose(one_mean.numpy(), x[:, 0])


def test_one_sample_is_todays_dds_and_k_samples_differ_where_data_are_missing():
    prior = _random_prior()
    op = _sense(slices=2, accel=4.0)
    y = op.forward(torch.randn(2, 16, 16, dtype=torch.complex64) * 0.3)
    cfg = DDSConfig(nfe=4, seed=5)
    image, std, nfe = run_diffusion([prior], cfg, lambda a, b: op, y)
    assert std is None and nfe == 4
    assert torch.equal(image, dds_sample(prior, op, y, cfg))  # K = 1 keeps today's result

    before = prior.evaluations
    x, nfe = draw_samples([prior], cfg, lambda a, b: op, y, samples=3)
    assert x.shape == (2, 3, 16, 16) and nfe == 4
    assert prior.evaluations - before == 4 * 2 * 3  # one batch of 6 images per step
    assert not torch.allclose(x[:, 0], x[:, 1])
    image, std, _ = run_diffusion([prior], cfg, lambda a, b: op, y, samples=3)
    assert torch.allclose(image, x.mean(dim=1)) and std.shape == (2, 16, 16)
    assert float(std.mean()) > 1e-3 * float(image.abs().max())
    with pytest.raises(ValueError, match="at least 1"):
        run_diffusion([prior], cfg, lambda a, b: op, y, samples=0)


def test_the_default_eta_is_1_for_one_sample_and_0_85_for_several():
    """eta unset: one sample runs at 1.0, K > 1 samples (whole or branched trajectories, the
    volume sampler) at 0.85; a set eta is kept either way."""
    from dataclasses import replace

    from diffrecon.recon.diffusion.settings import (
        ETA_ONE_SAMPLE,
        ETA_SAMPLES,
        DDS3DConfig,
        sampler_eta,
    )

    assert (ETA_ONE_SAMPLE, ETA_SAMPLES) == (1.0, 0.85)
    assert (sampler_eta(None, 1), sampler_eta(None, 8), sampler_eta(0.3, 8)) == (1.0, 0.85, 0.3)
    prior = _random_prior()
    op = _sense(slices=2, accel=4.0)
    y = op.forward(torch.randn(2, 16, 16, dtype=torch.complex64) * 0.3)
    cfg = DDSConfig(nfe=4, seed=5)
    one = dds_sample(prior, op, y, cfg)
    assert torch.equal(one, dds_sample(prior, op, y, replace(cfg, eta=1.0)))
    assert not torch.allclose(one, dds_sample(prior, op, y, replace(cfg, eta=0.85)))
    for c in (cfg, replace(cfg, branch_steps=2)):
        x, _ = draw_samples([prior], c, lambda a, b: op, y, samples=2)
        x85, _ = draw_samples([prior], replace(c, eta=0.85), lambda a, b: op, y, samples=2)
        x1, _ = draw_samples([prior], replace(c, eta=1.0), lambda a, b: op, y, samples=2)
        assert torch.equal(x, x85) and not torch.allclose(x, x1)
    vol = DDS3DConfig(nfe=3, lam=0.0, rho=0.0, seed=2)
    v, _ = draw_samples([prior], vol, lambda a, b: op, y, samples=2)
    v85, _ = draw_samples([prior], replace(vol, eta=0.85), lambda a, b: op, y, samples=2)
    v1, _ = draw_samples([prior], vol, lambda a, b: op, y)
    assert torch.equal(v, v85)
    assert torch.equal(v1, draw_samples([prior], replace(vol, eta=1.0), lambda a, b: op, y)[0])


def test_samples_agree_where_the_data_determine_the_image():
    """Fully sampled k-space and many CG steps: every sample is the data's image, std ~ 0;
    with half the lines missing the same samples spread."""
    prior = _random_prior()
    truth = torch.randn(1, 16, 16, dtype=torch.complex64) * 0.3
    cfg = DDSConfig(nfe=3, cg_iters=40, seed=1)
    full = _sense(slices=1, accel=1)
    _, std_full, _ = run_diffusion([prior], cfg, lambda a, b: full, full.forward(truth),
                                   samples=4)
    half = _sense(slices=1, accel=2.0, kind="equispaced")
    _, std_half, _ = run_diffusion([prior], cfg, lambda a, b: half, half.forward(truth),
                                   samples=4)
    peak = float(truth.abs().max())
    assert float(std_full.max()) < 1e-3 * peak
    assert float(std_half.mean()) > 20 * float(std_full.mean())


def test_the_volume_sampler_draws_its_samples_one_after_another():
    from diffrecon.recon.diffusion.volume import DDS3DConfig

    prior = _random_prior()
    op = _sense(slices=4, accel=4.0)
    y = op.forward(torch.randn(4, 16, 16, dtype=torch.complex64) * 0.3)
    cfg = DDS3DConfig(nfe=3, lam=0.0, rho=0.0, seed=2)
    steps = []
    x, nfe = draw_samples([prior], cfg, lambda a, b: op, y, samples=2,
                          progress=lambda i, n: steps.append((i, n)))
    one, _ = draw_samples([prior], DDS3DConfig(nfe=3, lam=0.0, rho=0.0, seed=3, eta=0.85),
                          lambda a, b: op, y)  # (K > 1 samples run at eta 0.85)
    assert x.shape == (4, 2, 16, 16) and nfe == 3
    assert torch.allclose(x[:, 1], one[:, 0])  # sample k uses seed + k
    assert steps[-1] == (6, 6) and len(steps) == 6


def test_calibration_figures_on_a_known_gaussian_error():
    from diffrecon.recon.uncertainty import calibration, object_support, std_qa

    g = np.random.default_rng(0)
    truth = np.zeros((1, 64, 64))
    truth[0, 8:56, 8:56] = 1.0
    # std grows from left to right; the error is Gaussian with exactly that std
    std = np.broadcast_to(np.linspace(0.01, 0.2, 64), (1, 64, 64)).copy()
    image = truth + std * g.standard_normal(truth.shape)
    sup = object_support(truth)  # the square and a rim of at most 2 pixels (5 x 5 means)
    assert sup[0, 8:56, 8:56].all() and 48 * 48 < sup.sum() <= 52 * 52
    assert not sup[0, :5].any() and not sup[0, :, 59:].any()
    c = calibration(image, std, truth)
    assert abs(c["coverage"] - 0.954) < 0.02  # P(|z| <= 2) of a standard normal
    assert c["spearman"] > 0.8  # local means of |error| follow the std
    assert abs(c["error_over_std"] - np.sqrt(2 / np.pi)) < 0.05  # E|z|
    flat = calibration(image, np.full_like(std, 0.1), truth)
    assert flat["spearman"] == 0.0  # a constant map says nothing about where the error is
    qa = std_qa(truth, std, threshold=0.1)
    inside = std[sup]
    assert abs(qa["std_mean"] - inside.mean()) < 1e-9
    assert abs(qa["std_above"] - (inside > 0.1).mean()) < 1e-9
    assert abs(qa["std_p99"] - np.percentile(inside, 99)) < 1e-9


def _np_normal(m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A^H A m of one coil with unit sensitivity, in numpy (centred orthonormal FFTs)."""
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(m), norm="ortho"))
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mask * k), norm="ortho"))


def test_the_aliasing_term_is_the_folded_part_of_the_mean():
    """|A^H A m - m| is 0 for full sampling and, for every other line, half the difference
    between m and its copy shifted by half the field of view (numpy's FFT as reference),
    by default its square averaged over a Gaussian (scipy's as reference);
    the weight is interpolated in sampled fraction and held beyond the table's ends."""
    from scipy.ndimage import gaussian_filter

    from diffrecon.recon.uncertainty import (
        ALIAS_SIGMA,
        aliasing,
        aliasing_point,
        aliasing_table,
        aliasing_weights,
        sampled_fraction,
        with_aliasing,
    )

    rng = np.random.default_rng(3)
    m = rng.standard_normal((2, 32, 32)) + 1j * rng.standard_normal((2, 32, 32))
    x = torch.from_numpy(m).to(torch.complex64)
    full = torch.ones(32, 32)
    ones = torch.ones(2, 1, 32, 32, dtype=torch.complex64)
    assert aliasing(Sense(ones, full), x).abs().max() < 1e-5
    half = torch.zeros(32, 32)
    half[::2] = 1
    got = aliasing(Sense(ones, half), x, sigma=0).numpy()
    ref = np.abs(_np_normal(m, half.numpy()) - m)
    assert np.allclose(got, ref, atol=1e-5)
    # the same as |m - roll(m, N/2)| / 2: the folded copy
    assert np.allclose(got, np.abs(m - np.roll(m, 16, axis=1)) / 2, atol=1e-5)
    # by default its energy's local mean over a Gaussian (scipy's, edges continued)
    smooth = aliasing(Sense(ones, half), x).numpy()
    want = np.sqrt(np.stack([gaussian_filter(g ** 2, ALIAS_SIGMA, mode="nearest")
                             for g in ref]))
    assert ALIAS_SIGMA > 0 and np.allclose(smooth, want, rtol=1e-4, atol=1e-6)

    per_slice = torch.stack([half, full])[:, None]
    assert torch.allclose(sampled_fraction(per_slice, 2), torch.tensor([0.5, 1.0]))
    assert torch.allclose(sampled_fraction(half, 3), torch.full((3,), 0.5))
    table = [(0.3, 0.0), (0.1, 100.0, 3.0)]
    assert aliasing_weights(table, 0.2) == pytest.approx((50.0, 2.0))
    assert aliasing_weights(table, 0.05) == (100.0, 3.0)
    assert aliasing_weights(table, 0.6) == (0.0, 1.0)
    assert aliasing_weights([], 0.1) == (0.0, 1.0)
    # points of one sampling pattern apply only to it; points without one to both
    mixed = [(0.25, 0.0, 2.0, "equispaced"), (0.25, 2.0, "random"), (0.125, 30.0)]
    assert aliasing_weights(mixed, 0.25, "equispaced") == (0.0, 2.0)
    assert aliasing_weights(mixed, 0.25, "random") == (2.0, 1.0)
    assert aliasing_weights(mixed, 0.1875, "random") == pytest.approx((16.0, 1.0))
    assert aliasing_weights([(0.25, 1.0, "random")], 0.25, "equispaced") == (0.0, 1.0)
    assert aliasing_weights(mixed[:2], 0.25) in ((0.0, 2.0), (2.0, 1.0))  # no pattern given
    with pytest.raises(ValueError, match="the scale above 0"):
        aliasing_weights([(0.25, 1.0, 0.0)], 0.25)
    # the one parser of points, strings or tuples, and the table's consistency
    assert aliasing_point("0.25:3:0.5:random") == (0.25, 3.0, 0.5, "random")
    assert aliasing_point("0.25:3:random") == aliasing_point((0.25, 3.0, 1.0, "random"))
    for bad, why in (("0.25:3:rand", "numbers and a pattern"), ("0.5", "give FRACTION"),
                     ("0.5:1:2:3", "at most one scale"), ("0.5:inf", "finite"),
                     ("0.5:1:random:equispaced", "at most one scale and one pattern")):
        with pytest.raises(ValueError, match=why):
            aliasing_point(bad)
    with pytest.raises(ValueError, match="two points for random masks at one sampled"):
        aliasing_table(["0.25:0", "0.25:3:random"])
    assert len(aliasing_table(["0.25:0:equispaced", "0.25:3:random"])) == 2
    std, alias = torch.full((2, 4, 4), 3.0), torch.full((2, 4, 4), 2.0)
    u = with_aliasing(std, alias, torch.tensor([0.0, 4.0]))
    assert torch.allclose(u[0], std[0]) and torch.allclose(u[1], torch.full((4, 4), 5.0))
    u = with_aliasing(std, alias, torch.tensor([0.0, 4.0]), torch.tensor([2.0, 0.5]))
    assert torch.allclose(u[0], 2 * std[0]) and torch.allclose(u[1], torch.full((4, 4), 2.5))


def test_sampling_pattern_tells_equispaced_from_random_lines():
    """BENCHMARKS.md's equispaced masks (any R, any size) are equispaced; its random ones at
    R = 3, 4 random on every seed, at R = 8 on 128 lines on all but 2 of 200 seeds (6 outer
    lines can fall evenly by chance); 2D Poisson masks are random."""
    from diffrecon.recon.masks import expand_mask, mask_1d, poisson_2d, sampling_pattern

    for n in (96, 128, 230):
        for accel in (3, 4, 8):
            for seed in (1, 2):
                eq = expand_mask(mask_1d("equispaced", n, accel, seed), 64)
                assert sampling_pattern(eq) == "equispaced"
            if accel < 8:
                assert all(sampling_pattern(expand_mask(mask_1d("random", n, accel, seed), 8)[
                    None, None]) == "random" for seed in range(20))
    r8 = [sampling_pattern(expand_mask(mask_1d("random", 128, 8, s), 8)) for s in range(200)]
    assert r8.count("equispaced") <= 2
    assert sampling_pattern(poisson_2d((128, 96), 6, 0)) == "random"


def test_the_aliasing_map_takes_each_slices_fraction_and_pattern():
    """Per-slice masks of one scan: slice 0 equispaced (every other line), slice 1 random
    lines of the same fraction: each gets its own pattern's weight and scale."""
    from diffrecon.recon.masks import sampling_pattern
    from diffrecon.recon.uncertainty import aliasing, aliasing_map, with_aliasing

    rng = np.random.default_rng(4)
    eq = torch.zeros(32, 32)
    eq[::2] = 1
    lines = np.sort(np.concatenate([np.arange(13, 19), rng.choice(
        np.r_[0:13, 19:32], 10, replace=False)]))
    rnd = torch.zeros(32, 32)
    rnd[lines] = 1
    assert (sampling_pattern(eq), sampling_pattern(rnd)) == ("equispaced", "random")
    op = Sense(torch.ones(2, 1, 32, 32, dtype=torch.complex64),
               torch.stack([eq, rnd])[:, None])
    mean = torch.from_numpy(rng.standard_normal((2, 32, 32))).to(torch.complex64)
    std = torch.rand(2, 32, 32)
    table = [(0.5, 0.0, 2.0, "equispaced"), (0.5, 5.0, 0.5, "random")]
    got = aliasing_map(op, mean, std, table)
    want = with_aliasing(std, aliasing(op, mean), torch.tensor([0.0, 5.0]),
                         torch.tensor([2.0, 0.5]))
    assert torch.allclose(got, want) and torch.allclose(got[0], 2 * std[0])
    with pytest.raises(ValueError, match="2 masks for 3 slices"):
        aliasing_map(op, torch.zeros(3, 32, 32), torch.zeros(3, 32, 32), table)



def test_branched_samples_share_their_first_steps():
    """branch_steps n: one trajectory per slice for nfe - n steps, then K copies with their
    own noise; the network sees S (nfe - n) + K S n images instead of K S nfe. Without noise
    (eta 0) the copies stay one trajectory: today's single sample."""
    from dataclasses import replace

    from diffrecon.config import PriorRef, ReconConfig
    from diffrecon.recon.diffusion.dds import DDSTVConfig
    from diffrecon.recon.diffusion.settings import DDS3DConfig

    prior = _random_prior()
    op = _sense(slices=2, accel=4.0)
    y = op.forward(torch.randn(2, 16, 16, dtype=torch.complex64) * 0.3)
    cfg = DDSConfig(nfe=6, seed=5, branch_steps=2)
    before = prior.evaluations
    x, nfe = draw_samples([prior], cfg, lambda a, b: op, y, samples=3)
    assert x.shape == (2, 3, 16, 16)
    assert prior.evaluations - before == 2 * (6 - 2) + 3 * 2 * 2
    assert nfe == (2 * 4 + 12) // 6
    assert not torch.allclose(x[:, 0], x[:, 1])
    still = replace(cfg, eta=0.0)
    x0, _ = draw_samples([prior], still, lambda a, b: op, y, samples=3)
    one = dds_sample(prior, op, y, replace(still, branch_steps=0))
    for k in range(3):
        assert torch.allclose(x0[:, k], one, atol=1e-5)
    tv = DDSTVConfig(nfe=4, seed=1, tv_lam=1e-3, tv_iters=2, branch_steps=1)
    xt, _ = draw_samples([prior], tv, lambda a, b: op, y, samples=2)  # ADMM's z, u copied too
    assert xt.shape == (2, 2, 16, 16) and not torch.allclose(xt[:, 0], xt[:, 1])

    with pytest.raises(ValueError, match=r"^branch_steps 6: give 1 to 5 \(the last steps of 6 "
                                         r"drawn per sample\) to split one run into 3 samples$"):
        draw_samples([prior], replace(cfg, branch_steps=6), lambda a, b: op, y, samples=3)
    with pytest.raises(ValueError, match="only the slice-wise samplers"):
        draw_samples([prior], DDS3DConfig(nfe=4, branch_steps=2), lambda a, b: op, y, samples=2)
    with pytest.raises(ValueError, match="dds-3d-tv draws whole trajectories per sample; only dds "
                                         "and dds-tv share their first steps"):
        ReconConfig(methods=["cg-sense", "dds-3d-tv"],
                    diffusion=PriorRef(samples=4, branch_steps=10))
    with pytest.raises(ValueError, match="branch_steps 50: must be below nfe 50"):
        ReconConfig(methods=["dds"], diffusion=PriorRef(samples=4, branch_steps=50))
    with pytest.raises(ValueError, match=r"branch_steps 14: needs samples > 1"):
        PriorRef(samples=1, branch_steps=14)


def _model(points: list[dict], **extra) -> dict:
    from diffrecon.recon.uncertainty import ERROR_FEATURES

    return {"features": list(ERROR_FEATURES), "points": points, **extra}


def _point(fraction: float, coefficients: list[float], intercept: float, scale: float,
           pattern: str | None = None) -> dict:
    return {"fraction": fraction, "pattern": pattern, "coefficients": coefficients,
            "intercept": intercept, "scale": scale}


def test_the_error_model_map_is_its_log_linear_formula():
    """--std-model's map is scale x max|m| x exp(c . f + c0), its features checked one by one
    against numpy / scipy (the aliasing of the mean, the detail along the phase-encoding
    axis, the local intensity, the spread's local RMS, exp(-distance to the object's edge /
    8)), the coefficients interpolated at the sampled fraction; outside the object the
    spread alone; it scales with the image. A model fitted for two methods makes each one's
    map from that method's points, and refuses to make one without a method named."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    from diffrecon.recon.operators import gaussian_smooth
    from diffrecon.recon.uncertainty import (
        ALIAS_SIGMA,
        EDGE_PX,
        HIGHPASS_PX,
        error_features,
        error_model,
        error_model_map,
        object_support,
        phase_encode_axes,
    )

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 30) ** 2 < 22 ** 2).astype(float)
    m = disc * (1 + 0.3 * rng.standard_normal((2, 64, 64))) * np.exp(0.2j * xx)
    s = np.abs(rng.standard_normal((2, 64, 64))) * 0.05
    mean, std = torch.from_numpy(m).to(torch.complex64), torch.from_numpy(s).float()
    lines = torch.zeros(64, 64)
    lines[::3] = 1
    lines[28:36] = 1
    op = Sense(torch.ones(2, 1, 64, 64, dtype=torch.complex64), lines)
    assert phase_encode_axes(lines) == (-2,) and phase_encode_axes(lines.T) == (-1,)
    assert phase_encode_axes(torch.from_numpy(rng.random((64, 64)) < 0.3)) == (-2, -1)
    # per-axis Gaussians as scipy's
    a = np.abs(m)
    got = gaussian_smooth(torch.from_numpy(a), (HIGHPASS_PX, 0.0)).numpy()
    assert np.allclose(got, gaussian_filter(a, (0, HIGHPASS_PX, 0), mode="nearest"), atol=1e-9)

    feats, top, inside = error_features(op, mean, std)
    topn = a.reshape(2, -1).max(1)[:, None, None]
    assert np.allclose(top.numpy(), topn[:, 0, 0], rtol=1e-6)

    def rms(x):
        return np.sqrt(np.stack([gaussian_filter(v ** 2, ALIAS_SIGMA, mode="nearest")
                                 for v in x]))

    alias = np.abs(np.stack([_np_normal(v, lines.numpy()) for v in m]) - m)
    hp = a - np.stack([gaussian_filter(v, (HIGHPASS_PX, 0), mode="nearest") for v in a])
    inten = np.stack([gaussian_filter(v, HIGHPASS_PX, mode="nearest") for v in a])
    edge = np.exp(-np.stack([distance_transform_edt(v) for v in object_support(a)]) / EDGE_PX)
    sup = object_support(a)
    assert np.array_equal(inside.numpy(), sup) and (~sup).sum() > 1000
    want = [np.log(np.maximum(f / topn, 1e-6)) for f in (rms(alias), rms(hp), inten, rms(s))]
    want.append(edge)
    for i, w in enumerate(want):
        assert np.allclose(feats[:, i].numpy(), w, atol=2e-4), i

    model = error_model(_model([_point(0.2, [0.2, 0.4, -0.2, 0.6, -0.5], -1.0, 2.0),
                                _point(0.6, [0.4, 0.8, -0.4, 0.2, -0.1], -3.0, 4.0)]))
    frac = float(lines.mean())  # (22 + 8 - 3) / 64 lines
    t = (frac - 0.2) / 0.4
    c = (1 - t) * np.array([0.2, 0.4, -0.2, 0.6, -0.5]) + t * np.array([0.4, 0.8, -0.4, 0.2,
                                                                           -0.1])
    c0, sc = (1 - t) * -1.0 + t * -3.0, (1 - t) * 2.0 + t * 4.0
    u = error_model_map(op, mean, std, model).numpy()
    expect = sc * topn * np.exp(np.tensordot(c, np.stack(want), axes=(0, 0)) + c0)
    expect = np.where(sup, expect, s)  # outside the object: the spread
    assert np.allclose(u, expect, rtol=2e-3)
    # a scaled image and spread give the scaled map
    u3 = error_model_map(op, 3 * mean, 3 * std, model).numpy()
    assert np.allclose(u3, 3 * u, rtol=1e-3)
    # per-slice masks: each slice its own fraction and pattern (equispaced lines here,
    # random lines of the same fraction there), as a one-slice run of each gives
    rand = torch.zeros(64, 64)
    rand[torch.randperm(64, generator=torch.Generator().manual_seed(0))[:24]] = 1
    rand[28:36] = 1
    both = Sense(torch.ones(2, 1, 64, 64, dtype=torch.complex64),
                 torch.stack([lines, rand])[:, None])
    two = error_model(_model([_point(0.4, [0.2, 0.4, -0.2, 0.6, -0.5], -1.0, 2.0, "equispaced"),
                              _point(0.4, [0.1, 0.9, -0.3, 0.2, -0.2], 0.5, 1.0, "random")]))
    got = error_model_map(both, mean, std, two)
    for i, mk in enumerate((lines, rand)):
        one = Sense(torch.ones(1, 1, 64, 64, dtype=torch.complex64), mk)
        assert torch.allclose(got[i], error_model_map(one, mean[i:i + 1], std[i:i + 1], two)[0])
    assert not torch.allclose(got[1], error_model_map(
        Sense(torch.ones(1, 1, 64, 64, dtype=torch.complex64), rand), mean[1:], std[1:],
        error_model(_model([two["points"][0] | {"pattern": None}])))[0])
    # an object that fills the image: the border counts as its edge
    full = torch.ones(1, 64, 64, dtype=torch.complex64)
    edge = error_features(Sense(torch.ones(1, 1, 64, 64, dtype=torch.complex64), lines), full,
                          torch.ones(1, 64, 64))[0][0, -1].numpy()
    assert np.allclose(edge, edge[::-1, ::-1]) and np.allclose(edge, edge.T)
    assert edge[0, 0] == edge[0, 32] == pytest.approx(np.exp(-1 / EDGE_PX))
    assert edge[32, 32] == pytest.approx(np.exp(-32 / EDGE_PX))
    with pytest.raises(ValueError, match=r"std_model: no point for equispaced masks \(the "
                                         r"model's patterns: \['random'\]\)"):
        error_model_map(op, mean, std, error_model(_model([_point(0.3, [0] * 5, 0, 1,
                                                                   "random")])))
    # points of two methods: each method's map from its own points, none without naming one
    both_methods = error_model(_model([two["points"][0] | {"method": "dds"},
                                       two["points"][1] | {"method": "dds-tv",
                                                           "pattern": "equispaced"}]))
    one = Sense(torch.ones(1, 1, 64, 64, dtype=torch.complex64), lines)
    for k, method in enumerate(("dds", "dds-tv")):
        alone = error_model(_model([both_methods["points"][k] | {"method": None}]))
        assert torch.allclose(error_model_map(one, mean[:1], std[:1], both_methods, method),
                              error_model_map(one, mean[:1], std[:1], alone))
    with pytest.raises(ValueError, match=r"std_model: the model holds points for dds, dds-tv: "
                                         r"name the method whose map to make"):
        error_model_map(one, mean[:1], std[:1], both_methods)


def test_an_error_model_is_refused_naming_the_source_and_the_field(tmp_path):
    """Every malformed model is a ValueError naming its file (or source) and what is wrong;
    a checked model passes again unchanged (also through JSON)."""
    import json

    from diffrecon.recon.uncertainty import error_model, model_methods

    good = _model([_point(0.25, [0.1, 0.2, 0.3, 0.4, 0.5], -2.0, 1.5, "random")],
                  fitted={"prior_digest": "ab"})
    checked = error_model(good)
    # one point per method at one fraction and pattern is fine; the methods they serve
    two = error_model(_model([_point(0.5, [0] * 5, 0, 1) | {"method": "dds"},
                              _point(0.5, [0] * 5, 0, 1) | {"method": "dds-tv"}]))
    assert [model_methods(two, m) for m in ("dds", "dds-tv", "dps")] == ["dds", "dds-tv", "dds"]
    assert model_methods(checked, "dps") == "dps"  # points for any method serve every one
    assert checked == error_model(checked) == error_model(json.loads(json.dumps(checked)))
    assert checked["points"][0]["coefficients"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    f = tmp_path / "m.json"
    f.write_text(json.dumps(good))
    assert error_model(f) == checked
    cases = [
        ({"points": good["points"]}, "features None are not the ones this version computes"),
        (_model([]), "points: a list of at least one point expected"),
        (_model([_point(0.25, [1, 2], 0, 1)]), r"points\[0\]: coefficients: 5 numbers"),
        (_model([_point(0.25, [0] * 5, 0, 0)]), r"points\[0\]: scale 0: must be above 0"),
        (_model([_point(1.5, [0] * 5, 0, 1)]), r"points\[0\]: fraction 1.5: must be in "
                                               r"\(0, 1\]"),
        (_model([_point(0.5, [0] * 5, "x", 1)]), r"points\[0\]: intercept: a finite number "
                                                 "expected, not 'x'"),
        (_model([_point(0.5, [0, 0, True, 0, 0], 0, 1)]), r"points\[0\]: coefficients\[2\]: "
                                                          "a finite number expected, not True"),
        (_model([{"pattern": None, "coefficients": [0] * 5, "intercept": 0, "scale": 1}]),
         r"points\[0\]: fraction: a finite number expected, not None"),
        (_model([_point(0.5, [0] * 5, 0, 1)], fitted={"prior_digest": 3}),
         "fitted.prior_digest: a string expected"),
        (_model([_point(0.5, [0] * 5, 0, 1) | {"method": 3}]),
         r"points\[0\]: method 3: a method's name or null expected"),
        (_model([_point(0.5, [0] * 5, 0, 1) | {"method": "dds"},
                 _point(0.5, [0] * 5, 0, 1, "random")]),
         r"points\[0\] and points\[1\]: both apply to random masks at sampled fraction 0.5 "
         "for dds"),
        (_model([_point(0.5, [0] * 5, 0, 1, "radial")]), r"points\[0\]: pattern 'radial' is "
                                                         "not one of"),
        (_model([_point(0.5, [0] * 5, 0, 1), _point(0.5, [0] * 5, 0, 1, "random")]),
         r"points\[0\] and points\[1\]: both apply to random masks at sampled fraction 0.5"),
        (_model([_point(0.5, [0] * 5, 0, 1)], fitted=[1]), "fitted: an object expected"),
        ([1], "an error model is a JSON object"),
    ]
    for bad, why in cases:
        f.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"^{f}: {why}"):
            error_model(f)
    f.write_text("{not json")
    with pytest.raises(ValueError, match=f"^{f}: the error model is not valid JSON"):
        error_model(f)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'none.json'}: cannot read the error "
                                         "model"):
        error_model(tmp_path / "none.json")
