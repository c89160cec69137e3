"""Iterative solvers shared by the MRI and CT paths."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffrecon.recon.operators import inner


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 30,
    tol: float = 1e-6,
    batch_dims: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve normal(x) = b for a Hermitian positive (semi-)definite operator, batched.

    Inner products are Hermitian and taken per batch element (the first ``batch_dims``
    axes, e.g. slices). Each element stops when ||r|| <= tol ||b||; finished elements
    are no longer updated. Returns (x, iterations per element).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - normal(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = inner(r, r, batch_dims).real
    bnorm = inner(b, b, batch_dims).real.sqrt()
    thresh = tol * bnorm
    active = rr.sqrt() > thresh
    iters = torch.zeros_like(rr, dtype=torch.long)
    shape = (-1,) + (1,) * (b.ndim - batch_dims)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ap = normal(p)
        pap = inner(p, ap, batch_dims).real
        alpha = torch.where(active & (pap > 0), rr / pap.clamp_min(1e-30), torch.zeros_like(rr))
        a = alpha.reshape(b.shape[:batch_dims] + shape[1:]).to(b.dtype)
        x = x + a * p
        r = r - a * ap
        rr_new = inner(r, r, batch_dims).real
        beta = torch.where(active, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
        p = r + beta.reshape(a.shape).to(b.dtype) * p
        iters = iters + active.long()
        rr = torch.where(active, rr_new, rr)
        active = active & (rr.sqrt() > thresh)
    return x, iters
