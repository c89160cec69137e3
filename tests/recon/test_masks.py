from __future__ import annotations

import numpy as np
import pytest

from diffrecon.common.seeds import benchmark_seed
from diffrecon.recon.masks import centre_lines, make_mask, mask_1d


@pytest.mark.parametrize("accel, lines", [(4, 32), (8, 16)])
@pytest.mark.parametrize("kind", ["equispaced", "random", "gaussian"])
def test_b1_masks_have_exactly_n_over_r_lines_with_centre(kind, accel, lines):
    m = mask_1d(kind, 128, accel, seed=benchmark_seed("IXI012-HH-1211_T1", 60, f"{accel}/{kind}"))
    assert int(m.sum()) == lines
    assert m[59:69].all()
    np.testing.assert_array_equal(centre_lines(128), np.arange(59, 69))


def test_equispaced_matches_benchmark_definition():
    outer = np.setdiff1d(np.arange(128), np.arange(59, 69))
    chosen = outer[np.round(np.linspace(0, len(outer) - 1, 128 // 8 - 10)).astype(int)]
    expected = np.zeros(128, bool)
    expected[59:69] = True
    expected[chosen] = True
    np.testing.assert_array_equal(mask_1d("equispaced", 128, 8).numpy(), expected)


def test_random_matches_benchmark_definition():
    seed = benchmark_seed("IXI012-HH-1211_T1", 60, "8/random")
    assert seed == __import__("zlib").crc32(b"IXI012-HH-1211_T1/60/8/random")
    outer = np.setdiff1d(np.arange(128), np.arange(59, 69))
    chosen = np.random.default_rng(seed).choice(outer, 6, replace=False)
    expected = np.zeros(128, bool)
    expected[59:69] = True
    expected[chosen] = True
    np.testing.assert_array_equal(mask_1d("random", 128, 8, seed).numpy(), expected)
    assert not np.array_equal(mask_1d("random", 128, 8, seed + 1), expected)


@pytest.mark.parametrize("n", [96, 200, 368])
def test_generalises_to_other_sizes(n):
    for kind in ("equispaced", "random"):
        m = mask_1d(kind, n, 4, seed=3)
        assert int(m.sum()) == n // 4
        assert m[centre_lines(n)].all()


def test_too_high_acceleration_is_refused():
    with pytest.raises(ValueError, match="fewer than the 10 centre lines"):
        mask_1d("equispaced", 128, 16)


def test_poisson_2d_is_seeded_and_variable_density():
    a = make_mask("poisson", (64, 64), 6, seed=5)
    b = make_mask("poisson", (64, 64), 6, seed=5)
    assert a.shape == (64, 64)
    np.testing.assert_array_equal(a, b)
    frac = a.float().mean().item()
    assert 1 / 9 < frac < 1 / 4
    assert a[26:38, 26:38].all()  # calibration region
    assert a[24:40, 24:40].float().mean() > a.float().mean()
