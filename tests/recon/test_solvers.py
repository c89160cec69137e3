from __future__ import annotations

import torch

from diffrecon.recon.solvers import conjugate_gradient


def _hpd(n, cond, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.complex128, generator=g))
    ev = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (q * ev) @ q.conj().T


def test_batched_cg_matches_dense_solve():
    mats = torch.stack([_hpd(12, 50.0, s) for s in range(3)])
    g = torch.Generator().manual_seed(9)
    b = torch.randn(3, 12, dtype=torch.complex128, generator=g)
    x, iters = conjugate_gradient(lambda v: (mats @ v[..., None])[..., 0], b, max_iter=100,
                                  tol=1e-12)
    expected = torch.linalg.solve(mats, b)
    assert torch.allclose(x, expected, atol=1e-8)
    assert (iters <= 12 + 4).all()  # n steps in exact arithmetic, a few more in floating point


def test_each_element_stops_on_its_own():
    # element 0 is the identity (solved in one step); element 1 needs many steps
    mats = torch.stack([torch.eye(10, dtype=torch.complex128), _hpd(10, 1e3, 1)])
    b = torch.ones(2, 10, dtype=torch.complex128)
    x, iters = conjugate_gradient(lambda v: (mats @ v[..., None])[..., 0], b, max_iter=50,
                                  tol=1e-10)
    assert iters[0].item() == 1
    assert iters[1].item() > 5
    assert torch.allclose(x[0], b[0])
    assert torch.allclose(x[1], torch.linalg.solve(mats[1], b[1]), atol=1e-7)


def test_cg_on_images_uses_hermitian_inner_products():
    # a complex diagonal operator acting on (batch, H, W) images
    g = torch.Generator().manual_seed(3)
    d = torch.rand(2, 5, 4, dtype=torch.float64, generator=g) + 0.5
    b = torch.randn(2, 5, 4, dtype=torch.complex128, generator=g)
    x, _ = conjugate_gradient(lambda v: d * v, b, max_iter=40, tol=1e-12)
    assert torch.allclose(x, b / d, atol=1e-10)
