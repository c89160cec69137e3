"""Prefect tasks of the CT path: volume in, simulated sinogram, FBP / CG-LS / ADMM-TV, NIfTI
in HU out. Tasks exchange small references; arrays live in the artifact store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from prefect import task
from pydantic import BaseModel

from diffrecon.common.seeds import benchmark_rng
from diffrecon.common.units import hu_to_unit
from diffrecon.config import CTSpec, PriorRef
from diffrecon.recon.methods import METHODS
from diffrecon.tasks.caching import content_key, scan_run_name
from diffrecon.tasks.common import (
    ReconOutput,
    labelled_errors,
    resolve_device,
    retry_transient,
    run_diffusion,
    std_output,
)
from diffrecon.tasks.store import ArrayRef, ArtifactStore

if TYPE_CHECKING:
    from diffrecon.recon.ct import CTGeometry


class CTMeasurement(BaseModel):
    name: str
    sinogram: ArrayRef
    reference: ArrayRef | None
    affine: list[list[float]]
    angles: list[float]
    n_det: int
    image_shape: tuple[int, int]
    setting: str
    source_attrs: dict[str, str] = {}  # study/patient DICOM attributes, for DICOM exports


def geometry_of(meas: CTMeasurement) -> CTGeometry:
    from diffrecon.recon.ct import CTGeometry

    return CTGeometry.parallel(np.asarray(meas.angles), meas.n_det, 1.0, meas.image_shape)


@task(cache_policy=content_key("ct-prepare", "path", "spec", "store_root", "deidentify"),
      retries=1, retry_condition_fn=retry_transient, task_run_name=scan_run_name("ct-prepare"))
def prepare_ct(path: str, spec: CTSpec, store_root: str, label: str | None = None,
               deidentify: bool = False) -> CTMeasurement:
    """Read a CT volume (NIfTI or DICOM folder) and simulate its parallel-beam sinogram
    (CT units, unit pixels; the smallest odd detector count covering the diagonal). With
    ``deidentify`` the stored result holds de-identified study attributes only."""
    from diffrecon.common.geometry import (
        pad_or_crop,
        scale_affine,
        shift_affine_for_pad_or_crop,
    )
    from diffrecon.io.dicom import deidentified_source, read_ct_volume, source_attributes
    from diffrecon.recon.ct import CTGeometry, CTProjector

    with labelled_errors(path, label):
        vol = read_ct_volume(path, spec.series_uid)
    x = hu_to_unit(vol.hu).astype(np.float64)
    affine = np.asarray(vol.affine, np.float64).copy()
    if spec.size is not None and max(x.shape[1:]) > spec.size:
        # a clinical slice (e.g. 512 x 512): its whole field of view resampled so the longer
        # side is size (area-weighted, antialiased), then padded with air as below
        h0, w0 = x.shape[1:]
        f = spec.size / max(h0, w0)
        new = (max(1, round(h0 * f)), max(1, round(w0 * f)))
        affine = scale_affine(affine, (h0, w0), new)
        x = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=new,
                                            mode="bilinear", antialias=True,
                                            align_corners=False)[0].numpy()
    if spec.size is not None:  # B3: smaller slices padded with air to size x size
        affine = shift_affine_for_pad_or_crop(affine, x.shape[1:], spec.size)
        x = pad_or_crop(x, spec.size, 0.0)
    h, w = x.shape[-2:]
    n_det = int(np.ceil(np.hypot(h, w))) | 1
    if spec.limited_angle:
        angles = np.deg2rad(np.arange(int(spec.limited_angle)))
    else:
        angles = np.linspace(0, np.pi, spec.views, endpoint=False)
    op = CTProjector(CTGeometry.parallel(angles, n_det, 1.0, (h, w)))
    sino = op.forward(torch.from_numpy(x))
    rng = benchmark_rng(vol.name, None, "noise")
    sigma = spec.noise * float(sino.abs().max())
    sino = sino + torch.from_numpy(sigma * rng.standard_normal(tuple(sino.shape)))
    store = ArtifactStore(store_root)
    name = (label or vol.name) if deidentify else vol.name
    return CTMeasurement(name=name, sinogram=store.put(sino.numpy().astype(np.float32)),
                         reference=store.put(x.astype(np.float32)), affine=affine.tolist(),
                         angles=angles.tolist(), n_det=n_det, image_shape=(h, w),
                         setting=spec.setting(),
                         source_attrs=(deidentified_source if deidentify else dict)(
                             source_attributes(vol.metadata)))


def _prior_settings(parameters: dict) -> dict:
    """What a diffusion method's result depends on besides the measurement: the sampler
    settings and the priors' digests."""
    from diffrecon.tasks.common import diffusion_settings

    if not METHODS[parameters["method"]].needs_prior:
        return {}
    return diffusion_settings(parameters["diffusion"], parameters["method"])


