"""Running a diffusion method: the priors checked against the scan, the sampler chosen by
its settings, slice batches, and the network evaluations counted. Prefect-free, so tasks
and benchmarks run the same code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch

from diffrecon.recon.batching import in_slice_batches
from diffrecon.recon.diffusion.dds import DDSConfig, Progress, dds_sample
from diffrecon.recon.diffusion.dps import DPSConfig, dps_sample
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.settings import sampler_eta
from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_volume_sample
from diffrecon.recon.operators import LinearOperator, Repeated, stacked_copies

SamplerConfig = DDSConfig | DPSConfig | DDS3DConfig


def sample(prior: Prior, operator: LinearOperator, y: torch.Tensor,
           config: DDSConfig | DPSConfig | None = None,
           progress: Progress | None = None) -> torch.Tensor:
    """The shared sampler signature for slices: DDS for a DDSConfig (default), DPS for a
    DPSConfig."""
    if isinstance(config, DPSConfig):
        return dps_sample(prior, operator, y, config, progress)
    return dds_sample(prior, operator, y, config, progress)


def check_priors_fit(priors: list[Prior], modality: str, image_shape: tuple[int, int],
                     any_size: bool = True) -> None:
    """A ValueError naming the prior when its modality does not fit, or (unless
    ``any_size``: the slice-wise samplers run the network at the scan's own size) its image
    size."""
    h, w = image_shape
    for p in priors:
        size_ok = any_size or (p.config.image_size == h and p.config.image_size == w)
        if p.config.modality != modality or not size_ok:
            raise ValueError(f"prior {p.name} ({p.config.modality}, {p.config.image_size} x "
                             f"{p.config.image_size}) does not fit this scan "
                             f"({modality.upper()}, {h} x {w})")


def pixel_grid(prior: Prior, shape: tuple[int, int],
               pixel_mm: tuple[float, float] | None) -> tuple[int, int]:
    """The matrix of the same field of view as a scan of ``shape`` with pixels ``pixel_mm``
    (rows, columns) whose pixels are the size the prior learnt (the scan's own where that
    lies in the prior's range, else the range's nearer end); a ValueError when the prior
    or the scan does not say its pixel size."""
    if prior.config.pixel_mm is None:
        raise ValueError(f"prior {prior.name} does not record the pixel size it learnt "
                         "(pixel_mm in its config.json): use grid native or prior")
    if pixel_mm is None or min(pixel_mm) <= 0:
        raise ValueError("grid 'pixel' needs the scan's pixel size (its header's field of "
                         "view): use grid native or prior")
    lo, hi = prior.config.pixel_mm
    return tuple(max(8, round(n * d / min(max(d, lo), hi)))  # type: ignore[return-value]
                 for n, d in zip(shape, pixel_mm))


class Reconstruction(NamedTuple):
    """A diffusion run's result: the image (the mean of the samples), the per-pixel
    standard deviation over the samples (None for one sample), network evaluations per
    slice and sample."""

    image: torch.Tensor
    std: torch.Tensor | None
    nfe: int


def sample_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean, std) of samples (S, K, H, W) over K: the complex (or real) mean and the root
    mean squared distance from it with K - 1 in the denominator (None for K = 1)."""
    mean = x.mean(dim=1)
    if x.shape[1] < 2:
        return mean, None
    var = (x - mean[:, None]).abs().square().sum(dim=1) / (x.shape[1] - 1)
    return mean, var.sqrt()


def draw_samples(priors: list[Prior], config: SamplerConfig,
                 make_op: Callable[[int, int], LinearOperator], y: torch.Tensor,
                 slice_batch: int | None = None, progress: Progress | None = None,
                 on_retry: Callable[[int, int], None] | None = None, samples: int = 1
                 ) -> tuple[torch.Tensor, int]:
    """``samples`` K reconstructions (S, K, H, W) of ``y`` with the sampler ``config``
    selects, and the network evaluations per slice and sample. A DDS3DConfig samples the
    whole volume with every prior (``make_op(0, S)``), one volume after another with seeds
    seed, seed + 1, ...; the others each slice batch independently (``make_op(a, b)`` the
    operator of slices a..b-1, CUDA out-of-memory halving the batch), the K samples of a
    batch drawn together (K copies of its slices, noise from the config's seed; with a
    DDS config's ``branch_steps`` n > 0 one trajectory per slice that splits into the K
    samples for its last n steps)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if isinstance(config, DDSConfig):  # the default eta depends on the number of samples
        config = replace(config, eta=sampler_eta(config.eta, samples))
    branch = samples > 1 and getattr(config, "branch_steps", 0) > 0
    if branch and isinstance(config, DDS3DConfig):
        raise ValueError("branch_steps: only the slice-wise samplers (dds, dds-tv) share the "
                         "first steps among samples")
    before = sum(p.evaluations for p in priors)
    if isinstance(config, DDS3DConfig):
        op = make_op(0, y.shape[0])

        def counted(k: int) -> Progress | None:  # the steps of all samples, in order
            return None if progress is None else (
                lambda i, n: progress(k * n + i, samples * n))

        x = torch.stack([dds_volume_sample(priors, op, y, replace(config, seed=config.seed + k),
                                           counted(k)) for k in range(samples)], dim=1)
    else:
        def batch(a: int, b: int) -> torch.Tensor:
            op, yb = make_op(a, b), y[a:b]
            if branch:
                xb = dds_sample(priors[0], op, yb, config, progress, samples=samples)
                return xb.reshape(samples, b - a, *xb.shape[1:]).transpose(0, 1)
            if samples > 1:
                op, yb = Repeated(op, samples), stacked_copies(yb, samples)
            xb = sample(priors[0], op, yb, config, progress)
            return xb.reshape(samples, b - a, *xb.shape[1:]).transpose(0, 1)

        x = in_slice_batches(batch, y.shape[0], slice_batch, on_retry)
    nfe = (sum(p.evaluations for p in priors) - before) // max(1, int(x.shape[0]) * samples)
    return x, nfe


def run_diffusion(priors: list[Prior], config: SamplerConfig,
                  make_op: Callable[[int, int], LinearOperator], y: torch.Tensor,
                  slice_batch: int | None = None, progress: Progress | None = None,
                  on_retry: Callable[[int, int], None] | None = None, samples: int = 1
                  ) -> Reconstruction:
    """Reconstruct (S, H, W) images from ``y`` (:func:`draw_samples`): one sample, or the
    mean and standard deviation of ``samples`` K (:func:`sample_statistics`)."""
    x, nfe = draw_samples(priors, config, make_op, y, slice_batch, progress, on_retry,
                          samples)
    mean, std = sample_statistics(x)
    return Reconstruction(mean, std, nfe)
