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
    are no longer updated (also with tol = 0, once the residual reaches rounding level).
    Returns (x, iterations per element).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - normal(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = inner(r, r, batch_dims).real
    bnorm = inner(b, b, batch_dims).real.sqrt()
    # never iterate below rounding level: past it, alpha = 0/0 would only add noise
    thresh = max(tol, 10 * torch.finfo(rr.dtype).eps) * bnorm
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


def soft_threshold(z: torch.Tensor, t: float) -> torch.Tensor:
    """Complex-aware soft thresholding: z * max(|z| - t, 0) / |z|."""
    mag = z.abs()
    return z * ((mag - t).clamp_min(0) / mag.clamp_min(1e-30))


def finite_differences(x: torch.Tensor, dims: tuple[int, ...], periodic: bool = True
                       ) -> torch.Tensor:
    """Forward differences along ``dims``, stacked on a new leading axis.

    Periodic: x[i+1] - x[i] with wrap-around. Otherwise (Neumann) the last difference is 0.
    """
    out = []
    for d in dims:
        if periodic:
            out.append(torch.roll(x, -1, dims=d) - x)
        else:
            diff = torch.zeros_like(x)
            n = x.shape[d]
            diff.narrow(d, 0, n - 1).copy_(x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1))
            out.append(diff)
    return torch.stack(out)


def finite_differences_adjoint(p: torch.Tensor, dims: tuple[int, ...], periodic: bool = True
                               ) -> torch.Tensor:
    """Adjoint of :func:`finite_differences` (a negative backward divergence)."""
    out = torch.zeros_like(p[0])
    for i, d in enumerate(dims):
        q = p[i]
        if periodic:
            out = out + torch.roll(q, 1, dims=d) - q
        else:
            n = q.shape[d]
            head = q.narrow(d, 0, n - 1)
            out.narrow(d, 0, n - 1).sub_(head)
            out.narrow(d, 1, n - 1).add_(head)
    return out


def admm_tv(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    lam: float,
    dims: tuple[int, ...] = (-2, -1),
    rho: float | None = None,
    iters: int = 50,
    cg_iters: int = 5,
    isotropic: bool = True,
    periodic: bool = True,
    x0: torch.Tensor | None = None,
    batch_dims: int = 1,
    state: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """min_x 0.5 ||A x - y||^2 + lam TV(x) by ADMM (splitting z = D x).

    ``state`` (a dict) carries the splitting variables z and u from one call to the next
    (warm ADMM across the steps of a sampler): used when present, updated in place.

    ``normal`` is A^H A and ``rhs`` A^H y; the x-update solves (A^H A + rho D^H D) x =
    rhs + rho D^H (z - u) with a few warm-started CG iterations. TV is isotropic (the
    gradient's magnitude per pixel) or anisotropic (every difference on its own), over
    ``dims`` (in-plane, or along z for volumes). rho defaults to 10 lam.
    """
    rho = 10 * lam if rho is None else rho
    x = rhs.clone() if x0 is None else x0.clone()

    def dd(v: torch.Tensor):
        return finite_differences(v, dims, periodic)

    def dt(p: torch.Tensor):
        return finite_differences_adjoint(p, dims, periodic)

    if state is not None and "z" in state:
        z, u = state["z"], state["u"]
    else:
        z = dd(x)
        u = torch.zeros_like(z)
    for _ in range(iters):
        x, _ = conjugate_gradient(lambda v: normal(v) + rho * dt(dd(v)), rhs + rho * dt(z - u),
                                  x0=x, max_iter=cg_iters, tol=0.0, batch_dims=batch_dims)
        dx = dd(x)
        v = dx + u
        if isotropic:
            mag = v.abs().square().sum(0, keepdim=True).sqrt()
            z = v * ((mag - lam / rho).clamp_min(0) / mag.clamp_min(1e-30))
        else:
            z = soft_threshold(v, lam / rho)
        u = u + dx - z
    if state is not None:
        state.update(z=z, u=u)
    return x


def fista(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    prox: Callable[[torch.Tensor, float], torch.Tensor],
    step: float = 1.0,
    iters: int = 50,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """FISTA for min 0.5 ||A x - y||^2 + g(x): gradient A^H A x - A^H y, ``prox(v, step)``
    the proximal map of step * g. ``step`` <= 1 / ||A^H A||."""
    x = rhs.clone() if x0 is None else x0.clone()
    z, t = x.clone(), 1.0
    for _ in range(iters):
        x_new = prox(z - step * (normal(z) - rhs), step)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x