@task(cache_policy=content_key("ct-reconstruct", "meas", "method", "spec",
                               derive=_prior_settings),
      retries=1, retry_condition_fn=retry_transient, task_run_name="{method}-{meas.name}",
      tags=["gpu"])
def reconstruct_ct(meas: CTMeasurement, method: str, spec: CTSpec, store_root: str,
                   device: str, diffusion: PriorRef | None = None,
                   slice_batch: int | None = None) -> ReconOutput:
    """One CT method on the measurement: the image in CT units, seconds, network
    evaluations per slice (diffusion methods) and its QA (:func:`quality_ct`)."""
    from diffrecon.recon.ct import CTProjector

    store = ArtifactStore(store_root)
    dev = resolve_device(device)
    y = torch.from_numpy(store.get(meas.sinogram)).to(dev, torch.float64)
    op = CTProjector(geometry_of(meas))
    t0 = time.perf_counter()
    nfe = prior = std = None
    m = METHODS[method]
    if m.needs_prior:
        x, std, nfe, prior = run_diffusion(method, lambda a, b: op, y.float(),
                                      diffusion or PriorRef(), dev, f"{method} on {meas.name}",
                                      slice_batch, "ct", tuple(meas.image_shape),
                                      tv_lam=spec.tv_lam)
    elif m.ct is not None:
        x = m.ct(y, op, spec)
    else:
        raise ValueError(f"unknown CT method {method!r}")
    seconds = time.perf_counter() - t0
    image = store.put(x.cpu().numpy().astype(np.float32))
    from diffrecon.recon.metrics import ct_window

    ref = diffusion or PriorRef()
    # in CT units: the QA relative to their range 1 (-1000..1000 HU)
    std_ref, std_scores = std_output(store, ct_window(x), std, ref, data_range=1.0)
    return ReconOutput(name=meas.name, method=method, image=image, seconds=seconds, nfe=nfe,
                       prior=prior, qa={**quality_ct(meas, image, store_root), **std_scores},
                       std=std_ref, samples=ref.samples if m.needs_prior else None)


def quality_ct(meas: CTMeasurement, image: ArrayRef, store_root: str) -> dict:
    """PSNR/SSIM with data range 1 in CT units (BENCHMARKS.md), NMSE, DC residual. The
    image is scored in the CT window as BENCHMARKS.md defines the units: clipped to [0, 1]
    (-1000 to 1000 HU); the DC residual is of the image as reconstructed."""
    from diffrecon.recon import metrics
    from diffrecon.recon.ct import CTProjector

    store = ArtifactStore(store_root)
    x = store.get(image)
    ref = store.get(meas.reference)
    y = torch.from_numpy(store.get(meas.sinogram)).double()
    dc = metrics.dc_residual(CTProjector(geometry_of(meas)), torch.from_numpy(x).double(), y)
    xw = metrics.ct_window(x)
    return {"psnr": metrics.psnr(xw, ref, 1.0), "ssim": metrics.ssim(xw, ref, 1.0),
            "nmse": metrics.nmse(xw, ref), "dc_residual": dc}
