"""Every reconstruction method by name: what it needs, for which modalities, and how it runs.

One registry for the whole project: the CLI's choices and help, the config's method sets,
the task dispatch (MRI and CT) and the cache keys read from here. A classical method is its
function plus one entry; a diffusion method names its sampler family (``dds``, ``dps`` or
``volume``), whose settings model lives beside the sampler (DDSConfig, DPSConfig,
DDS3DConfig) and is built from the flow's PriorRef.

Settings objects are duck-typed: an MRI method reads the fields it names in
``mri_settings`` from the batch's ReconConfig, a CT method those in ``ct_settings`` from the
CTSpec. Those fields (and for diffusion methods the sampler settings and the priors'
digests) are what its cached result depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions themselves: the registry is light
    import torch

    Images = torch.Tensor

MRIFunction = Callable[..., "Images"]  # (kspace, maps or None, mask, settings) -> images
CTFunction = Callable[..., "Images"]  # (sinogram, projector, settings) -> images


@dataclass(frozen=True)
class Method:
    """A reconstruction method: name, one-line summary, modalities and needs."""

    name: str
    summary: str
    modalities: tuple[str, ...]
    coil_maps: bool = False  # MRI: needs ESPIRiT maps
    sampler: str | None = None  # diffusion family ("dds", "dds-tv", "dps", "volume"): a prior
    aux_prior: bool = False  # a second prior of the perpendicular orientation
    z_tv: bool = False  # volume sampler with the TV-along-z ADMM data consistency
    mri: MRIFunction | None = None  # (kspace, maps, mask, settings) -> images
    ct: CTFunction | None = None  # (sinogram, projector, settings) -> images
    mri_settings: tuple[str, ...] = ()
    ct_settings: tuple[str, ...] = ()

    @property
    def needs_prior(self) -> bool:
        return self.sampler is not None

    @property
    def volume(self) -> bool:
        """All slices of a scan reconstructed together."""
        return self.sampler == "volume"

    def settings_of(self, modality: str, settings: Any) -> dict:
        """The fields of ``settings`` this method's classical result depends on."""
        names = self.ct_settings if modality == "ct" else self.mri_settings
        return {n: getattr(settings, n) for n in names}


def _zero_filled(k: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor,
                 cfg: Any) -> Images:
    from diffrecon.recon.classical import zero_filled

    return zero_filled(k, mask)


def _cg_sense(k: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor,
              cfg: Any) -> Images:
    from diffrecon.recon.classical import cg_sense

    return cg_sense(k, maps, mask, cfg.lam, cfg.cg_iters)


def _l1_wavelet(k: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor,
                cfg: Any) -> Images:
    from diffrecon.recon.classical import l1_wavelet_sense

    return l1_wavelet_sense(k, maps, mask, cfg.l1_lam)


def _tv_sense(k: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor,
              cfg: Any) -> Images:
    from diffrecon.recon.classical import tv_sense

    return tv_sense(k, maps, mask, cfg.tv_lam)


def _fbp(y: torch.Tensor, op: Any, spec: Any) -> Images:
    from diffrecon.recon.ct import fbp

    return fbp(y, op, spec.fbp_filter)


def _cg_ls(y: torch.Tensor, op: Any, spec: Any) -> Images:
    from diffrecon.recon.ct import cg_ls

    return cg_ls(y, op, iters=spec.cg_iters)


def _tv_ct(y: torch.Tensor, op: Any, spec: Any) -> Images:
    from diffrecon.recon.ct import tv_ct

    return tv_ct(y, op, lam=spec.tv_lam, along_z=spec.tv_along_z)


_ALL = (
    Method("zero-filled", "inverse FFT of the sampled k-space, root sum of squares", ("mri",),
           mri=_zero_filled),
    Method("cg-sense", "SENSE by conjugate gradients (Tikhonov lam, cg_iters)", ("mri",),
           coil_maps=True, mri=_cg_sense, mri_settings=("lam", "cg_iters")),
    Method("l1-wavelet", "SENSE with an L1 penalty on Daubechies-4 wavelets (FISTA)",
           ("mri",), coil_maps=True, mri=_l1_wavelet, mri_settings=("l1_lam",)),
    Method("fbp", "filtered back-projection", ("ct",), ct=_fbp, ct_settings=("fbp_filter",)),
    Method("cg-ls", "least squares by conjugate gradients", ("ct",), ct=_cg_ls,
           ct_settings=("cg_iters",)),
    Method("admm-tv", "total variation by ADMM (MRI: SENSE; CT: in-plane or 3D)",
           ("mri", "ct"), coil_maps=True, mri=_tv_sense, ct=_tv_ct,
           mri_settings=("tv_lam",), ct_settings=("tv_lam", "tv_along_z")),
    Method("dds", "Decomposed Diffusion Sampler: Tweedie denoising + CG data consistency",
           ("mri", "ct"), coil_maps=True, sampler="dds"),
    Method("dds-tv", "DDS whose data consistency is a few in-plane ADMM-TV iterations "
           "started at the Tweedie estimate", ("mri", "ct"), coil_maps=True, sampler="dds-tv",
           mri_settings=("tv_lam",), ct_settings=("tv_lam",)),
    Method("dps", "diffusion posterior sampling (baseline; ~1000 network evaluations)",
           ("mri",), coil_maps=True, sampler="dps"),
    Method("dds-3d-tv", "DDS on the whole volume with TV along z in the data consistency",
           ("mri", "ct"), coil_maps=True, sampler="volume", z_tv=True),
    Method("dds-perpendicular", "DDS on the volume with two perpendicular 2D priors",
           ("mri", "ct"), coil_maps=True, sampler="volume", aux_prior=True),
    Method("dds-perpendicular-tv", "perpendicular priors with the TV-along-z data consistency",
           ("mri", "ct"), coil_maps=True, sampler="volume", aux_prior=True, z_tv=True),
)

METHODS: dict[str, Method] = {m.name: m for m in _ALL}


def methods_for(modality: str) -> tuple[str, ...]:
    """Names of the methods available for ``modality`` ("mri" or "ct"), registry order."""
    return tuple(m.name for m in _ALL if modality in m.modalities)


def get_method(name: str, modality: str | None = None) -> Method:
    """The method of ``name``; a ValueError naming the choices when it is unknown (or not
    available for ``modality``)."""
    m = METHODS.get(name)
    if m is None or (modality is not None and modality not in m.modalities):
        choices = methods_for(modality) if modality else tuple(METHODS)
        where = f" for {modality.upper()}" if modality else ""
        raise ValueError(f"unknown method {name!r}{where}; choose from {', '.join(choices)}")
    return m


def methods_help(modality: str) -> str:
    """One line per method of ``modality``: name and summary (for --help)."""
    return "; ".join(f"{m.name}: {m.summary}" for m in _ALL if modality in m.modalities)
