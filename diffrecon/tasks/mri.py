"""Prefect tasks of the MRI path. Tasks exchange small references, never arrays."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from prefect import get_run_logger, task
from pydantic import BaseModel

from diffrecon.config import (
    NEEDS_PRIOR,
    PERPENDICULAR_METHODS,
    VOLUME_METHODS,
    Z_TV_METHODS,
    MaskSpec,
    ReconConfig,
)
from diffrecon.io.errors import InvalidScanError
from diffrecon.tasks.caching import content_key, scan_run_name
from diffrecon.tasks.store import ArrayRef, ArtifactStore


class _KSpaceRefs(BaseModel):
    """k-space, mask, optional reference and geometry of a scan, as store references."""

    name: str
    kspace: ArrayRef
    mask: ArrayRef
    reference: ArrayRef | None = None
    reference_kind: str | None = None
    affine: list[list[float]]


class ScanRef(_KSpaceRefs):
    """A loaded, validated scan: what later tasks need, with arrays in the store."""

    source: str
    fully_sampled: bool
    header: str | None = None  # the ISMRMRD XML header, carried into HDF5 exports
    source_attrs: dict[str, str] = {}  # study/patient DICOM attributes, for DICOM exports


class Measurement(_KSpaceRefs):
    """The (possibly retrospectively undersampled) data a method reconstructs from."""

    setting: str


class ReconOutput(BaseModel):
    name: str
    method: str
    image: ArrayRef
    seconds: float
    nfe: int | None = None
    prior: str | None = None


@contextmanager
def labelled_errors(path: str, label: str | None):
    """Reader errors name the scan by its label when it is not the file stem (hashed
    names: the file name must not reach logs)."""
    from diffrecon.io.records import scan_name

    try:
        yield
    except InvalidScanError as exc:
        if label and label != scan_name(path):
            raise InvalidScanError(label, exc.problem) from None
        raise


def retry_transient(task, task_run, state) -> bool:
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
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


_PRIORS: dict = {}


def cached_prior(name_or_path: str, device: torch.device, compile: bool = False):
    """Load a prior once per process, device and compile setting (workers reuse it across
    scans, and a compiled network its compilations)."""
    from diffrecon.recon.diffusion.registry import resolve_prior

    key = (name_or_path, str(device), compile)
    if key not in _PRIORS:
        _PRIORS[key] = resolve_prior(name_or_path, device=device, compile=compile)
    return _PRIORS[key]


def _progress_artifact(what: str):
    """A Prefect progress artifact and the callback (step, total) that updates it."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    art = create_progress_artifact(0.0, description=what)
    last = [0.0]

    def progress(i: int, n: int) -> None:
        pct = 100.0 * i / n
        if pct - last[0] >= 10 or i == n:
            update_progress_artifact(art, pct)
            last[0] = pct

    return progress


def run_diffusion(method: str, make_op, y: torch.Tensor, ref, dev, what: str,
                  slice_batch: int | None, modality: str, image_shape: tuple[int, int]):
    """DDS/DPS (slices independent, in slice batches with CUDA OOM halving) or a volume
    method (dds-3d-tv, dds-perpendicular(-tv): all slices together, the network in batches of
    ``slice_batch``), with a progress artifact. ``make_op(a, b)`` is the operator of slices
    a..b-1. Returns (image, network evaluations per slice, prior name)."""
    from diffrecon.recon.diffusion.dds import (
        DDS3DConfig,
        DDSConfig,
        DPSConfig,
        dds_volume_sample,
        sample,
    )

    priors = [cached_prior(ref.prior, dev, ref.compile)]
    if method in PERPENDICULAR_METHODS:
        if not ref.aux_prior:
            raise ValueError(f"{method} needs a second prior (--prior-aux)")
        priors.append(cached_prior(ref.aux_prior, dev, ref.compile))
    h, w = image_shape
    for p in priors:
        if p.config.modality != modality or p.config.image_size != h \
                or p.config.image_size != w:
            raise ValueError(f"prior {p.name} ({p.config.modality}, {p.config.image_size} x "
                             f"{p.config.image_size}) does not fit this scan "
                             f"({modality.upper()}, {h} x {w})")
    before = sum(p.nfe for p in priors)
    progress = _progress_artifact(what)
    if method in VOLUME_METHODS:
        cfg = DDS3DConfig(nfe=ref.nfe, eta=ref.eta, cg_iters=ref.cg_iters, gamma=ref.gamma,
                          seed=ref.seed, lam=ref.tv_lam,
                          rho=ref.tv_rho if method in Z_TV_METHODS else 0.0,
                          slice_batch=slice_batch or 32, pattern=ref.pattern,
                          real=ref.real_object)
        x = dds_volume_sample(priors, make_op(0, y.shape[0]), y, cfg, progress)
    else:
        if method == "dds":
            cfg = DDSConfig(nfe=ref.nfe, eta=ref.eta, cg_iters=ref.cg_iters, gamma=ref.gamma,
                            seed=ref.seed)
        else:
            cfg = DPSConfig(steps=ref.dps_steps, step_size=ref.dps_step_size, seed=ref.seed)
        x = in_slice_batches(lambda a, b: sample(priors[0], make_op(a, b), y[a:b], cfg,
                                                 progress),
                             y.shape[0], slice_batch, what)
    nfe = (sum(p.nfe for p in priors) - before) // max(1, int(x.shape[0]))
    name = priors[0].name + (f" + {priors[1].name}" if len(priors) > 1 else "")
    return x, nfe, name


