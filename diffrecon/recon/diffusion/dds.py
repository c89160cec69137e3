"""Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024) and DPS (Chung et al., 2023).

Both share ``sample(prior, operator, y, config)``: ``operator`` maps data-space images
(complex (S, H, W) for MRI, real (S, H, W) in CT units for CT) to measurements ``y``;
the prior owns the mapping into its model space (for MRI with a per-slice ``scale``).

DDS step (VP schedule, ``nfe`` timesteps strided over the 1000 training steps):
eps = net(x_t, t); Tweedie x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); data
consistency by a few CG iterations started at x0 (noiseless: A^H A x = A^H y; noisy:
(I + gamma A^H A) x = x0 + gamma A^H y), in data space with Hermitian inner products per
slice; then x_{t-1} = sqrt(abar_prev) x0' + sqrt(1 - abar_prev) (eta z + sqrt(1 - eta^2) eps),
and x0' itself after the last step. The result is zeroed outside the operator's support
(for SENSE, where every coil map is 0), as a SENSE reconstruction is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.sampling import ddim_step
from diffrecon.recon.operators import LinearOperator
from diffrecon.recon.solvers import conjugate_gradient

Progress = Callable[[int, int], None]


@dataclass
class DDSConfig:
    nfe: int = 50
    eta: float = 0.85
    cg_iters: int = 5
    gamma: float | None = None  # None: noiseless data consistency
    clip: bool = True  # clip Tweedie's x0 to the model's range [-1, 1]
    seed: int = 0
    scale_factor: float = 1.0  # MRI: multiplies the estimated per-slice image scale


@dataclass
class DPSConfig:
    steps: int = 1000
    step_size: float = 1.0  # zeta: the step is zeta / ||y - A x0_hat|| (DPS paper)
    eta: float = 1.0  # 1: DDPM ancestral sampling; 0: DDIM
    clip: bool = True
    seed: int = 0
    scale_factor: float = 1.0


SCALE_CG_ITERS = 10


def estimate_scale(prior: Prior, operator: LinearOperator, y: torch.Tensor,
                   factor: float = 1.0, volume: bool = False,
                   aty: torch.Tensor | None = None) -> torch.Tensor | float:
    """Intensity scale that brings MRI images to the prior's max-1 range: the maximum
    magnitude of the least-squares image (CG on A^H A x = A^H y from zero, a few
    iterations), per slice, or one for the whole volume; 1 for CT (data units already).

    Not the adjoint image's maximum: A^H y under-estimates the image by the operator's
    gain (a quarter for z super-resolution by 4; 0.5-0.95 for undersampled SENSE), and the
    prior then sees images brighter than any it learnt, clipped at the model's range."""
    if prior.config.normalisation.kind != "complex":
        return 1.0
    aty = operator.adjoint(y) if aty is None else aty
    x, _ = conjugate_gradient(operator.normal, aty, max_iter=SCALE_CG_ITERS, tol=1e-6,
                              batch_dims=0 if volume else 1)
    if volume:
        return max(float(x.abs().max()), 1e-12) * factor
    return x.abs().flatten(1).amax(dim=1).clamp_min(1e-12) * factor


def _data_dtype(prior: Prior, y: torch.Tensor):
    return y.dtype if prior.config.normalisation.kind == "complex" else y.real.dtype


