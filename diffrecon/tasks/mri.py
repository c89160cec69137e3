"""Prefect tasks of the MRI path. Tasks exchange small references, never arrays."""

from __future__ import annotations

import time

import numpy as np
import torch
from prefect import get_run_logger, task
from pydantic import BaseModel

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.recon.methods import METHODS
from diffrecon.tasks.caching import content_key, scan_run_name
from diffrecon.tasks.common import (
    ReconOutput,
    diffusion_settings,
    in_slice_batches,
    labelled_errors,
    resolve_device,
    retry_transient,
    run_diffusion,
    std_output,
)
from diffrecon.tasks.store import ArrayRef, ArtifactStore


class _KSpaceRefs(BaseModel):
    """k-space, mask, optional reference and geometry of a scan, as store references."""

    name: str
    kspace: ArrayRef
    mask: ArrayRef
    reference: ArrayRef | None = None
    reference_kind: str | None = None
    affine: list[list[float]]
    pixel_mm: tuple[float, float] | None = None  # (row, col) from the header; None: unknown


class ScanRef(_KSpaceRefs):
    """A loaded, validated scan: what later tasks need, with arrays in the store."""

    source: str
    fully_sampled: bool
    header: str | None = None  # the ISMRMRD XML header, carried into HDF5 exports
    source_attrs: dict[str, str] = {}  # study/patient DICOM attributes, for DICOM exports


class Measurement(_KSpaceRefs):
    """The (possibly retrospectively undersampled) data a method reconstructs from."""

    setting: str


