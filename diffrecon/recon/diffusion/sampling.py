"""The DDIM update shared by the samplers, and unconditional sampling for sample sheets."""

from __future__ import annotations

import torch

from diffrecon.recon.diffusion.prior import Prior


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar_prev: torch.Tensor, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) (eta z + sqrt(1 - eta^2) eps).

    This is the DDS form of the DDIM update (eta mixes fresh noise z with the predicted
    eps); with ``noise`` None (the last step) it returns x0 scaled by sqrt(abar_prev).
    """
    if noise is None:
        return abar_prev.sqrt() * x0
    mix = eta * noise + (1 - eta**2) ** 0.5 * eps
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * mix


@torch.no_grad()
def sample_unconditional(prior: Prior, n: int, steps: int = 50, eta: float = 0.0,
                         seed: int = 0, batch: int = 16) -> torch.Tensor:
    """``n`` samples in model space (n, C, H, W) by DDIM with ``steps`` network evaluations."""
    size, c = prior.config.image_size, prior.channels
    g = torch.Generator(device="cpu").manual_seed(seed)
    ts = prior.schedule.sampling_timesteps(steps)
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        x = torch.randn((m, c, size, size), generator=g).to(prior.device)
        for i, t in enumerate(ts):
            eps, x0 = prior.predict(x, t)
            x0 = x0.clamp(-1, 1)
            if i + 1 < len(ts):
                a_prev = prior.schedule.abar(torch.tensor([ts[i + 1]]), x0).to(x0.device)
                z = torch.randn(x.shape, generator=g).to(prior.device) if eta > 0 else None
                # recompute eps from the clamped x0 so the trajectory stays consistent
                a_t = prior.schedule.abar(torch.tensor([t]), x0).to(x0.device)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = ddim_step(x0, eps, a_prev, eta, z if z is not None else torch.zeros_like(x))
            else:
                x = x0
        out.append(x.cpu())
    return torch.cat(out)
