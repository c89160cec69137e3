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
    averaged over a Gaussian of ``sigma`` pixels (operators.gaussian_smooth; 0: pointwise)."""
    from diffrecon.recon.operators import gaussian_smooth

    return gaussian_smooth((op.normal(image) - image).abs().square(), sigma).sqrt()


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
    got = _interpolate([(pt[0], pt[3], pt[1:3]) for pt in aliasing_table(table)],
                       fraction, pattern)
    return (0.0, 1.0) if got is None else (float(got[0]), float(got[1]))


def _interpolate(points: list[tuple[float, str | None, Any]], fraction: float,
                 pattern: str | None) -> np.ndarray | None:
    """Among (sampled fraction, pattern or None, values) points those without a pattern or
    of ``pattern`` (None: all), their values linearly interpolated at ``fraction``, the end
    points' values held beyond them; None where no point applies."""
    pts = sorted(((f, np.asarray(v, float)) for f, p, v in points
                  if p is None or pattern is None or p == pattern), key=lambda t: t[0])
    if not pts:
        return None
    xs = [f for f, _ in pts]
    vs = np.stack([v for _, v in pts])
    return np.array([np.interp(fraction, xs, vs[:, j]) for j in range(vs.shape[1])])


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

    ws = torch.tensor([aliasing_weights(table, f, p) for f, p in slice_sampling(op, mean)],
                      device=std.device)
    return with_aliasing(std, aliasing(op, mean), ws[:, 0], ws[:, 1])


def slice_sampling(op: Any, mean: Any) -> list[tuple[float, str]]:
    """Per slice of ``mean`` (S, H, W): (sampled fraction, pattern: recon.masks.
    sampling_pattern) of the SENSE-type ``op``'s mask, one (ky, kx) for every slice or
    (S, 1, ky, kx)."""
    from diffrecon.recon.masks import sampling_pattern

    n = mean.shape[0]
    masks = op.mask.reshape(-1, *op.mask.shape[-2:])
    if len(masks) not in (1, n):
        raise ValueError(f"{len(masks)} masks for {n} slices")
    patterns = [sampling_pattern(m) for m in masks]
    return [(float(f), patterns[min(i, len(masks) - 1)])
            for i, f in enumerate(sampled_fraction(op.mask, n))]


# The error model (``--std-model``): the std map as a log-linear function of features of
# the mean m and the spread that rank the error better than the spread alone, fitted per
# sampled fraction and pattern on training slices (benchmarks/uncertainty.py): u = scale x
# max|m| x exp(c . f + c0). The features, each a magnitude relative to the slice's maximum
# |m| (so the map scales with the image) and taken as a log, except the last:
#   aliasing        the aliasing energy of m (:func:`aliasing`, its local RMS)
#   phase_highpass  the local RMS of |m| minus its mean over HIGHPASS_PX pixels along the
#                   phase-encoding axis: the detail the undersampled direction must restore
#   intensity       |m| averaged over a Gaussian of HIGHPASS_PX pixels
#   spread          the local RMS of the samples' std
#   edge            exp(-d / EDGE_PX), d the distance (pixels) to the nearest pixel outside
#                   the object (or beyond the image's border)
# (local RMS: over a Gaussian of ALIAS_SIGMA pixels; the object: :func:`object_support` of
# |m|). The model is fitted inside the object; outside it (air) the map is the spread
# alone. The widths are in the scan's pixels: a model describes scans of the pixel size and
# matrix it was fitted on (the shipped brain model: 2 mm, 128 x 128, 16 coils), and sampled
# fractions beyond its points take the nearest point's coefficients (lines along ky are
# "random" to recon.masks.sampling_pattern, whatever their spacing). The features were
# chosen on training-split slices (benchmarks/uncertainty.py): each ranks a part of the
# error the others miss.
ERROR_FEATURES = ("aliasing", "phase_highpass", "intensity", "spread", "edge")
HIGHPASS_PX = 3.0
EDGE_PX = 8.0
_FLOOR = 1e-6  # relative magnitudes below this count as this (the log stays finite)


