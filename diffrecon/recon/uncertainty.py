"""Per-pixel uncertainty of a sampled reconstruction: where the object is, the QA figures of
a std map, and how well a std map predicts the error (benchmarks/uncertainty.py).

The std map is the spread of K diffusion samples of one slice (recon.diffusion.run); its
figures are relative to the slice's data range (the image's maximum magnitude for MRI, 1
for CT in CT units), as PSNR's are, so they read the same for any intensity scale.

The spread misses what every sample shares: at high acceleration the samples carry the
same folded copies of the anatomy, a bias no spread shows. For MRI the aliasing of the
mean m, |A^H A m - m| (A the SENSE operator: zero where the sampling pins m down), ranks
that error; its energy is taken as a local mean (a Gaussian of ALIAS_SIGMA pixels: the
sampler removes most of a folded copy and leaves its residue around it, so the error sits
near the ghost rather than on it). :func:`with_aliasing` adds it with a weight (and scales
the map by a factor) per sampled fraction and sampling pattern (equispaced or random
lines), fitted on training slices (benchmarks/uncertainty.py): with equispaced lines at low
acceleration the spread alone ranks the error better, and each setting needs its own factor
for its coverage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffrecon.recon.metrics import magnitudes as _np

Array = Any  # a numpy array or a torch tensor (magnitudes are taken)

SMOOTH = 5  # the calibration figures compare 5 x 5 local means of |error| and std
# pixels: the aliasing energy's local mean. Chosen on training-split slices only
# (benchmarks/uncertainty.py, IXI training volumes 1-2, R=4 and R=8, both masks): mean
# Spearman (4 settings, best weights) 0.424 / 0.440 / 0.453 / 0.461 / 0.465 / 0.466 / 0.458
# at sigma 0 / 1 / 2 / 3 / 4 / 6 / 8 px (its "alias_sigma" study);
# the smallest within 0.005 of the best
ALIAS_SIGMA = 4.0


def object_support(image: Array, level: float = 0.05) -> np.ndarray:
    """(S, H, W) bool: per slice the object, pixels whose 5 x 5 local mean magnitude is
    above ``level`` of the slice's maximum, holes filled (the head inside its skull, the
    body inside the air), so that background noise and air do not count."""
    from scipy.ndimage import binary_fill_holes, uniform_filter

    a = _np(image)
    out = np.zeros(a.shape, bool)
    for s in range(a.shape[0]):
        m = uniform_filter(a[s], SMOOTH)
        out[s] = binary_fill_holes(m > level * max(float(a[s].max()), 1e-30))
    return out


def aliasing(op: Any, image: Any, sigma: float = ALIAS_SIGMA) -> Any:
    """The local RMS of |A^H A m - m| for an image m (S, H, W) under a SENSE-type operator
    ``op`` (coil maps normalised to sum |S_c|^2 = 1 where a coil sees; then A^H A is the
    identity for fully sampled k-space): the part of m the sampling folds away, its square
    averaged over a Gaussian of ``sigma`` pixels (:func:`gaussian_smooth`; 0: pointwise)."""
    return gaussian_smooth((op.normal(image) - image).abs().square(), sigma).sqrt()


def gaussian_smooth(x: Any, sigma: float) -> Any:
    """Each slice of a real tensor (S, H, W) convolved with a normalised Gaussian of
    ``sigma`` pixels (separable, truncated at 4 sigma, edges continued by their nearest
    pixel: scipy.ndimage.gaussian_filter's mode "nearest"); ``sigma`` 0 returns ``x``."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return x
    r = int(4 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x.reshape(-1, 1, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1))
    return y.reshape(x.shape)


def sampled_fraction(mask: Any, slices: int) -> Any:
    """Per slice (``slices``,) the fraction of k-space sampled, for a mask (ky, kx) shared by
    the slices or per-slice masks (S, 1, ky, kx)."""
    m = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).float().mean(dim=1)
    return m.expand(slices) if m.numel() == 1 else m


PATTERNS = ("equispaced", "random")  # recon.masks.sampling_pattern's answers


def aliasing_point(point: Any) -> tuple[float, float, float, str | None]:
    """A calibration point, "F:W[:S][:PATTERN]" or (F, W[, S][, PATTERN]), as (fraction,
    weight, scale, pattern): scale 1 and every pattern (None) where not given; a ValueError
    naming the point for anything else (at most one scale and one pattern; finite values;
    0 < F <= 1, W >= 0, S > 0)."""
    items = point.split(":") if isinstance(point, str) else list(point)
    bad = f"std_aliasing point {point!r}: "
    if not 2 <= len(items) <= 4:
        raise ValueError(bad + "give FRACTION:WEIGHT[:SCALE][:equispaced|random]")
    scales, patterns = [], []
    for item in items[2:]:
        if item is None or (isinstance(item, str) and item.strip() in PATTERNS):
            patterns.append(item.strip() if isinstance(item, str) else None)
        else:
            scales.append(item)
    try:
        f, w, *scale = (float(v) for v in [*items[:2], *scales])
    except (TypeError, ValueError):
        raise ValueError(bad + f"numbers and a pattern ({' or '.join(PATTERNS)}) "
                         "expected") from None
    if len(scale) > 1 or len(patterns) > 1:
        raise ValueError(bad + "at most one scale and one pattern")
    sc = scale[0] if scale else 1.0
    if not (np.isfinite([f, w, sc]).all() and 0 < f <= 1 and w >= 0 and sc > 0):
        raise ValueError(bad + "the sampled fraction must be in (0, 1], the weight at "
                         "least 0 and the scale above 0 (finite)")
    return f, w, sc, patterns[0] if patterns else None


