"""Diffusion sampling of whole volumes from 2D priors: DDS with TV along z
(DiffusionMBIR-style) and perpendicular priors (TPDM-style, with DDS's few steps), and the
views of an axial-layout volume as the slices of another orientation."""

from __future__ import annotations

import json

import torch

from diffrecon.common.geometry import AXIAL_VIEWS
from diffrecon.recon.diffusion.dds import (
    Progress,
    _data_dtype,
    _in_support,
    data_consistency,
    estimate_scale,
)
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.sampling import ddim_step
from diffrecon.recon.diffusion.settings import DDS3DConfig, sampler_eta
from diffrecon.recon.operators import LinearOperator


def volume_view(v: torch.Tensor, orientation: str) -> torch.Tensor:
    """(..., S, H, W) axial layout -> (..., S', H', W') slices of ``orientation``."""
    perm, flips = AXIAL_VIEWS[orientation]
    lead = list(range(v.ndim - 3))
    out = v.permute(*lead, *(v.ndim - 3 + p for p in perm))
    return out.flip([v.ndim - 3 + f for f in flips]) if flips else out


def volume_unview(v: torch.Tensor, orientation: str) -> torch.Tensor:
    """Inverse of :func:`volume_view`."""
    perm, flips = AXIAL_VIEWS[orientation]
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
    eta = sampler_eta(cfg.eta, 1)  # one volume; draw_samples resolves it for K
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

    def dz(v: torch.Tensor):
        return finite_differences(v, (-3,), periodic=False)

    def dzt(p: torch.Tensor):
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
            x = ddim_step(x0, eps, a_prev, eta, torch.randn(shape, generator=g)
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