def phase_encode_axes(mask: Any) -> tuple[int, ...]:
    """The axes of an image (S, H, W) along which a mask (ky, kx) undersamples: (-2,) for
    lines along kx (the same in every column), (-1,) for lines along ky, both otherwise."""
    import torch

    m = torch.as_tensor(mask).reshape(-1, *mask.shape[-2:])[0].bool()
    if bool((m == m[:, :1]).all()):
        return (-2,)
    if bool((m == m[:1, :]).all()):
        return (-1,)
    return (-2, -1)


def error_features(op: Any, mean: Any, std: Any) -> tuple[Any, Any, Any]:
    """(features (S, F, H, W) in ERROR_FEATURES' order, each slice's max |m| (S,), the object
    (S, H, W) bool) of the mean ``mean`` (S, H, W, complex or real) and the spread ``std``
    (S, H, W) under the SENSE-type ``op`` (its ``mask``), on ``std``'s device."""
    import torch
    from scipy.ndimage import distance_transform_edt

    from diffrecon.recon.operators import gaussian_smooth

    a = mean.abs().to(std.dtype)
    top = a.reshape(a.shape[0], -1).amax(dim=1).clamp_min(1e-30)
    rel = (-1, 1, 1)
    axes = phase_encode_axes(op.mask)
    along = (HIGHPASS_PX if -2 in axes else 0.0, HIGHPASS_PX if -1 in axes else 0.0)

    def rms(x: Any) -> Any:
        return gaussian_smooth(x.square(), ALIAS_SIGMA).sqrt()

    logs = [aliasing(op, mean).to(std.dtype), rms(a - gaussian_smooth(a, along)),
            gaussian_smooth(a, HIGHPASS_PX), rms(std)]
    logs = [torch.log((f / top.reshape(rel)).clamp_min(_FLOOR)) for f in logs]
    sup = object_support(a)
    # distance to the nearest pixel outside the object, the image's border counting as outside
    dist = np.stack([distance_transform_edt(np.pad(s, 1))[1:-1, 1:-1] for s in sup])
    edge = torch.from_numpy(np.exp(-dist / EDGE_PX)).to(std.device, std.dtype)
    return torch.stack([*logs, edge], dim=1), top, torch.from_numpy(sup).to(std.device)


def error_model(value: Any, source: str = "std_model") -> dict:
    """A fitted error model, checked: ``value`` the model (a dict) or the path of its JSON
    file; ``source`` names it in errors (the file where there is one). Returns {"features":
    ERROR_FEATURES, "points": [{"fraction", "pattern" (or None), "method" (the sampler it was
    fitted for, or None), "coefficients" (one per feature), "intercept", "scale"}, ...],
    "fitted": {...}} (fitted: what it was fitted for,
    e.g. the prior's digest; kept as given), numbers as floats: a model it returns passes
    again unchanged. A ValueError naming the source and the field for anything else."""
    import json
    from pathlib import Path

    if isinstance(value, (str, Path)):
        path = Path(value)
        source = str(path)
        try:
            value = json.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the error model ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: the error model is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: an error model is a JSON object with features and points")
    if list(value.get("features") or []) != list(ERROR_FEATURES):
        raise ValueError(f"{source}: features {value.get('features')!r} are not the ones this "
                         f"version computes {list(ERROR_FEATURES)} (refit the model)")
    points = value.get("points")
    if not isinstance(points, list) or not points:
        raise ValueError(f"{source}: points: a list of at least one point expected")
    out = []
    for i, pt in enumerate(points):
        bad = f"{source}: points[{i}]: "
        if not isinstance(pt, dict):
            raise ValueError(bad + "an object with fraction, pattern, coefficients, "
                             "intercept and scale expected")
        pattern = pt.get("pattern")
        if pattern not in (None, *PATTERNS):
            raise ValueError(bad + f"pattern {pattern!r} is not one of {list(PATTERNS)} or null")
        method = pt.get("method")
        if method is not None and (not isinstance(method, str) or not method):
            raise ValueError(bad + f"method {method!r}: a method's name or null expected")
        coef = pt.get("coefficients")
        if not isinstance(coef, list) or len(coef) != len(ERROR_FEATURES):
            raise ValueError(bad + f"coefficients: {len(ERROR_FEATURES)} numbers expected, "
                             "one per feature")
        got = {}
        for field, v in (("fraction", pt.get("fraction")), ("intercept", pt.get("intercept")),
                         ("scale", pt.get("scale")),
                         *((f"coefficients[{j}]", c) for j, c in enumerate(coef))):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(bad + f"{field}: a finite number expected, not {v!r}")
            got[field] = float(v)
        if not 0 < got["fraction"] <= 1:
            raise ValueError(bad + f"fraction {got['fraction']:g}: must be in (0, 1]")
        if got["scale"] <= 0:
            raise ValueError(bad + f"scale {got['scale']:g}: must be above 0")
        out.append({"fraction": got["fraction"], "pattern": pattern, "method": method,
                    "coefficients": [got[f"coefficients[{j}]"] for j in range(len(coef))],
                    "intercept": got["intercept"], "scale": got["scale"]})
    for method in {p["method"] for p in out}:
        for pattern in PATTERNS:
            seen: dict[float, int] = {}
            for i, p in enumerate(out):
                if p["pattern"] not in (None, pattern) or p["method"] not in (None, method):
                    continue
                if p["fraction"] in seen:
                    raise ValueError(
                        f"{source}: points[{seen[p['fraction']]}] and points[{i}]: both apply "
                        f"to {pattern} masks at sampled fraction {p['fraction']:g}"
                        + ("" if method is None else f" for {method}"))
                seen[p["fraction"]] = i
    fitted = value.get("fitted", {})
    if not isinstance(fitted, dict):
        raise ValueError(f"{source}: fitted: an object expected")
    if "prior_digest" in fitted and not isinstance(fitted["prior_digest"], str):
        raise ValueError(f"{source}: fitted.prior_digest: a string expected")
    return {"features": list(ERROR_FEATURES), "points": out, "fitted": fitted}


