"""The VP noise schedule of DDPM/DDS: linear betas over the training steps, and the
conversions between what a network may be trained to predict (epsilon, the noise; or v,
sqrt(abar) eps - sqrt(1 - abar) x_0) and the epsilon the samplers use."""

from __future__ import annotations

import torch


class VPSchedule:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, abar_t = prod_{s<=t} (1 - beta_s).

    Linear betas from ``beta_start`` to ``beta_end`` over ``num_steps`` training steps
    (1e-4, 0.02, 1000 in DDS). Timesteps are integers 0 .. num_steps - 1.
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000
                 ) -> None:
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.num_steps = int(num_steps)
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._abar_on: dict[torch.device, torch.Tensor] = {}

    def to_dict(self) -> dict:
        return {"kind": "vp-linear", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_steps": self.num_steps}

    @classmethod
    def from_dict(cls, d: dict) -> VPSchedule:
        if d.get("kind", "vp-linear") != "vp-linear":
            raise ValueError(f"unknown schedule kind {d.get('kind')!r}; expected 'vp-linear'")
        return cls(d["beta_start"], d["beta_end"], d["num_steps"])

    def abar(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """abar_t for integer timesteps t (N,), shaped (N, 1, 1, ...) to broadcast with ``like``."""
        table = self._abar_on.get(t.device)
        if table is None:  # one copy per device: no host-to-GPU copy (a sync) per call
            table = self._abar_on.setdefault(t.device, self.alphas_cumprod.to(t.device))
        a = table[t.long()]
        if like is not None:
            a = a.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
        return a

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, prediction: str, x_t: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor) -> torch.Tensor:
        """What a network trained for ``prediction`` should output for x_t = q_sample(x_0,
        t, noise): the noise itself, or v = sqrt(a) eps - sqrt(1 - a) x_0, written with x_t
        as (eps - sqrt(1 - a) x_t) / sqrt(a) (x_0 is not needed)."""
        if prediction == "epsilon":
            return noise
        if prediction == "v":
            a = self.abar(t, x_t)
            return (noise - (1 - a).sqrt() * x_t) / a.sqrt()
        raise ValueError(f"unknown prediction {prediction!r}; expected 'epsilon' or 'v'")

    def to_epsilon(self, prediction: str, out: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """A network's output as epsilon: v -> sqrt(a) v + sqrt(1 - a) x_t."""
        if prediction == "epsilon":
            return out
        if prediction == "v":
            a = self.abar(t, out)
            return a.sqrt() * out + (1 - a).sqrt() * x_t.to(out)
        raise ValueError(f"unknown prediction {prediction!r}; expected 'epsilon' or 'v'")

    def loss_weight(self, prediction: str, t: torch.Tensor, min_snr: float | None
                    ) -> torch.Tensor:
        """Per-sample weights (N,) of the squared error: 1, or min-SNR-gamma weighting (Hang
        et al. 2023), min(snr, gamma) / snr for epsilon and min(snr, gamma) / (snr + 1) for v,
        snr = a / (1 - a): the same weight on the implied x_0 error for both."""
        if min_snr is None:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        a = self.abar(t).float()
        snr = a / (1 - a)
        return snr.clamp(max=min_snr) / (snr if prediction == "epsilon" else snr + 1)

    def sampling_timesteps(self, nfe: int) -> list[int]:
        """``nfe`` timesteps uniformly strided over the training steps, descending (DDIM)."""
        if not 1 <= nfe <= self.num_steps:
            raise ValueError(f"nfe must be between 1 and {self.num_steps}, got {nfe}")
        step = self.num_steps // nfe
        return list(range(0, self.num_steps, step))[:nfe][::-1]