def aliasing_table(points: list) -> list[tuple[float, float, float, str | None]]:
    """Points (:func:`aliasing_point`), checked together: no two that apply to one pattern
    at the same sampled fraction (which would be ambiguous)."""
    table = [aliasing_point(p) for p in points]
    for pattern in PATTERNS:
        fractions = [t[0] for t in table if t[3] in (None, pattern)]
        if len(set(fractions)) < len(fractions):
            raise ValueError(f"std_aliasing: two points for {pattern} masks at one sampled "
                             "fraction")
    return table


def aliasing_weights(table: list, fraction: float, pattern: str | None = None
                     ) -> tuple[float, float]:
    """(weight, scale) of the std map at a sampled ``fraction`` for a mask of ``pattern``
    (recon.masks.sampling_pattern): among ``table``'s points (:func:`aliasing_point`) those
    without a pattern or of this one, linearly interpolated in the fraction, the end
    points' values held beyond them; (0, 1), the spread alone, where none applies."""
    pts = sorted(pt[:3] for pt in aliasing_table(table)
                 if pt[3] is None or pattern is None or pt[3] == pattern)
    if not pts:
        return 0.0, 1.0
    xs = [pt[0] for pt in pts]
    return (float(np.interp(fraction, xs, [pt[1] for pt in pts])),
            float(np.interp(fraction, xs, [pt[2] for pt in pts])))


def with_aliasing(std: Any, alias: Any, weights: Any, scales: Any = None) -> Any:
    """scale sqrt(std^2 + w alias^2), ``weights`` and ``scales`` (S,) one per slice."""
    shape = (-1, *([1] * (std.ndim - 1)))
    u = (std.square() + weights.reshape(shape).to(std.dtype) * alias.square()).sqrt()
    return u if scales is None else u * scales.reshape(shape).to(std.dtype)


def aliasing_map(op: Any, mean: Any, std: Any, table: list) -> Any:
    """The std map of ``--std-aliasing``: :func:`with_aliasing` of the mean's aliasing under
    the SENSE-type ``op`` (its ``mask``: one (ky, kx) for every slice or (S, 1, ky, kx)),
    weight and scale from ``table`` at each slice's sampled fraction and sampling pattern."""
    import torch

    from diffrecon.recon.masks import sampling_pattern

    n = mean.shape[0]
    masks = op.mask.reshape(-1, *op.mask.shape[-2:])
    if len(masks) not in (1, n):
        raise ValueError(f"{len(masks)} masks for {n} slices")
    patterns = [sampling_pattern(m) for m in masks]
    fractions = sampled_fraction(op.mask, n)
    ws = torch.tensor([aliasing_weights(table, float(f), patterns[min(i, len(masks) - 1)])
                       for i, f in enumerate(fractions)], device=std.device)
    return with_aliasing(std, aliasing(op, mean), ws[:, 0], ws[:, 1])


def std_qa(image: Array, std: Array, threshold: float, data_range: float | None = None) -> dict:
    """QA of a std map over the object (:func:`object_support` of the image): mean, 99th
    percentile and the fraction of pixels above ``threshold``, all relative to the data
    range (``None``: each slice's maximum magnitude)."""
    a, s = _np(image), _np(std)
    sup = object_support(a)
    rel = []
    for z in range(a.shape[0]):
        rng = data_range if data_range is not None else max(float(a[z].max()), 1e-30)
        rel.append(s[z][sup[z]] / rng)
    v = np.concatenate(rel) if rel else np.zeros(0)
    if v.size == 0:
        return {"std_mean": None, "std_p99": None, "std_above": None}
    return {"std_mean": float(v.mean()), "std_p99": float(np.percentile(v, 99)),
            "std_above": float((v > threshold).mean())}


def calibration(image: Array, std: Array, truth: Array, support: np.ndarray | None = None) -> dict:
    """How well a std map predicts the error of ``image`` against ``truth`` (magnitudes),
    over ``support`` (default: the truth's object), per slice then averaged: Spearman's
    rank correlation of the 5 x 5 local means of |error| and std (0 where either is
    constant), the coverage of image +- 2 std (the fraction of pixels whose truth lies
    inside), and the mean |error| over the mean std."""
    from scipy.ndimage import uniform_filter
    from scipy.stats import spearmanr

    a, s, t = _np(image), _np(std), _np(truth)
    sup = object_support(t) if support is None else np.asarray(support, bool).reshape(t.shape)
    rho, cover, ratio = [], [], []
    for z in range(t.shape[0]):
        m = sup[z]
        err = np.abs(a[z] - t[z])
        e_loc, s_loc = uniform_filter(err, SMOOTH)[m], uniform_filter(s[z], SMOOTH)[m]
        # a constant map ranks nothing: no information, rho 0
        flat = s_loc.size < 2 or np.ptp(s_loc) == 0 or np.ptp(e_loc) == 0
        rho.append(0.0 if flat else float(spearmanr(e_loc, s_loc)[0]))
        cover.append(float((err[m] <= 2 * s[z][m]).mean()))
        ratio.append(float(err[m].mean() / max(s[z][m].mean(), 1e-30)))
    return {"spearman": float(np.mean(rho)), "coverage": float(np.mean(cover)),
            "error_over_std": float(np.mean(ratio))}