def model_methods(model: dict, method: str) -> str | None:
    """The points of an error model that serve ``method``: those fitted for it and those
    for any method (None) -- ``method`` itself -- or, where no point serves it, the first
    method the model was fitted for (to be used with a warning: None then means the model
    names no method at all)."""
    named = [p["method"] for p in model["points"] if p["method"] is not None]
    if method in named or len(named) < len(model["points"]):
        return method
    return named[0]


def error_model_map(op: Any, mean: Any, std: Any, model: dict, method: str | None = None
                    ) -> Any:
    """The std map of ``--std-model``: scale x max|m| x exp(c . f + c0) per slice inside the
    object, the spread ``std`` outside it, the features f of :func:`error_features`, c, c0
    and scale interpolated among the model's (:func:`error_model`) points at each slice's
    sampled fraction and pattern among the points for ``method`` (and those for any method;
    ``method`` None: the model's points whatever their method). A slice whose pattern no
    point covers is an error (the model says nothing about it), and so is ``method`` None for
    a model fitted for several methods (their points would mix)."""
    import torch

    named = sorted({p["method"] for p in model["points"] if p["method"] is not None})
    if method is None and len(named) > 1:
        raise ValueError(f"std_model: the model holds points for {', '.join(named)}: name the "
                         "method whose map to make")
    feats, top, inside = error_features(op, mean, std)
    points = [(p["fraction"], p["pattern"], [*p["coefficients"], p["intercept"], p["scale"]])
              for p in model["points"] if method is None or p["method"] in (None, method)]
    rows = []
    for f, pattern in slice_sampling(op, mean):
        got = _interpolate(points, f, pattern)
        if got is None:
            raise ValueError(f"std_model: no point for {pattern} masks"
                             + ("" if method is None else f" of {method}") + " (the model's "
                             f"patterns: {sorted({str(p['pattern']) for p in model['points']})})")
        rows.append(got)
    w = torch.tensor(np.stack(rows), dtype=std.dtype, device=std.device)  # (S, F + 2)
    k = len(ERROR_FEATURES)
    logu = (feats * w[:, :k, None, None]).sum(dim=1) + w[:, k, None, None]
    u = (w[:, k + 1, None, None] * top[:, None, None]) * torch.exp(logu)
    return torch.where(inside, u, std)


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
