from __future__ import annotations

import pytest
import torch

from diffrecon.recon.fft import fft2c, ifft2c
from diffrecon.recon.masks import make_mask
from diffrecon.recon.operators import Sense, SingleCoil, adjointness_error
from diffrecon.recon.simulation import birdcage_maps


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


def _cartesian_3d(dtype):
    from diffrecon.recon.operators import Cartesian3D

    mask = torch.rand(6, 8, generator=torch.Generator().manual_seed(0)) < 0.4
    return Cartesian3D(birdcage_maps(3, (8, 5)).to(dtype), mask, dtype=dtype), (6, 8, 5), \
        (3, 6, 8, 5)


def _z_super_resolution(dtype):
    from diffrecon.recon.operators import ZSuperResolution

    return ZSuperResolution(4), (8, 5, 6), (2, 5, 6)


def _wavelet(dtype):
    from diffrecon.recon.wavelets import Wavelet2D

    return Wavelet2D((16, 24), levels=3), (2, 16, 24), (2, 16, 24)


def _ct(kind):
    def make(dtype):
        import numpy as np

        from diffrecon.recon.ct import CTGeometry, CTProjector

        if kind == "parallel":
            geom = CTGeometry.parallel(np.linspace(0, np.pi, 16, endpoint=False), 47,
                                       image_shape=(32, 32))
        else:
            geom = CTGeometry.fan(np.linspace(0, 2 * np.pi, 20, endpoint=False), 60, 1.0, 80.0,
                                  40.0, detector=kind, image_shape=(32, 24))
        return CTProjector(geom), (2, *geom.image_shape), (2, geom.n_views, geom.n_det)
    return make


def _resample(src, dst):
    def make(dtype):
        from diffrecon.recon.operators import FourierResample

        return FourierResample(src, dst), (2, *src), (2, *dst)
    return make


def _composed(dtype):
    from diffrecon.recon.operators import Composed, FourierResample

    sense, _, ys = _operators(dtype)["sense-batched"]
    h, w = ys[-2:]
    return Composed(sense, FourierResample((16, 16), (h, w))), (ys[0], 16, 16), ys


# Every linear operator of recon/, by name: factory(dtype) -> (operator, x shape, y shape).
# Complex operators are checked in complex128 and complex64, real ones (CT) in float64.
OPERATORS = {
    "sense": lambda dtype: _operators(dtype)["sense"],
    "sense-batched": lambda dtype: _operators(dtype)["sense-batched"],
    "single-coil": lambda dtype: _operators(dtype)["single-coil"],
    "cartesian-3d": _cartesian_3d,
    "z-super-resolution": _z_super_resolution,
    "wavelet-db4": _wavelet,
    "ct-parallel": _ct("parallel"),
    "ct-fan-flat": _ct("flat"),
    "ct-fan-equiangular": _ct("equiangular"),
    "fourier-resample-down": _resample((16, 16), (12, 9)),
    "fourier-resample-up": _resample((12, 9), (16, 16)),
    "sense-on-another-grid": _composed,
}
REAL = {"ct-parallel", "ct-fan-flat", "ct-fan-equiangular"}


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("dtype, tol", [(torch.complex128, 1e-5), (torch.complex64, 1e-4)])
def test_adjointness(name, dtype, tol):
    """<A x, y> = <x, A^H y> for every operator of the registry above."""
    if name in REAL:
        dtype, tol = torch.float64, 1e-10
    op, xs, ys = OPERATORS[name](dtype)
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


def test_cartesian_3d_operator_is_adjoint_and_matches_a_dense_dft():
    import numpy as np

    from diffrecon.recon.operators import Cartesian3D, adjointness_error
    from diffrecon.recon.simulation import birdcage_maps

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 8, generator=g) < 0.4
    maps = birdcage_maps(3, (8, 5)).to(torch.complex128)
    for m in (None, maps):
        op = Cartesian3D(m, mask, dtype=torch.complex128)
        assert adjointness_error(op, (6, 8, 5), (3 if m is not None else 1, 6, 8, 5)) < 1e-12
    # single coil, fully sampled: the centred orthonormal 3D DFT (numpy's, shifted)
    x = torch.randn(6, 8, 5, dtype=torch.complex128, generator=g)
    full = Cartesian3D(None, torch.ones(6, 8, dtype=torch.bool), dtype=torch.complex128)
    ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x.numpy()), norm="ortho"))
    np.testing.assert_allclose(full.forward(x)[0].numpy(), ref, atol=1e-12)
    # the readout is never undersampled: unsampled (kz, ky) rows are zero along kx
    y = op.forward(x)
    assert torch.all(y[:, ~mask] == 0) and torch.all(y[:, mask].abs().sum(-1) > 0)


def test_fourier_resampling_keeps_values_and_a_band_limited_image():
    """A constant stays that constant; an image band-limited to the smaller grid goes up and
    back down unchanged (the adjoint of an upsampling is its inverse on that band)."""
    from diffrecon.recon.fft import fft2c, ifft2c
    from diffrecon.recon.operators import FourierResample

    up = FourierResample((12, 12), (20, 20))
    assert torch.allclose(up.forward(torch.full((1, 12, 12), 2.0 + 0j)).real,
                          torch.full((1, 20, 20), 2.0, dtype=torch.float32), atol=1e-5)
    x = torch.randn(1, 12, 12, dtype=torch.complex128)
    k = fft2c(x)
    k[..., 0, :] = 0  # no energy at the grid's Nyquist row / column (not band-limited)
    k[..., :, 0] = 0
    x = ifft2c(k)
    down = FourierResample((20, 20), (12, 12))
    assert torch.allclose(down.forward(up.forward(x)), x, atol=1e-10)
