"""The VP noise schedule of DDPM/DDS: linear betas over the training steps."""

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
        a = self.alphas_cumprod.to(t.device)[t.long()]
        if like is not None:
            a = a.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
        return a

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sampling_timesteps(self, nfe: int) -> list[int]:
        """``nfe`` timesteps uniformly strided over the training steps, descending (DDIM)."""
        if not 1 <= nfe <= self.num_steps:
            raise ValueError(f"nfe must be between 1 and {self.num_steps}, got {nfe}")
        step = self.num_steps // nfe
        return list(range(0, self.num_steps, step))[:nfe][::-1]