def _tensor(store: ArtifactStore, ref: ArrayRef, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(store.get(ref)).to(device)


def load_scan(path: str, store_root: str, label: str | None = None,
              deidentify: bool = False) -> ScanRef:
    """Read and validate a raw MRI file; the reader's InvalidScanError fails this task.
    With ``deidentify`` nothing identifying is kept in the result (it is persisted in the
    artifact store): de-identified study attributes, the header without subject and study,
    the scan's label instead of its path."""
    from diffrecon.io import load_scan as read
    from diffrecon.io.dicom import deidentified_source, source_attributes
    from diffrecon.io.ismrmrd_header import acquisition_header, strip_identifiers

    with labelled_errors(path, label):
        acq = read(path)
    store = ArtifactStore(store_root)
    ref = store.put(acq.reference) if acq.reference is not None else None
    get_run_logger().info(
        "loaded %s: %d slices, %d coils, %dx%d, %.0f%% of lines sampled",
        label or acq.name, *acq.kspace.shape, 100 * acq.mask.any(axis=1).mean(),
    )
    header, attrs = acquisition_header(acq), source_attributes(acq.metadata)
    if deidentify:
        header, attrs = strip_identifiers(header), deidentified_source(attrs)
    return ScanRef(
        name=label or acq.name,
        source=(label or acq.name) if deidentify else str(path),
        kspace=store.put(acq.kspace),
        mask=store.put(acq.mask),
        reference=ref,
        reference_kind=acq.reference_kind,
        affine=acq.affine.tolist(),
        pixel_mm=acq.pixel_mm,
        fully_sampled=acq.fully_sampled,
        header=header,
        source_attrs=attrs,
    )


def _slices(mask: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Slices a..b-1 of per-slice masks (S, 1, ky, kx); a scan's one mask (ky, kx) as it is."""
    return mask[a:b] if mask.ndim == 4 else mask


def mask_seed(name: str, spec: MaskSpec, z: int = 0) -> int:
    """The seed of slice ``z``'s mask: BENCHMARKS.md's crc32 of scan/slice/R/kind (one mask
    per slice, as the benchmarks draw them), or the user's seed for every slice."""
    from diffrecon.common.seeds import benchmark_seed

    if spec.seed is not None:
        return spec.seed
    accel = int(spec.accel) if float(spec.accel).is_integer() else spec.accel
    return benchmark_seed(name, z, f"{accel}/{spec.kind}")


class PreparedScan(BaseModel):
    """What the prepare task hands on: the measurement, coil maps (or why there are none)
    and what exports inherit."""

    meas: Measurement
    maps: ArrayRef | None = None
    maps_seconds: float = 0.0
    maps_error: str | None = None
    source_attrs: dict[str, str] = {}
    header: str | None = None


@task(cache_policy=content_key("prepare", "path", "store_root", "label", "deidentify", "spec",
                               "n_virtual", "coil_method", "calib"),
      retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient,
      task_run_name=scan_run_name("prepare"))
def prepare_scan(path: str, store_root: str, label: str, deidentify: bool, spec: MaskSpec,
                 device: str, n_virtual: int | None = None, coil_method: str | None = None,
                 calib: tuple[int, int] | None = None) -> PreparedScan:
    """Load and validate the raw file (:func:`load_scan`), make the measurement
    (:func:`prepare_measurement`) and, with a ``coil_method``, its coil maps
    (:func:`coil_maps`): one task, one cache entry per file content, label, mask and map
    settings. Maps that cannot be estimated (no usable calibration) are not an error of
    the scan: ``maps_error`` says why, and only the methods that need maps fail."""
    scan = load_scan(path, store_root, label, deidentify)
    meas = prepare_measurement(scan, spec, store_root, device, n_virtual)
    out = PreparedScan(meas=meas, source_attrs=scan.source_attrs, header=scan.header)
    if coil_method is not None:
        t0 = time.perf_counter()
        try:
            out.maps = coil_maps(meas, store_root, coil_method, device, calib)
        except ValueError as exc:
            out.maps_error = f"coil maps: {exc}"
        out.maps_seconds = time.perf_counter() - t0
    return out


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
        sampled = store.get(scan.mask)
        # the true sampled fraction; 1D when whole readout lines are sampled, else 2D
        kind = "1D" if (sampled.all(axis=1) == sampled.any(axis=1)).all() else "2D"
        if n_virtual:
            k = compress_coils(k, n_virtual)
        return Measurement(
            name=scan.name, kspace=store.put(k.cpu().numpy()) if n_virtual else scan.kspace,
            mask=scan.mask, reference=reference,
            reference_kind=reference_kind, affine=scan.affine, pixel_mm=scan.pixel_mm,
            setting=f"as acquired, {100 * sampled.mean():.1f} % of k-space, {kind}{cc}",
        )
    if reference is None:
        reference = store.put(classical.sense_reference(k).cpu().numpy().astype(np.float32))
        reference_kind = "sense-espirit-full"
    # one mask per slice (S, 1, ky, kx), broadcast over the coils
    mask = torch.stack([masks.make_mask(spec.kind, tuple(k.shape[-2:]), spec.accel,
                                        mask_seed(scan.name, spec, z))
                        for z in range(k.shape[0])])[:, None]
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
        pixel_mm=scan.pixel_mm,
        setting=f"R={accel} {spec.kind}{cc}",
    )


def coil_maps(meas: Measurement, store_root: str, method: str, device: str,
              calib: tuple[int, int] | None = None) -> ArrayRef:
    """ESPIRiT maps from the sampled data's fully sampled centre (or the ``calib`` lines x
    columns of it)."""
    from diffrecon.recon.coils import estimate_coil_maps as espirit

    store = ArtifactStore(store_root)
    dev = resolve_device(device)
    maps = espirit(_tensor(store, meas.kspace, dev), _tensor(store, meas.mask, dev), calib=calib,
                   method=method)
    return store.put(maps.cpu().numpy())


def method_settings(parameters: dict) -> dict:
    """What a method's result depends on besides its inputs: the settings the registry
    names, and a diffusion method's sampler settings and priors' digests."""
    method, config = parameters["method"], parameters["config"]
    m = METHODS[method]
    out: dict = {"device": resolve_device(config.device).type}
    if m.needs_prior:
        out.update(diffusion_settings(config.diffusion, method))
    out.update(m.settings_of("mri", config))
    return out


@task(cache_policy=content_key("reconstruct", "meas", "maps", "method", derive=method_settings),
      retries=1, retry_condition_fn=retry_transient, task_run_name="{method}-{meas.name}",
      tags=["gpu"])
def reconstruct(
    meas: Measurement, maps: ArrayRef | None, method: str, config: ReconConfig
) -> ReconOutput:
    """Run one reconstruction method; the image goes to the store, its QA (:func:`quality`)
    with it, so a cached reconstruction brings its scores."""
    store = ArtifactStore(config.store_root)
    dev = resolve_device(config.device)
    k = _tensor(store, meas.kspace, dev)
    mask = _tensor(store, meas.mask, dev)
    m = METHODS[method]
    if m.coil_maps and maps is None:
        raise ValueError(f"{method} needs coil maps")
    s = _tensor(store, maps, dev) if maps is not None else None
    t0 = time.perf_counter()
    nfe = prior_name = std = None
    what = f"{method} on {meas.name}"
    if m.needs_prior:
        from diffrecon.recon.operators import Sense

        x, std, nfe, prior_name = run_diffusion(
            method, lambda a, b: Sense(s[a:b], _slices(mask, a, b)), k, config.diffusion,
            dev, what,
            config.slice_batch, "mri", tuple(k.shape[-2:]), tv_lam=config.tv_lam,
            pixel_mm=meas.pixel_mm)
    else:  # slices a..b-1: independent in 2D
        x = in_slice_batches(lambda a, b: m.mri(k[a:b], s[a:b] if s is not None else None,
                                                _slices(mask, a, b), config),
                             k.shape[0], config.slice_batch, what)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    image = store.put(x.cpu().numpy())
    std_ref, std_scores = std_output(store, x, std, config.diffusion)
    qa = {**quality(meas, image, maps, config.store_root), **std_scores}
    return ReconOutput(name=meas.name, method=method, image=image, seconds=seconds, nfe=nfe,
                       prior=prior_name, qa=qa, std=std_ref,
                       samples=config.diffusion.samples if m.needs_prior else None)


def quality(meas: Measurement, image: ArrayRef, maps: ArrayRef | None, store_root: str
            ) -> dict:
    """PSNR/SSIM/NMSE and invented structure (metrics.invented_px) against the reference
    (None without one) and the DC residual."""
    from diffrecon.recon import metrics
    from diffrecon.recon.operators import Sense

    store = ArtifactStore(store_root)
    x = store.get(image)
    qa: dict = {"psnr": None, "ssim": None, "nmse": None, "dc_residual": None,
                "invented_px": None}
    if meas.reference is not None:
        ref = store.get(meas.reference)
        qa.update(psnr=metrics.psnr(x, ref), ssim=metrics.ssim(x, ref), nmse=metrics.nmse(x, ref),
                  invented_px=metrics.invented_px(x, ref))
    if maps is not None and np.iscomplexobj(x):
        op = Sense(torch.from_numpy(store.get(maps)), torch.from_numpy(store.get(meas.mask)))
        qa["dc_residual"] = metrics.dc_residual(
            op, torch.from_numpy(x), torch.from_numpy(store.get(meas.kspace))
        )
    return qa
