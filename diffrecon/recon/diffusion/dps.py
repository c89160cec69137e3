"""Diffusion posterior sampling (Chung et al., ICLR 2023), the baseline DDS is compared with."""

from __future__ import annotations

import torch

from diffrecon.recon.diffusion.dds import Progress, _in_support, _start
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.settings import DPSConfig
from diffrecon.recon.operators import LinearOperator


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
