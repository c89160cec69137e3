"""Flow parameters as pydantic models (the Prefect UI renders them as forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MRI_METHODS = ("zero-filled", "cg-sense")
NEEDS_COIL_MAPS = {"cg-sense"}
Method = Literal["zero-filled", "cg-sense"]
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


class ReconConfig(BaseModel):
    """What to reconstruct and how; one config for a whole batch."""

    model_config = ConfigDict(extra="forbid")

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
    coil_method: Literal["torch", "sigpy"] = "torch"
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:n]'")

    @property
    def store_root(self) -> str:
        return self.store or f"{self.out_dir.rstrip('/')}/.artifacts"