def diffusion_settings(ref, method: str) -> dict:
    """The cache-relevant settings of a diffusion method: sampler settings, priors' digests."""
    from diffrecon.recon.diffusion.checkpoint import folder_digest
    from diffrecon.recon.diffusion.registry import resolve_prior_path

    out = {"diffusion": ref.model_dump(),
           "prior_digest": folder_digest(resolve_prior_path(ref.prior))}
    if method in PERPENDICULAR_METHODS and ref.aux_prior:
        out["aux_digest"] = folder_digest(resolve_prior_path(ref.aux_prior))
    return out


def in_slice_batches(fn, n: int, batch: int | None, what: str = "") -> torch.Tensor:
    """``fn(a, b)`` over slices [a, b) in batches of ``batch`` (None: all at once), joined.

    On CUDA out-of-memory the cache is emptied and the failed batch retried with half as
    many slices (down to one); finished batches are kept. Used for every 2D method, whose
    slices are independent.
    """
    size = batch or n
    parts, a = [], 0
    while a < n:
        b = min(n, a + size)
        try:
            parts.append(fn(a, b))
            a = b
        except torch.cuda.OutOfMemoryError:
            if b - a == 1:
                raise
            size = max(1, (b - a) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                get_run_logger().warning("%s: CUDA out of memory with %d slices, retrying "
                                         "with %d", what, b - a, size)
            except Exception:  # outside a Prefect run
                pass
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _tensor(store: ArtifactStore, ref: ArrayRef, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(store.get(ref)).to(device)


@task(cache_policy=content_key("load", "path", "store_root"), retries=2,
      retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient,
      task_run_name=scan_run_name("load"))
def load_scan(path: str, store_root: str, label: str | None = None) -> ScanRef:
    """Read and validate a raw MRI file; the reader's InvalidScanError fails this task."""
    from diffrecon.io import load_scan as read
    from diffrecon.io.dicom import source_attributes
    from diffrecon.io.ismrmrd_header import acquisition_header

    with labelled_errors(path, label):
        acq = read(path)
    store = ArtifactStore(store_root)
    ref = store.put(acq.reference) if acq.reference is not None else None
    get_run_logger().info(
        "loaded %s: %d slices, %d coils, %dx%d, %.0f%% of lines sampled",
        label or acq.name, *acq.kspace.shape, 100 * acq.mask.any(axis=1).mean(),
    )
    return ScanRef(
        name=acq.name,
        source=str(path),
        kspace=store.put(acq.kspace),
        mask=store.put(acq.mask),
        reference=ref,
        reference_kind=acq.reference_kind,
        affine=acq.affine.tolist(),
        fully_sampled=acq.fully_sampled,
        header=acquisition_header(acq),
        source_attrs=source_attributes(acq.metadata),
    )


def mask_seed(name: str, spec: MaskSpec) -> int:
    from diffrecon.recon.masks import benchmark_seed

    if spec.seed is not None:
        return spec.seed
    accel = int(spec.accel) if float(spec.accel).is_integer() else spec.accel
    return benchmark_seed(name, 0, f"{accel}/{spec.kind}")


@task(cache_policy=content_key("prepare", "scan", "spec", "n_virtual"), retries=1,
      retry_condition_fn=retry_transient, task_run_name="prepare-{scan.name}")
def prepare_measurement(scan: ScanRef, spec: MaskSpec, store_root: str, device: str,
                        n_virtual: int | None = None) -> Measurement:
    """Undersample a fully sampled scan retrospectively and make its reference.

    The reference is the file's stored reconstruction where present, otherwise the SENSE
    combination of the fully sampled data with ESPIRiT maps (calibration 24, crop 0.8),
    as benchmark B2 defines it. Undersampled input is used as it is. ``n_virtual``
    compresses the coils (SVD) after the reference is made.
    """
    from diffrecon.recon import classical, masks
    from diffrecon.recon.coils import compress_coils

    store = ArtifactStore(store_root)
    dev = resolve_device(device)
    k = _tensor(store, scan.kspace, dev)
    reference = scan.reference
    reference_kind = scan.reference_kind
    cc = f", {n_virtual} virtual coils" if n_virtual else ""
    if not scan.fully_sampled:
        lines = int(store.get(scan.mask).any(axis=1).sum())
        if n_virtual:
            k = compress_coils(k, n_virtual)
        return Measurement(
            name=scan.name, kspace=store.put(k.cpu().numpy()) if n_virtual else scan.kspace,
            mask=scan.mask, reference=reference,
            reference_kind=reference_kind, affine=scan.affine,
            setting=f"as acquired ({lines}/{k.shape[-2]} lines){cc}",
        )
    if reference is None:
        reference = store.put(classical.sense_reference(k).cpu().numpy().astype(np.float32))
        reference_kind = "sense-espirit-full"
    mask = masks.make_mask(spec.kind, tuple(k.shape[-2:]), spec.accel, mask_seed(scan.name, spec))
    ku = k * mask.to(dev)
    if n_virtual:
        ku = compress_coils(ku, n_virtual)
    accel = f"{spec.accel:g}"
    return Measurement(
        name=scan.name,
        kspace=store.put(ku.cpu().numpy()),
        mask=store.put(mask.numpy()),
        reference=reference,
        reference_kind=reference_kind,
        affine=scan.affine,
        setting=f"R={accel} {spec.kind}{cc}",
    )


@task(cache_policy=content_key("coil-maps", "meas", "method"), retries=1,
      retry_condition_fn=retry_transient, task_run_name="coil-maps-{meas.name}")
def estimate_coil_maps(meas: Measurement, store_root: str, method: str, device: str) -> ArrayRef:
    """ESPIRiT maps from the sampled data's fully sampled centre."""
    from diffrecon.recon.coils import estimate_coil_maps as espirit

    store = ArtifactStore(store_root)
    dev = resolve_device(device)
    maps = espirit(_tensor(store, meas.kspace, dev), _tensor(store, meas.mask, dev), method=method)
    return store.put(maps.cpu().numpy())


def method_settings(parameters: dict) -> dict:
    """What a method's result depends on besides its inputs (and the prior's digest)."""
    method, config = parameters["method"], parameters["config"]
    out: dict = {"device": resolve_device(config.device).type}
    if method == "cg-sense":
        out.update(lam=config.lam, cg_iters=config.cg_iters)
    elif method == "l1-wavelet":
        out.update(lam=config.l1_lam)
    elif method == "admm-tv":
        out.update(lam=config.tv_lam)
    elif method in NEEDS_PRIOR:
        out.update(diffusion_settings(config.diffusion, method))
    return out


@task(cache_policy=content_key("reconstruct", "meas", "maps", "method", derive=method_settings),
      retries=1, retry_condition_fn=retry_transient, task_run_name="{method}-{meas.name}",
      tags=["gpu"])
def reconstruct(
    meas: Measurement, maps: ArrayRef | None, method: str, config: ReconConfig
) -> ReconOutput:
    """Run one reconstruction method; the image goes to the store."""
    from diffrecon.recon import classical

    store = ArtifactStore(config.store_root)
    dev = resolve_device(config.device)
    k = _tensor(store, meas.kspace, dev)
    mask = _tensor(store, meas.mask, dev)
    if method != "zero-filled" and maps is None:
        raise ValueError(f"{method} needs coil maps")
    s = _tensor(store, maps, dev) if maps is not None else None
    t0 = time.perf_counter()
    nfe = prior_name = None
    if method in NEEDS_PRIOR:
        from diffrecon.recon.operators import Sense

        x, nfe, prior_name = run_diffusion(
            method, lambda a, b: Sense(s[a:b], mask), k, config.diffusion, dev,
            f"{method} on {meas.name}", config.slice_batch, "mri", tuple(k.shape[-2:]))
    else:
        def run(a: int, b: int) -> torch.Tensor:  # slices a..b-1: independent in 2D
            kb, sb = k[a:b], (s[a:b] if s is not None else None)
            if method == "zero-filled":
                return classical.zero_filled(kb, mask)
            if method == "cg-sense":
                return classical.cg_sense(kb, sb, mask, config.lam, config.cg_iters)
            if method == "l1-wavelet":
                return classical.l1_wavelet_sense(kb, sb, mask, config.l1_lam)
            if method == "admm-tv":
                return classical.tv_sense(kb, sb, mask, config.tv_lam)
            raise ValueError(f"unknown method {method!r}")

        x = in_slice_batches(run, k.shape[0], config.slice_batch, f"{method} on {meas.name}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return ReconOutput(name=meas.name, method=method, image=store.put(x.cpu().numpy()),
                       seconds=seconds, nfe=nfe, prior=prior_name)


@task(cache_policy=content_key("qa", "meas", "out", "maps"),
      task_run_name="qa-{out.method}-{meas.name}")
def quality(meas: Measurement, out: ReconOutput, maps: ArrayRef | None, store_root: str) -> dict:
    """PSNR/SSIM/NMSE against the reference (None without one) and the DC residual."""
    from diffrecon.recon import metrics
    from diffrecon.recon.operators import Sense

    store = ArtifactStore(store_root)
    x = store.get(out.image)
    qa: dict = {"psnr": None, "ssim": None, "nmse": None, "dc_residual": None}
    if meas.reference is not None:
        ref = store.get(meas.reference)
        qa.update(psnr=metrics.psnr(x, ref), ssim=metrics.ssim(x, ref), nmse=metrics.nmse(x, ref))
    if maps is not None and np.iscomplexobj(x):
        op = Sense(torch.from_numpy(store.get(maps)), torch.from_numpy(store.get(meas.mask)))
        qa["dc_residual"] = metrics.dc_residual(
            op, torch.from_numpy(x), torch.from_numpy(store.get(meas.kspace))
        )
    return qa
