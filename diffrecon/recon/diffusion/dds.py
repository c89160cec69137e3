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


def estimate_scale(prior: Prior, operator: LinearOperator, y: torch.Tensor,
                   factor: float = 1.0) -> torch.Tensor | float:
    """Per-slice intensity scale that brings MRI images to the prior's max-1 range: the
    maximum magnitude of the zero-filled (adjoint) image; 1 for CT (data units already)."""
    if prior.config.normalisation.kind != "complex":
        return 1.0
    x = operator.adjoint(y)
    return x.abs().flatten(1).amax(dim=1).clamp_min(1e-12) * factor


def _data_dtype(prior: Prior, y: torch.Tensor):
    return y.dtype if prior.config.normalisation.kind == "complex" else y.real.dtype


def _in_support(operator: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """Zero outside the operator's support (for SENSE: outside every coil's map), where the
    data say nothing and only the prior's guess would remain."""
    sup = operator.support()
    return x if sup is None else x * sup


def data_consistency(operator: LinearOperator, y: torch.Tensor, x0: torch.Tensor,
                     iters: int, gamma: float | None) -> torch.Tensor:
    """CG data consistency started at x0 (batched over slices, per-slice Hermitian CG)."""
    if iters <= 0:
        return x0
    aty = operator.adjoint(y)
    if gamma is None:
        x, _ = conjugate_gradient(operator.normal, aty, x0=x0, max_iter=iters, tol=0.0)
    else:
        x, _ = conjugate_gradient(lambda v: v + gamma * operator.normal(v), x0 + gamma * aty,
                                  x0=x0, max_iter=iters, tol=0.0)
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
    for i, t in enumerate(ts):
        eps, x0 = prior.predict(x, t)
        if cfg.clip:
            x0 = x0.clamp(-1, 1)
        xd = prior.from_model_space(x0, scale).to(y.device, dtype)
        xd = data_consistency(operator, y, xd, cfg.cg_iters, cfg.gamma)
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


@dataclass
class DDS3DConfig(DDSConfig):
    lam: float = 0.04  # TV along z (DDS's CT default for 8 views)
    rho: float = 10.0
    slice_batch: int = 32  # slices per network call


@torch.no_grad()
def dds_3d_tv_sample(prior: Prior, operator: LinearOperator, y: torch.Tensor,
                     config: DDS3DConfig | None = None, progress: Progress | None = None
                     ) -> torch.Tensor:
    """DDS for a volume with TV along z (DiffusionMBIR-style), on (S, H, W) data space.

    The volume's slices are denoised by the 2D prior in batches of ``slice_batch``; the data
    consistency is one ADMM iteration per diffusion step on
    min 0.5 ||A x - y||^2 + lam ||D_z x||_1: x from CG on (A^H A + rho D_z^H D_z) started at
    Tweedie's x0, then z = soft(D_z x + u, lam / rho), u += D_z x - z, with z and u carried
    across diffusion steps. ``operator`` acts on the whole volume (slices coupled). With
    ``rho`` = 0 it is slice-wise DDS: the 2D prior per slice, plain CG data consistency.
    """
    from diffrecon.recon.solvers import (
        finite_differences,
        finite_differences_adjoint,
        soft_threshold,
    )

    cfg = config or DDS3DConfig()
    sched = prior.schedule
    aty = operator.adjoint(y)
    n_slices, size = aty.shape[-3], prior.config.image_size
    shape = (n_slices, prior.channels, size, size)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    x = torch.randn(shape, generator=g).to(prior.device)
    ts = sched.sampling_timesteps(cfg.nfe)
    dtype = _data_dtype(prior, y)
    # one scale for the whole volume (MRI: the adjoint image's maximum; CT: data units)
    scale = float(aty.abs().max()) * cfg.scale_factor \
        if prior.config.normalisation.kind == "complex" else 1.0

    def dz(v):
        return finite_differences(v, (-3,), periodic=False)

    def dzt(p):
        return finite_differences_adjoint(p, (-3,), periodic=False)

    zvar = uvar = None
    for i, t in enumerate(ts):
        eps = torch.empty_like(x)
        x0 = torch.empty_like(x)
        for b in range(0, n_slices, cfg.slice_batch):
            eps[b:b + cfg.slice_batch], x0[b:b + cfg.slice_batch] = prior.predict(
                x[b:b + cfg.slice_batch], t)
        if cfg.clip:
            x0 = x0.clamp(-1, 1)
        xd = prior.from_model_space(x0, scale).to(aty.device, dtype)
        if cfg.rho <= 0:  # no TV: plain DDS data consistency on the whole volume
            xd, _ = conjugate_gradient(operator.normal, aty, x0=xd, max_iter=cfg.cg_iters,
                                       tol=0.0, batch_dims=0)
        else:
            if zvar is None:
                zvar, uvar = dz(xd), torch.zeros_like(dz(xd))
            xd, _ = conjugate_gradient(lambda v: operator.normal(v) + cfg.rho * dzt(dz(v)),
                                       aty + cfg.rho * dzt(zvar - uvar), x0=xd,
                                       max_iter=cfg.cg_iters, tol=0.0, batch_dims=0)
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


def sample(prior: Prior, operator: LinearOperator, y: torch.Tensor, config=None,
           progress: Progress | None = None) -> torch.Tensor:
    """The shared sampler signature: DDS for a DDSConfig (default), DPS for a DPSConfig."""
    if isinstance(config, DPSConfig):
        return dps_sample(prior, operator, y, config, progress)
    return dds_sample(prior, operator, y, config, progress)
