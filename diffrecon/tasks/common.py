"""What every task module shares: the retry policy, device resolution, a per-process prior
cache, progress artifacts, error labels, and diffusion runs with their cache-relevant
settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from pydantic import BaseModel

from diffrecon.config import PriorRef
from diffrecon.io.errors import InvalidScanError
from diffrecon.recon.diffusion.prior import Prior
from diffrecon.recon.diffusion.settings import sampler_eta
from diffrecon.recon.methods import METHODS
from diffrecon.tasks.store import ArrayRef, ArtifactStore


class ReconOutput(BaseModel):
    """One method's result: the image in the store, run time, network evaluations per
    slice and the priors (diffusion methods), its QA scores; with K > 1 samples the std
    map beside the image (their mean) and the std's QA."""

    name: str
    method: str
    image: ArrayRef
    seconds: float
    nfe: int | None = None
    prior: str | None = None
    qa: dict[str, float | None] = {}  # PSNR / SSIM / NMSE / DC residual (/ std figures)
    std: ArrayRef | None = None
    samples: int | None = None


_LIMITS: dict = {}


def tag_limits_apply(task: Any, recheck_seconds: float = 60.0) -> Any:
    """The task as is when a concurrency limit exists for one of its tags (e.g. ``prefect
    concurrency-limit create gpu 1``), else without its tags: Prefect asks the server for
    slots for every tagged task run, a round trip that costs more than a small scan's
    reconstruction. Checked at most once a minute per server."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not task.tags:
        return task
    key = (frozenset(task.tags), PREFECT_API_URL.value())
    found, when = _LIMITS.get(key, (False, -float("inf")))
    if time.monotonic() - when > recheck_seconds:
        found = False
        try:
            with get_client(sync_client=True) as client:
                for tag in task.tags:
                    try:
                        client.read_global_concurrency_limit_by_name(f"tag:{tag}")
                        found = True
                    except ObjectNotFound:
                        pass
        except Exception:  # the server cannot say now: keep the tags (Prefect's own path)
            return task
        _LIMITS[key] = (found, time.monotonic())
    return task if found else task.with_options(tags=set())


@contextmanager
def labelled_errors(path: str, label: str | None) -> Iterator[None]:
    """Reader errors name the scan by its label when it is not the file stem (hashed
    names: the file name must not reach logs)."""
    from diffrecon.io.records import scan_name

    try:
        yield
    except InvalidScanError as exc:
        if label and label != scan_name(path):
            raise InvalidScanError(label, exc.problem) from None
        raise


def retry_transient(task: object, task_run: object, state: State) -> bool:
    """Retry I/O faults; never retry invalid input."""
    try:
        state.result()
    except InvalidScanError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


def resolve_device(spec: str) -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda[:n]'."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


_PRIORS: dict[tuple[str, str, bool], Prior] = {}


def cached_prior(name_or_path: str, device: torch.device, compile: bool = False) -> Prior:
    """Load a prior once per process, device and compile setting (workers reuse it across
    scans, and a compiled network its compilations)."""
    from diffrecon.recon.diffusion.registry import resolve_prior

    key = (name_or_path, str(device), compile)
    if key not in _PRIORS:
        _PRIORS[key] = resolve_prior(name_or_path, device=device, compile=compile)
    return _PRIORS[key]


def _progress_artifact(what: str) -> Callable[[int, int], None]:
    """A Prefect progress artifact and the callback (step, total) that updates it (and the
    operator's terminal line)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from diffrecon.common import console

    art = create_progress_artifact(0.0, description=what)
    last = [0.0]

    def progress(i: int, n: int) -> None:
        console.steps(what, i, n)
        pct = 100.0 * i / n
        if pct - last[0] >= 10 or i == n:
            update_progress_artifact(art, pct)
            last[0] = pct

    return progress


def _log_oom_retry(what: str) -> Callable[[int, int], None]:
    def warn(failed: int, size: int) -> None:
        try:
            get_run_logger().warning("%s: CUDA out of memory with %d slices, retrying with %d",
                                     what, failed, size)
        except Exception:  # outside a Prefect run
            pass
    return warn


def run_diffusion(method: str, make_op: Callable, y: torch.Tensor, ref: PriorRef,
                  dev: torch.device, what: str, slice_batch: int | None, modality: str,
                  image_shape: tuple[int, int], tv_lam: float | None = None,
                  pixel_mm: tuple[float, float] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, int, str]:
    """A diffusion method of the registry on ``y`` with the priors and sampler settings of
    ``ref`` (recon.diffusion.run does the work), with a progress artifact. ``make_op(a, b)``
    is the operator of slices a..b-1; ``tv_lam`` the modality's ADMM-TV weight (dds-tv's
    default); ``pixel_mm`` the scan's (row, column) pixel size, for grid 'pixel'. Returns
    (images, their std over ``ref.samples`` samples or None, network
    evaluations per slice and sample, the priors' names)."""
    from diffrecon.recon.diffusion.run import check_priors_fit, pixel_grid
    from diffrecon.recon.diffusion.run import run_diffusion as run

    priors = [cached_prior(name, dev, ref.compile) for name in ref.prior_names(method)]
    # the slice-wise samplers take any image size; the volume samplers the prior's own
    slice_wise = METHODS[method].sampler != "volume"
    check_priors_fit(priors, modality, image_shape, slice_wise)
    if ref.std_model is not None and ref.samples > 1:  # refused before minutes of sampling
        _check_std_model(ref, method, modality)
    grid = (priors[0].config.image_size,) * 2
    if ref.grid == "pixel" and slice_wise and modality == "mri":
        grid = pixel_grid(priors[0], tuple(image_shape), pixel_mm)
    mapped = ref.grid != "native" and slice_wise and tuple(image_shape) != grid
    if mapped and modality != "mri":
        raise ValueError(f"grid '{ref.grid}' is for MRI (complex images); CT runs at native "
                         "size (choose it with --ct-size)")
    if mapped:  # sample on the prior's grid of the same field of view, DC on the scan's
        from diffrecon.recon.operators import Composed, FourierResample, LinearOperator

        resample = FourierResample(grid, tuple(image_shape))
        scan_op = make_op

        def make_op(a: int, b: int) -> LinearOperator:
            return Composed(scan_op(a, b), resample)

    x, std, nfe = run(priors, ref.sampler_config(method, slice_batch, tv_lam), make_op, y,
                      slice_batch, _progress_artifact(what), _log_oom_retry(what), ref.samples)
    if mapped:  # back on the scan's grid, zero where no coil sees (as native DDS does)
        support = scan_op(0, y.shape[0]).support()
        x = resample.forward(x)
        # the std map resampled as an image (an approximation of the resampled samples'
        # std: close away from sharp edges, where the Fourier resampling may ring)
        std = None if std is None else resample.forward(std.to(x.dtype)).abs()
        if support is not None:
            x, std = x * support, None if std is None else std * support
    if std is not None and ref.std_model is not None:
        from diffrecon.recon.uncertainty import error_model_map, model_methods

        serves = model_methods(ref.std_model, method)  # its points for this method
        std = _std_map(lambda op, m, s: error_model_map(op, m, s, ref.std_model, serves), x,
                       std, scan_op if mapped else make_op, slice_batch, "the error model")
    if std is not None and ref.std_aliasing and modality == "mri":
        from diffrecon.recon.uncertainty import aliasing_map

        std = _std_map(lambda op, m, s: aliasing_map(op, m, s, ref.std_aliasing), x, std,
                       scan_op if mapped else make_op, slice_batch, "the aliasing term")
    std = None if std is None else std * ref.std_scale  # the calibration factor, if any
    return x, std, nfe, " + ".join(p.name for p in priors)


def _std_map(fn: Callable, x: torch.Tensor, std: torch.Tensor, make_op: Callable,
             slice_batch: int | None, what: str) -> torch.Tensor:
    """The std map ``fn(op, mean, spread)`` of the mean ``x`` and the spread ``std`` (the
    aliasing term or the error model of recon.uncertainty), in slice batches."""
    return in_slice_batches(lambda a, b: fn(make_op(a, b), x[a:b], std[a:b]), x.shape[0],
                            slice_batch, what)


def _check_std_model(ref: PriorRef, method: str, modality: str) -> None:
    """The error model fits this run: MRI (its features need the SENSE operator), the prior
    it was fitted for (fitted.prior_digest: its coefficients describe that prior's errors);
    a model with no points for this method, or fitted with other sampler settings (the
    fitted nfe, branch_steps, eta it records), is used with a warning (the points of the
    first method it has)."""
    from diffrecon.recon.diffusion.checkpoint import folder_digest
    from diffrecon.recon.diffusion.registry import resolve_prior_path
    from diffrecon.recon.uncertainty import model_methods

    if modality != "mri":
        raise ValueError("std_model: the error model is for MRI (its features need the "
                         "SENSE operator); calibrate a CT std map with std_scale")
    fitted = ref.std_model.get("fitted", {})
    want, have = fitted.get("prior_digest"), folder_digest(resolve_prior_path(ref.prior))
    if want is not None and want != have:
        raise ValueError(f"std_model: fitted.prior_digest {want[:12]}... is not the digest of "
                         f"prior {ref.prior} ({have[:12]}...): the model was fitted for "
                         "another prior")
    fitted_for = model_methods(ref.std_model, method)
    if fitted_for != method:
        _warn(f"std_model: fitted for {fitted_for}, used for {method} (its map may "
              "rank and cover this method's error less well; fit one with "
              "benchmarks/uncertainty.py --method)")
    run = {"nfe": ref.nfe, "branch_steps": ref.branch_steps,
           "eta": sampler_eta(ref.eta, ref.samples)}
    differs = [f"{k} {run[k]:g} (fitted {fitted[k]:g})" for k in run
               if fitted.get(k) is not None and fitted[k] != run[k]]
    if differs:
        _warn(f"std_model: fitted to samples of other sampler settings: {', '.join(differs)} "
              "(the spread, and so the map's calibration, depends on them)")


def _warn(msg: str) -> None:
    try:
        get_run_logger().warning(msg)
    except Exception:  # outside a Prefect run
        import warnings

        warnings.warn(msg, stacklevel=3)


def std_output(store: ArtifactStore, image: Any, std: torch.Tensor | None, ref: PriorRef,
               data_range: float | None = None) -> tuple[ArrayRef | None, dict]:
    """A sampled run's std map in the store and its QA (recon.uncertainty.std_qa of the
    image as scored: MRI magnitudes, CT in the CT window with ``data_range`` 1); (None, {})
    for one sample."""
    if std is None:
        return None, {}
    from diffrecon.recon.uncertainty import std_qa

    std_np = std.cpu().numpy().astype("float32")
    return store.put(std_np), std_qa(image, std_np, ref.std_threshold, data_range)


def diffusion_settings(ref: PriorRef, method: str) -> dict:
    """The cache-relevant settings of a diffusion method: sampler settings, priors' digests."""
    from diffrecon.recon.diffusion.checkpoint import folder_digest
    from diffrecon.recon.diffusion.registry import resolve_prior_path

    names = [ref.prior] + ([ref.aux_prior] if METHODS[method].aux_prior and ref.aux_prior
                           else [])
    dump = ref.model_dump()
    if ref.samples == 1:  # one sample: the std settings do nothing (and old keys stay valid)
        for k in ("samples", "std_scale", "std_threshold", "std_aliasing", "branch_steps",
                  "std_model"):
            dump.pop(k)
    else:  # keys made before the aliasing term, branching and the error model stay valid
        if not ref.std_aliasing:
            dump.pop("std_aliasing")
        if ref.std_model is None:
            dump.pop("std_model")
        if not ref.branch_steps:
            dump.pop("branch_steps")
    out = {"diffusion": dump,
           "prior_digest": folder_digest(resolve_prior_path(names[0]))}
    if len(names) > 1:
        out["aux_digest"] = folder_digest(resolve_prior_path(names[1]))
    return out


def in_slice_batches(fn: Callable[[int, int], torch.Tensor], n: int, batch: int | None,
                     what: str = "") -> torch.Tensor:
    """recon.batching.in_slice_batches with the out-of-memory retries logged."""
    from diffrecon.recon.batching import in_slice_batches as batches

    return batches(fn, n, batch, _log_oom_retry(what))
