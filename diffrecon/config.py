"""Flow parameters as pydantic models (the Prefect UI renders them as forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffrecon.io.outputs import OUTPUTS
from diffrecon.recon.diffusion.settings import DDS3DConfig, DDSConfig, DDSTVConfig, DPSConfig
from diffrecon.recon.methods import METHODS, methods_for

# the method sets, derived from the one registry (diffrecon.recon.methods)
MRI_METHODS = methods_for("mri")
CT_METHODS = methods_for("ct")
NEEDS_COIL_MAPS = {m.name for m in METHODS.values() if m.coil_maps}
NEEDS_PRIOR = {m.name for m in METHODS.values() if m.needs_prior}
VOLUME_METHODS = tuple(m.name for m in METHODS.values() if m.volume)
PERPENDICULAR_METHODS = tuple(m.name for m in METHODS.values() if m.aux_prior)  # two priors
Z_TV_METHODS = tuple(m.name for m in METHODS.values() if m.z_tv)  # ADMM with TV along z
Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
Output = Literal[OUTPUTS]  # type: ignore[valid-type]
MaskKind = Literal["equispaced", "random", "gaussian", "poisson"]


class MaskSpec(BaseModel):
    """Retrospective undersampling of a fully sampled scan.

    ``seed`` None: the BENCHMARKS.md seed crc32("{scan}/{z}/{R}/{kind}") with z = 0,
    so every scan gets its own reproducible mask.
    """

    model_config = ConfigDict(extra="forbid")

    kind: MaskKind = "equispaced"
    accel: float = Field(4.0, gt=1.0, description="acceleration R: n // R lines are kept")
    seed: int | None = None


class PriorRef(BaseModel):
    """A diffusion prior (a shipped name or a checkpoint folder) and the sampler settings."""

    model_config = ConfigDict(extra="forbid")

    prior: str = Field("brain-t1-axial-128", description="shipped prior name or folder "
                       "(for CT use e.g. ct-axial-128)")
    aux_prior: str | None = Field(None, description="dds-perpendicular(-tv): the prior of the "
                                  "perpendicular orientation (e.g. ct-coronal-128)")
    pattern: str = Field(DDS3DConfig.pattern, pattern="^[AB]+$", description="dds-perpendicular"
                         "(-tv): primary (A) / auxiliary (B) prior per diffusion step, repeated")
    tv_lam: float = Field(DDS3DConfig.lam, ge=0, description="dds-3d-tv, dds-perpendicular-tv: "
                          "TV weight along z")
    tv_rho: float = Field(DDS3DConfig.rho, ge=0, description="dds-3d-tv, dds-perpendicular-tv: "
                          "ADMM penalty (0: no TV)")
    plane_tv_lam: float | None = Field(None, ge=0, description="dds-tv: in-plane TV weight "
                                       "(default: the modality's ADMM-TV weight)")
    tv_iters: int = Field(DDSTVConfig.tv_iters, ge=1, description="dds-tv: ADMM iterations "
                          "per diffusion step")
    real_object: bool = Field(DDS3DConfig.real, description="MRI volume methods: the object is "
                              "real (magnitude images): drop the prior's phase")
    nfe: int = Field(DDSConfig.nfe, ge=1, le=1000, description="DDS and the volume methods: "
                     "network evaluations (diffusion steps) per slice")
    eta: float | None = Field(DDSConfig.eta, ge=0, le=1, description="DDS noise mixing "
                              "(default: 1.0 for one sample, 0.85 for several)")
    cg_iters: int = Field(DDSConfig.cg_iters, ge=0, description="DDS data-consistency CG "
                          "iterations per step")
    gamma: float | None = Field(DDSConfig.gamma, gt=0, description="DDS noisy data-consistency "
                                "weight (default: noiseless)")
    dps_steps: int = Field(DPSConfig.steps, ge=1, le=1000, description="DPS steps (network "
                           "evaluations per slice)")
    dps_step_size: float = Field(DPSConfig.step_size, gt=0, description="DPS step size zeta")
    seed: int = Field(DDSConfig.seed, description="sampler seed (noise of the diffusion steps)")
    samples: int = Field(1, ge=1, le=64, description="diffusion methods: samples per slice "
                         "(K > 1: the image is their mean, and a std map says where they "
                         "disagree; K times the work, drawn in one batch)")
    branch_steps: int = Field(DDSConfig.branch_steps, ge=0, description="dds, dds-tv with "
                              "samples > 1: the samples share their first nfe - N steps and "
                              "draw only the last N each (work nfe - N + K N per slice "
                              "instead of K nfe); 0: whole trajectories")
    std_scale: float = Field(1.0, gt=0, description="samples > 1: the std map is multiplied "
                             "by this calibration factor (benchmarks/uncertainty.py fits one "
                             "per prior on training slices; 1: the samples' raw spread)")
    std_aliasing: list[tuple[float, float, float, Literal["equispaced", "random"] | None]] = (
        Field([], description="MRI, samples > 1: (sampled fraction, weight[, scale][, "
                              "pattern]) points; the std map becomes scale x sqrt(std^2 + w "
                              "alias^2), alias the aliasing of the mean |A^H A m - m|, w and "
                              "scale interpolated at the scan's sampled fraction among the "
                              "points of its sampling pattern (equispaced or random lines; "
                              "points without one apply to both; scale 1 where not given). "
                              "benchmarks/uncertainty.py fits them on training slices; "
                              "empty: the samples' spread alone"))
    std_model: dict | str | None = Field(
        None, description="MRI, samples > 1: the std map from a fitted error model, the JSON "
                          "file benchmarks/uncertainty.py writes, or 'prior' for the one "
                          "shipped in the prior's folder (error_model.json): a log-linear "
                          "function of the mean's aliasing and detail, the spread and the "
                          "distance to the object's edge, calibrated per sampled fraction and "
                          "pattern on training slices (recon.uncertainty.error_model); read "
                          "and checked when the settings are made, kept as the model itself")
    std_threshold: float = Field(0.05, gt=0, description="QA with samples > 1: the fraction "
                                 "of the object whose std is above this share of the data "
                                 "range (MRI: the slice's maximum; CT: 2000 HU)")
    compile: bool = Field(False, description="torch.compile the prior's network (worth it on "
                          "a GPU for many slices: one compilation per batch shape)")
    grid: Literal["native", "prior", "pixel"] = Field(
        "native", description="MRI slice-wise diffusion on a scan of another matrix size than "
                              "the prior's: sample at the scan's own size (native), on the "
                              "prior's N x N grid of the same field of view (prior), or on the "
                              "grid of the same field of view whose pixels are the size the "
                              "prior learnt (pixel; from the scan's header; Fourier "
                              "resampling, the data consistency on the scan's grid)")

    @model_validator(mode="after")
    def _branching_needs_samples(self) -> PriorRef:
        if self.branch_steps and self.samples == 1:
            raise ValueError(f"branch_steps {self.branch_steps}: needs samples > 1 (the "
                             "samples share their first steps; one sample has nothing to "
                             "share)")
        return self

    @field_validator("std_aliasing", mode="before")
    @classmethod
    def _aliasing_points(cls, v: list) -> list:
        from diffrecon.recon.uncertainty import aliasing_table

        return aliasing_table(v)

    @model_validator(mode="before")
    @classmethod
    def _load_error_model(cls, data: dict) -> dict:
        """std_model: a file (or 'prior': the prior folder's error_model.json) read and
        checked here, so that the run's settings (and cache keys) hold the model itself."""
        v = data.get("std_model") if isinstance(data, dict) else None
        if v is None:
            return data
        from diffrecon.recon.uncertainty import error_model

        if v == "prior":
            from diffrecon.recon.diffusion.registry import resolve_prior_path

            v = resolve_prior_path(data.get("prior", cls.model_fields["prior"].default)
                                   ) / "error_model.json"
            if not v.is_file():
                raise ValueError(f"std_model 'prior': {v} does not exist (this prior ships no "
                                 "error model; fit one with benchmarks/uncertainty.py)")
        return {**data, "std_model": error_model(v)}

    @model_validator(mode="after")
    def _one_std_map(self) -> PriorRef:
        if self.std_model is not None and self.std_aliasing:
            raise ValueError("std_model and std_aliasing: give one (each makes the std map)")
        if self.std_model is not None and self.samples == 1:
            raise ValueError("std_model: needs samples > 1 (it makes the std map of the "
                             "samples; one sample has none)")
        return self

    def sampler_config(self, method: str, slice_batch: int | None = None,
                       tv_lam: float | None = None) -> DDSConfig | DPSConfig | DDS3DConfig:
        """The settings of ``method``'s sampler (its family in the method registry);
        ``tv_lam`` is the modality's ADMM-TV weight, dds-tv's default."""
        m = METHODS[method]
        if self.samples > 1 and self.branch_steps:
            if m.sampler not in ("dds", "dds-tv"):
                raise ValueError(f"branch_steps: {method} draws whole trajectories per sample; "
                                 "only dds and dds-tv share their first steps")
            if self.branch_steps >= self.nfe:
                raise ValueError(f"branch_steps {self.branch_steps}: must be below nfe "
                                 f"{self.nfe} (the last steps drawn per sample)")
        if m.sampler == "dps":
            return DPSConfig(steps=self.dps_steps, step_size=self.dps_step_size, seed=self.seed)
        dds = dict(nfe=self.nfe, eta=self.eta, cg_iters=self.cg_iters, gamma=self.gamma,
                   seed=self.seed, branch_steps=self.branch_steps)
        if m.sampler == "volume":
            return DDS3DConfig(**dds, lam=self.tv_lam, rho=self.tv_rho if m.z_tv else 0.0,
                               slice_batch=slice_batch or DDS3DConfig.slice_batch,
                               pattern=self.pattern, real=self.real_object)
        if m.sampler == "dds-tv":
            lam = self.plane_tv_lam if self.plane_tv_lam is not None else tv_lam
            return DDSTVConfig(**dds, tv_lam=lam or 0.0, tv_iters=self.tv_iters)
        return DDSConfig(**dds)

    def prior_names(self, method: str) -> list[str]:
        """The priors ``method`` uses: the primary, and the auxiliary for perpendicular
        methods (a ValueError when that is missing)."""
        if not METHODS[method].aux_prior:
            return [self.prior]
        if not self.aux_prior:
            raise ValueError(f"{method} needs a second prior (--prior-aux)")
        return [self.prior, self.aux_prior]


class CTSpec(BaseModel):
    """Retrospective CT simulation from a volume (parallel beam, B3-style) and solvers."""

    model_config = ConfigDict(extra="forbid")

    views: int = Field(16, ge=1, description="views evenly over [0, 180) degrees")
    limited_angle: float | None = Field(
        None, gt=0, le=180, description="views at 0, 1, ..., DEG-1 degrees instead")
    noise: float = Field(1e-3, ge=0, description="Gaussian sigma relative to max |sinogram|")
    fbp_filter: Literal["ram-lak", "shepp-logan", "hann"] = "ram-lak"
    cg_iters: int = Field(30, ge=1)
    tv_lam: float = Field(1.0, ge=0, description="ADMM-TV weight (CT units), tuned on the "
                          "CT training volumes")
    tv_along_z: bool = Field(False, description="ADMM-TV over (z, rows, cols) of the volume")
    size: int | None = Field(None, ge=8, description="slices to size x size before "
                             "simulating: a larger slice's whole field of view resampled "
                             "(512 -> 128: 4x the pixel size), a smaller one padded with air "
                             "(as B3 does, 128); slice-wise diffusion runs at any size, the "
                             "volume methods need the prior's")
    series_uid: str | None = Field(None, description="DICOM folders holding several series: "
                                   "the one to read (its UID, or the UID's last digits)")

    def setting(self) -> str:
        if self.limited_angle:
            return f"limited 0-{self.limited_angle:g} deg"
        return f"{self.views} views"


class DaskSpec(BaseModel):
    """Scale-out of a batch over a Dask cluster: one scan per task, each task holding one
    GPU (Dask resource ``GPU=1``), so a worker per GPU runs one scan at a time."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="an existing scheduler, e.g. "
                                "tcp://head:8786 (its workers started with --resources GPU=1)")
    n_workers: int = Field(2, ge=1, description="local cluster: workers (one per GPU)")
    cuda: bool = Field(False, description="local cluster: dask_cuda.LocalCUDACluster, one "
                                          "worker per visible GPU")
    processes: bool = Field(True, description="local cluster: a process per worker")


class ReconConfig(BaseModel):
    """What to reconstruct and how; one config for a whole batch."""

    model_config = ConfigDict(extra="forbid")

    modality: Literal["mri", "ct"] = "mri"
    ct: CTSpec = Field(default_factory=CTSpec)
    methods: list[Method] = Field(
        default_factory=lambda: ["cg-sense"], min_length=1,
        description="methods to run on each scan",
    )
    mask: MaskSpec = Field(default_factory=MaskSpec)
    out_dir: str = "results"
    store: str | None = Field(
        None, description="artifact store root (a path or fsspec URL); default OUT_DIR/.artifacts"
    )
    lam: float = Field(1e-2, ge=0, description="CG-SENSE Tikhonov weight on k-space scaled to 1")
    cg_iters: int = Field(30, ge=1)
    l1_lam: float = Field(1e-4, ge=0, description="L1-wavelet weight (k-space scaled to 1); "
                          "tuned on the IXI training volumes")
    tv_lam: float = Field(1e-4, ge=0, description="ADMM-TV weight (k-space scaled to 1); "
                          "tuned on the IXI training volumes")
    coil_method: Literal["torch", "sigpy"] = "torch"
    calib: tuple[int, int] | None = Field(
        None, description="ESPIRiT calibration region (lines, columns) inside the fully "
                          "sampled k-space centre; default the largest centred block found")
    diffusion: PriorRef = Field(default_factory=PriorRef)
    outputs: list[Output] = Field(
        default_factory=lambda: ["nifti"],
        description="what to write for each reconstruction; 'pacs' writes the DICOM series "
                    "and sends it to `pacs`")
    pacs: str | None = Field(
        None, description="PACS destination: http(s)://host:port/dicom-web (STOW-RS) or "
                          "dicom://AE_TITLE@host:port (C-STORE)")
    pacs_secret: str | None = Field(
        None, description="name of a Prefect Secret block holding the PACS credentials as "
                          "'user:password' (else DIFFRECON_PACS_USER / DIFFRECON_PACS_PASSWORD)")
    deidentify: bool = Field(False, description="DICOM outputs: replace patient identifiers")
    coil_compression: int | None = Field(
        None, ge=1, description="compress to this many virtual coils before the coil maps")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:n]'")
    name_by: Literal["stem", "hash"] = Field(
        "stem", description="name scans in runs, logs and outputs by file stem, or by a "
                            "short hash of it (file names that carry identifiers)")
    permissions: Literal["private", "group", "world"] = Field(
        "private", description="who may read the outputs, the ledger and the artifact store: "
                               "owner only (files 0600, folders 0700), also the group, or all")
    dask: DaskSpec | None = Field(None, description="scale a batch out over a Dask cluster")
    slice_batch: int | None = Field(
        None, ge=1, description="slices reconstructed together (None: all of a scan); "
                                "halved and retried on CUDA out-of-memory")

    @model_validator(mode="after")
    def _methods_fit_modality(self) -> ReconConfig:
        allowed = methods_for(self.modality)
        wrong = [m for m in self.methods if m not in allowed]
        if wrong:
            raise ValueError(f"method(s) {', '.join(wrong)} not available for "
                             f"{self.modality.upper()}; choose from {', '.join(allowed)}")
        return self

    @model_validator(mode="after")
    def _branching_fits_methods(self) -> ReconConfig:
        if self.diffusion.samples > 1 and self.diffusion.branch_steps:
            for m in self.methods:
                if METHODS[m].needs_prior:
                    self.diffusion.sampler_config(m)  # a ValueError naming what does not fit
        return self

    @model_validator(mode="after")
    def _pacs_destination(self) -> ReconConfig:
        from diffrecon.io.pacs import parse_destination

        if "pacs" in self.outputs and not self.pacs:
            raise ValueError("output 'pacs' needs a destination: set pacs (--pacs)")
        if self.pacs:
            parse_destination(self.pacs)  # a ValueError naming the expected forms
        return self

    @property
    def store_root(self) -> str:
        return self.store or f"{self.out_dir.rstrip('/')}/.artifacts"
