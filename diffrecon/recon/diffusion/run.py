"""Running a diffusion method: the priors checked against the scan, the sampler chosen by
its settings, slice batches, and the network evaluations counted. Prefect-free, so tasks
and benchmarks run the same code."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffrecon.recon.batching import in_slice_batches
from diffrecon.recon.diffusion.dds import DDSConfig, Progress, dds_sample
from diffrecon.recon.diffusion.dps import DPSConfig, dps_sample
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_volume_sample
from diffrecon.recon.operators import LinearOperator

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


def run_diffusion(priors: list[Prior], config: SamplerConfig,
                  make_op: Callable[[int, int], LinearOperator], y: torch.Tensor,
                  slice_batch: int | None = None, progress: Progress | None = None,
                  on_retry: Callable[[int, int], None] | None = None
                  ) -> tuple[torch.Tensor, int]:
    """Reconstruct (S, H, W) images from ``y`` with the sampler ``config`` selects: a
    DDS3DConfig samples the whole volume with every prior (``make_op(0, S)``), the others
    each slice batch independently (``make_op(a, b)`` the operator of slices a..b-1, CUDA
    out-of-memory halving the batch). Returns (images, network evaluations per slice)."""
    before = sum(p.evaluations for p in priors)
    if isinstance(config, DDS3DConfig):
        x = dds_volume_sample(priors, make_op(0, y.shape[0]), y, config, progress)
    else:
        x = in_slice_batches(lambda a, b: sample(priors[0], make_op(a, b), y[a:b], config,
                                                 progress), y.shape[0], slice_batch, on_retry)
    nfe = (sum(p.evaluations for p in priors) - before) // max(1, int(x.shape[0]))
    return x, nfe
