from __future__ import annotations

import pytest
import torch

from diffrecon.recon.fft import fft2c, ifft2c
from diffrecon.recon.masks import birdcage_maps, make_mask
from diffrecon.recon.operators import Sense, SingleCoil, adjointness_error


def test_fft_is_centred_and_orthonormal():
    x = torch.randn(3, 16, 12, dtype=torch.complex128)
    k = fft2c(x)
    assert torch.allclose(torch.linalg.vector_norm(k), torch.linalg.vector_norm(x))
    assert torch.allclose(ifft2c(k), x)
    delta = torch.zeros(16, 12, dtype=torch.complex128)
    delta[8, 6] = 1  # the image centre -> flat k-space
    assert torch.allclose(fft2c(delta).abs(), torch.full((16, 12), 1 / (16 * 12) ** 0.5,
                                                          dtype=torch.float64))
    ones = torch.ones(16, 12, dtype=torch.complex128)
    assert fft2c(ones).abs().argmax().item() == 8 * 12 + 6  # DC at n // 2


def _operators(dtype):
    maps = birdcage_maps(6, (20, 16)).to(dtype)
    mask = make_mask("random", (20, 16), 2, seed=1)
    batch_maps = torch.stack([maps, maps.roll(1, 0), maps.conj()])
    return {
        "sense": (Sense(maps, mask), (20, 16), (6, 20, 16)),
        "sense-batched": (Sense(batch_maps, mask), (3, 20, 16), (3, 6, 20, 16)),
        "single-coil": (SingleCoil(mask, (20, 16), dtype=dtype), (2, 20, 16), (2, 1, 20, 16)),
    }


@pytest.mark.parametrize("name", ["sense", "sense-batched", "single-coil"])
@pytest.mark.parametrize("dtype, tol", [(torch.complex128, 1e-5), (torch.complex64, 1e-4)])
def test_adjointness(name, dtype, tol):
    op, xs, ys = _operators(dtype)[name]
    assert adjointness_error(op, xs, ys, dtype=dtype) < tol


def test_normal_equals_adjoint_of_forward():
    op, xs, _ = _operators(torch.complex128)["sense-batched"]
    x = torch.randn(xs, dtype=torch.complex128)
    assert torch.allclose(op.normal(x), op.adjoint(op.forward(x)))
    assert torch.allclose(op.H.forward(op.forward(x)), op.normal(x))


def test_adjointness_check_detects_a_wrong_adjoint():
    op, xs, ys = _operators(torch.complex128)["sense"]

    class Broken(Sense):
        def adjoint(self, y):
            return super().adjoint(y) * 1.01

    bad = Broken(op.maps, op.mask)
    assert adjointness_error(bad, xs, ys) > 1e-3