def _in_support(operator: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """Zero outside the operator's support (for SENSE: outside every coil's map), where the
    data say nothing and only the prior's guess would remain."""
    sup = operator.support()
    return x if sup is None else x * sup


def data_consistency(operator: LinearOperator, y: torch.Tensor, x0: torch.Tensor,
                     iters: int, gamma: float | None, aty: torch.Tensor | None = None,
                     batch_dims: int = 1, extra: tuple | None = None) -> torch.Tensor:
    """CG data consistency started at x0: noiseless, A^H A x = A^H y, or noisy (gamma),
    (I + gamma A^H A) x = x0 + gamma A^H y. Hermitian inner products per slice
    (``batch_dims`` 1; 0: one solve for the whole volume). ``extra`` = (N, b) adds a
    quadratic term to the data term, A^H A + N and A^H y + b (ADMM's rho D^H D and
    rho D^H (z - u) for TV along z)."""
    if iters <= 0:
        return x0
    aty = operator.adjoint(y) if aty is None else aty
    normal, rhs = operator.normal, aty
    if extra is not None:
        normal, rhs = (lambda v: operator.normal(v) + extra[0](v)), aty + extra[1]
    if gamma is not None:
        data_normal = normal
        normal, rhs = (lambda v: v + gamma * data_normal(v)), x0 + gamma * rhs
    x, _ = conjugate_gradient(normal, rhs, x0=x0, max_iter=iters, tol=0.0,
                              batch_dims=batch_dims)
    return x


@dataclass
class _Run:
    """What both samplers set up: scale, noise generator, start x_T, timesteps, data dtype."""

    scale: torch.Tensor | float
    gen: torch.Generator
    shape: tuple[int, ...]
    x: torch.Tensor
    ts: list[int]
    dtype: torch.dtype


def _start(prior: Prior, operator: LinearOperator, y: torch.Tensor, steps: int, seed: int,
           scale_factor: float) -> _Run:
    g = torch.Generator(device="cpu").manual_seed(seed)
    size = prior.config.image_size
    shape = (y.shape[0], prior.channels, size, size)
    return _Run(estimate_scale(prior, operator, y, scale_factor), g, shape,
                torch.randn(shape, generator=g).to(prior.device),
                prior.schedule.sampling_timesteps(steps), _data_dtype(prior, y))


@torch.no_grad()
def dds_sample(prior: Prior, operator: LinearOperator, y: torch.Tensor,
               config: DDSConfig | None = None, progress: Progress | None = None
               ) -> torch.Tensor:
    """Reconstruct data-space images (S, H, W) from measurements ``y`` with DDS."""
    cfg = config or DDSConfig()
    sched = prior.schedule
    run = _start(prior, operator, y, cfg.nfe, cfg.seed, cfg.scale_factor)
    scale, g, shape, x, ts, dtype = run.scale, run.gen, run.shape, run.x, run.ts, run.dtype
    aty = operator.adjoint(y)
    for i, t in enumerate(ts):
        eps, x0 = prior.predict(x, t)
        if cfg.clip:
            x0 = x0.clamp(-1, 1)
        xd = prior.from_model_space(x0, scale).to(y.device, dtype)
        xd = data_consistency(operator, y, xd, cfg.cg_iters, cfg.gamma, aty)
        x0 = prior.to_model_space(xd, scale).to(prior.device)
        if i + 1 == len(ts):
            x = x0
        else:
            a_prev = sched.abar(torch.tensor([ts[i + 1]]), x0).to(x0.device)
            z = torch.randn(shape, generator=g).to(prior.device)
            x = ddim_step(x0, eps, a_prev, cfg.eta, z)
        if progress is not None:
            progress(i + 1, len(ts))
    return _in_support(operator, prior.from_model_space(x, scale).to(y.device, dtype))


def dps_sample(prior: Prior, operator: LinearOperator, y: torch.Tensor,
               config: DPSConfig | None = None, progress: Progress | None = None
               ) -> torch.Tensor:
    """Diffusion posterior sampling: each step differentiates ||y - A x0_hat(x_t)|| through
    the network and moves x_t against that gradient, with step zeta / ||y - A x0_hat||."""
    cfg = config or DPSConfig()
    sched = prior.schedule
    run = _start(prior, operator, y, cfg.steps, cfg.seed, cfg.scale_factor)
    scale, g, shape, x, ts, dtype = run.scale, run.gen, run.shape, run.x, run.ts, run.dtype
    s = y.shape[0]
    for i, t in enumerate(ts):
        x = x.detach().requires_grad_(True)
        eps, x0 = prior.predict(x, t, grad=True)
        if cfg.clip:
            x0 = x0.clamp(-1, 1)
        res = operator.forward(prior.from_model_space(x0, scale).to(y.device, dtype)) - y
        norms = torch.linalg.vector_norm(res.reshape(s, -1), dim=1)
        (grad,) = torch.autograd.grad(norms.sum(), x)
        with torch.no_grad():
            if i + 1 == len(ts):
                x = x0.detach()
            else:
                a_prev = sched.abar(torch.tensor([ts[i + 1]]), x0).to(x0.device)
                a_t = sched.abar(torch.tensor([t]), x0).to(x0.device)
                # DDIM/DDPM step with eta scaled as in DDIM (eta = 1: ancestral sampling)
                sigma = cfg.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
                z = torch.randn(shape, generator=g).to(prior.device)
                x_prev = (a_prev.sqrt() * x0.detach()
                          + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps.detach()
                          + sigma * z)
                step = cfg.step_size / norms.detach().clamp_min(1e-12)
                x = x_prev - step.reshape(-1, 1, 1, 1) * grad
        if progress is not None:
            progress(i + 1, len(ts))
    return _in_support(operator, prior.from_model_space(x.detach(), scale).to(y.device, dtype))


# Views of an axial-layout volume (S, H, W) = (z, rows A->P, cols L->R) as the slices of
# another orientation in BENCHMARKS.md's layout (io.nifti.slice_volume): a permutation of
# the three axes and flips, exact and cheap (no resampling).
_VIEWS = {"axial": ((0, 1, 2), ()), "coronal": ((1, 0, 2), (0, 1)),
          "sagittal": ((2, 0, 1), (1, 2))}


def volume_view(v: torch.Tensor, orientation: str) -> torch.Tensor:
    """(..., S, H, W) axial layout -> (..., S', H', W') slices of ``orientation``."""
    perm, flips = _VIEWS[orientation]
    lead = list(range(v.ndim - 3))
    out = v.permute(*lead, *(v.ndim - 3 + p for p in perm))
    return out.flip([v.ndim - 3 + f for f in flips]) if flips else out


def volume_unview(v: torch.Tensor, orientation: str) -> torch.Tensor:
    """Inverse of :func:`volume_view`."""
    perm, flips = _VIEWS[orientation]
    if flips:
        v = v.flip([v.ndim - 3 + f for f in flips])
    inv = sorted(range(3), key=lambda k: perm[k])
    lead = list(range(v.ndim - 3))
    return v.permute(*lead, *(v.ndim - 3 + p for p in inv))


def _centre_pad(x: torch.Tensor, size: int, fill: torch.Tensor | float) -> tuple:
    """Pad the last two axes of x to size x size around the centre with ``fill`` (a tensor
    broadcastable to the padded result, or a number); returns (padded, window) with window
    the (row slice, col slice) of x inside the result. Larger slices are an error."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x, (slice(None), slice(None))
    out = (fill.expand(*x.shape[:-2], size, size) if torch.is_tensor(fill)
           else torch.full((*x.shape[:-2], size, size), fill, dtype=x.dtype,
                           device=x.device)).clone()
    r0, c0 = (size - h) // 2, (size - w) // 2
    if r0 < 0 or c0 < 0:
        raise ValueError(f"slices of {h} x {w} do not fit the prior's {size} x {size}")
    win = (slice(r0, r0 + h), slice(c0, c0 + w))
    out[..., win[0], win[1]] = x
    return out, win


@dataclass
class DDS3DConfig(DDSConfig):
    lam: float = 0.04  # TV along z (DDS's CT default for 8 views); 0 with rho 0: no TV
    rho: float = 10.0
    slice_batch: int = 32  # slices per network call
    pattern: str = "AAB"  # perpendicular priors: A primary, B auxiliary, per diffusion step
    # MRI: the object is known to be real (a magnitude volume, e.g. z super-resolution of
    # reconstructed images): Tweedie's estimate keeps its real part before data consistency.
    # The complex priors learnt random smooth phases, which data with a large null space
    # (z-SR, 3D Cartesian) do not remove: on B4 their imaginary parts dominated the error.
    real: bool = False


@torch.no_grad()
def _denoise_volume(prior: Prior, x: torch.Tensor, t: int, orientation: str,
                    batch: int, background: float, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, Tweedie x0) of an axial-layout model-space volume x (S, C, H, W) from a 2D
    prior of ``orientation``: its slices taken from the volume, padded to the prior's size
    (with the background at noise level t), denoised in batches, put back."""
    size = prior.config.image_size
    v = volume_view(x.transpose(0, 1), orientation).transpose(0, 1)  # (S', C, H', W')
    if v.shape[-2:] == (size, size):
        vp, win = v, (slice(None), slice(None))
    else:  # the padding at the noise level of t
        a = prior.schedule.abar(torch.tensor([t]), v).to(v.device)
        noise = torch.randn(v.shape[0], v.shape[1], size, size, generator=gen).to(v)
        vp, win = _centre_pad(v, size, a.sqrt() * background + (1 - a).sqrt() * noise)
    eps, x0 = torch.empty_like(vp), torch.empty_like(vp)
    for b in range(0, vp.shape[0], batch):
        eps[b:b + batch], x0[b:b + batch] = prior.predict(vp[b:b + batch], t)
    back = []
    for u in (eps, x0):
        u = u[..., win[0], win[1]]
        back.append(volume_unview(u.transpose(0, 1), orientation).transpose(0, 1))
    return back[0].contiguous(), back[1].contiguous()


@torch.no_grad()
def dds_volume_sample(priors: list[Prior], operator: LinearOperator, y: torch.Tensor,
                      config: DDS3DConfig | None = None, progress: Progress | None = None
                      ) -> torch.Tensor:
    """DDS for a volume (S, H, W) in the axial layout from 2D priors, each applied to the
    slices of its own orientation (``prior.config.orientation``; axial by default).

    One prior: the volume is denoised slice-wise. Two (perpendicular priors, TPDM-style but
    with DDS's few steps): diffusion step i uses priors[0] or priors[1] as
    ``pattern[i % len(pattern)]`` says ("A" or "B"). Slices of an orientation smaller than
    the prior are padded with the background (data 0: air for CT) at the current noise
    level. Data consistency on the whole volume: plain CG (rho = 0) or one ADMM iteration
    per diffusion step with TV along z (lam, rho; z and u carried across steps): CG on
    (A^H A + rho D_z^H D_z) started at Tweedie's x0, z = soft(D_z x + u, lam / rho),
    u += D_z x - z. With ``gamma`` both in the noisy form, I + gamma (...) on the left and
    x0 + gamma (...) on the right, as :func:`data_consistency` does for 2D DDS.
    """
    from diffrecon.recon.solvers import (
        finite_differences,
        finite_differences_adjoint,
        soft_threshold,
    )

    cfg = config or DDS3DConfig()
    prior = priors[0]
    if len({p.config.orientation or "axial" for p in priors}) < len(priors):
        raise ValueError(f"priors {' and '.join(p.name for p in priors)} have the same "
                         "orientation; perpendicular priors need two different ones")
    if len(priors) > 1 and (set(cfg.pattern) - {"A", "B"} or "B" not in cfg.pattern):
        raise ValueError(f"pattern {cfg.pattern!r}: use A (primary) and B (auxiliary), e.g. AAB")
    if len({json.dumps(p.config.schedule, sort_keys=True) for p in priors}) > 1 \
            or len({(p.channels, p.config.normalisation.kind) for p in priors}) > 1:
        raise ValueError("the priors must share schedule, channels and normalisation")
    sched = prior.schedule
    aty = operator.adjoint(y)
    dtype = _data_dtype(prior, y)
    scale = estimate_scale(prior, operator, y, cfg.scale_factor, volume=True, aty=aty)
    background = float(prior.to_model_space(torch.zeros(1, 1, 1, dtype=dtype), scale)
                       .flatten()[0])
    shape = (aty.shape[-3], prior.channels, *aty.shape[-2:])
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    x = torch.randn(shape, generator=g).to(prior.device)
    ts = sched.sampling_timesteps(cfg.nfe)

    def dz(v):
        return finite_differences(v, (-3,), periodic=False)

    def dzt(p):
        return finite_differences_adjoint(p, (-3,), periodic=False)

    zvar = uvar = None
    for i, t in enumerate(ts):
        use = priors[1] if len(priors) > 1 and cfg.pattern[i % len(cfg.pattern)] == "B" \
            else prior
        eps, x0 = _denoise_volume(use, x, t, use.config.orientation or "axial",
                                  cfg.slice_batch, background, g)
        if cfg.clip:
            x0 = x0.clamp(-1, 1)
        xd = prior.from_model_space(x0, scale).to(aty.device, dtype)
        if cfg.real and xd.is_complex():
            xd = xd.real.to(dtype)
        if cfg.rho <= 0:  # no TV: DDS data consistency on the whole volume
            xd = data_consistency(operator, y, xd, cfg.cg_iters, cfg.gamma, aty, 0)
        else:
            if zvar is None:
                zvar, uvar = dz(xd), torch.zeros_like(dz(xd))
            tv = (lambda v: cfg.rho * dzt(dz(v)), cfg.rho * dzt(zvar - uvar))
            xd = data_consistency(operator, y, xd, cfg.cg_iters, cfg.gamma, aty, 0, tv)
            d = dz(xd)
            zvar = soft_threshold(d + uvar, cfg.lam / cfg.rho)
            uvar = uvar + d - zvar
        x0 = prior.to_model_space(xd, scale).to(prior.device)
        if i + 1 == len(ts):
            x = x0
        else:
            a_prev = sched.abar(torch.tensor([ts[i + 1]]), x0).to(x0.device)
            x = ddim_step(x0, eps, a_prev, cfg.eta, torch.randn(shape, generator=g)
                          .to(prior.device))
        if progress is not None:
            progress(i + 1, len(ts))
    return _in_support(operator, prior.from_model_space(x, scale).to(aty.device, dtype))


def dds_3d_tv_sample(prior: Prior, operator: LinearOperator, y: torch.Tensor,
                     config: DDS3DConfig | None = None, progress: Progress | None = None
                     ) -> torch.Tensor:
    """DDS + TV along z (DiffusionMBIR-style) with one 2D prior; rho = 0: slice-wise DDS."""
    return dds_volume_sample([prior], operator, y, config, progress)


def dds_perpendicular_sample(prior: Prior, aux: Prior, operator: LinearOperator,
                             y: torch.Tensor, config: DDS3DConfig | None = None,
                             progress: Progress | None = None) -> torch.Tensor:
    """DDS with two perpendicular 2D priors alternating as ``config.pattern`` says."""
    return dds_volume_sample([prior, aux], operator, y, config, progress)


def sample(prior: Prior, operator: LinearOperator, y: torch.Tensor, config=None,
           progress: Progress | None = None) -> torch.Tensor:
    """The shared sampler signature: DDS for a DDSConfig (default), DPS for a DPSConfig."""
    if isinstance(config, DPSConfig):
        return dps_sample(prior, operator, y, config, progress)
    return dds_sample(prior, operator, y, config, progress)
