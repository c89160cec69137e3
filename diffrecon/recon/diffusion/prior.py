"""A prior = score network + noise schedule + normalisation; gives eps and Tweedie's x0."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffrecon.common import units
from diffrecon.recon.diffusion.networks import position_channels
from diffrecon.recon.diffusion.schedule import VPSchedule


class Normalisation(BaseModel):
    """How data map into the network's space (declared in the prior's config.json).

    ``complex``: MRI images (complex, magnitude about 1 after dividing by a per-image
    ``scale``) become channels (real, imag). ``ct-window``: CT data
    x = clip((HU - hu_min) / (hu_max - hu_min), 0, 1) (BENCHMARKS.md: -1000..1000 HU)
    become one channel 2 x - 1 in [-1, 1].
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["complex", "ct-window"]
    hu_min: float = -1000.0
    hu_max: float = 1000.0


class PriorConfig(BaseModel):
    """config.json of a checkpoint folder."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    name: str
    modality: Literal["mri", "ct"]
    architecture: Literal["monai-diffusion-unet", "adm"]
    network: dict
    schedule: dict = Field(default_factory=lambda: VPSchedule().to_dict())
    # what the network outputs: the noise (DDS's published checkpoints, the default), or v;
    # Prior.eps converts either to epsilon for the samplers
    prediction: Literal["epsilon", "v"] = "epsilon"
    image_size: int = Field(gt=0)
    channels: list[str] = Field(min_length=1)
    orientation: Literal["axial", "coronal", "sagittal"] | None = None
    normalisation: Normalisation
    # int8: every weight matrix / kernel stored as int8 with one float32 scale per output
    # channel (key + checkpoint.INT8_SCALE), dequantised at load; biases and norms float16
    weights_dtype: Literal["float16", "float32", "bfloat16", "int8"] = "float32"
    # the pixel sizes (mm, lowest and highest) of the images the prior learnt; None: not
    # recorded. `--grid pixel` resamples a scan to a pixel size in this range.
    pixel_mm: tuple[float, float] | None = None
    # the network takes two input channels more than `channels`: each pixel's row and column
    # position in the image, -1..1 (networks.position_channels; patch training with the
    # crop's position); Prior.eps appends them
    positions: bool = False

    @field_validator("pixel_mm")
    @classmethod
    def _pixel_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"pixel_mm {list(v)}: give [lowest, highest] mm, both above 0")
        return v


def hu_to_unit(hu: torch.Tensor, norm: Normalisation | None = None) -> torch.Tensor:
    """CT data units of BENCHMARKS.md: clip((HU + 1000) / 2000, 0, 1)."""
    return units.hu_to_unit(hu, *_window(norm))


def unit_to_hu(x: torch.Tensor, norm: Normalisation | None = None) -> torch.Tensor:
    """The inverse of :func:`hu_to_unit` in the prior's window."""
    return units.unit_to_hu(x, *_window(norm))


def _window(norm: Normalisation | None) -> tuple[float, float]:
    return (norm.hu_min, norm.hu_max) if norm else (units.HU_MIN, units.HU_MAX)


def _per_image(scale: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
    if isinstance(scale, torch.Tensor) and scale.ndim == x.ndim:  # per pixel
        return scale.to(x.device)
    if isinstance(scale, torch.Tensor) and scale.ndim > 0:
        return scale.reshape(-1, *([1] * (x.ndim - 1))).to(x.device)
    return scale


class Prior:
    """Network, schedule and normalisation together.

    eps(x_t, t) and predict(x_t, t) work in model space on (N, C, H, W) tensors with
    integer timesteps (scalar or (N,)); outputs are float32 whatever the network's
    dtype. On CUDA the network runs under bf16 autocast in channels-last memory layout
    unless ``autocast=False`` (float32 as stored), and ``compile=True`` wraps it in
    ``torch.compile`` (one compilation per batch shape; on an H200 the DDS loop then ran
    2.3x faster, see benchmarks/device/dds_throughput.py).
    """

    def __init__(self, net: torch.nn.Module, config: PriorConfig, digest: str = "",
                 device: torch.device | str = "cpu", autocast: bool = True,
                 compile: bool = False) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        if autocast and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net = torch.compile(self.net)
        self.config = config
        self.schedule = VPSchedule.from_dict(config.schedule)
        self.digest = digest
        self.autocast = autocast
        self.evaluations = 0  # network evaluations (images) so far, for the benchmark tables

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def channels(self) -> int:
        return len(self.config.channels)

    @property
    def size_multiple(self) -> int:
        """Image sides the network takes whole: 2 ** (its downsamplings). Other sizes are
        reflect-padded to the next multiple for the network and cropped back."""
        net = self.config.network
        levels = len(net["channels"]) if self.config.architecture == "monai-diffusion-unet" \
            else len(net["channel_mult"])
        return 2 ** (levels - 1)

    def _ctx(self):
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _t(self, t: int | torch.Tensor, n: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device).long()
        return t.expand(n) if t.ndim == 0 else t

    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor, grad: bool = False) -> torch.Tensor:
        """The network's noise prediction for x_t at timestep t (``grad``: keep the graph,
        for DPS)."""
        x_t = x_t.to(self.device, torch.float32)
        h, w = x_t.shape[-2:]
        m = self.size_multiple
        ph, pw = -h % m, -w % m  # the convolutional network runs at any size, padded
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x_t = torch.nn.functional.pad(x_t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2),
                                          mode=mode)
        tt = self._t(t, x_t.shape[0])
        extra = {}
        if self.config.positions:  # positions across the image itself, not its padding
            extra["pos"] = position_channels(x_t.shape[0], *x_t.shape[-2:], -(ph // 2),
                                             -(pw // 2), (h, w), self.device)
        with torch.set_grad_enabled(grad), self._ctx():
            out = self.net(x_t, tt, **extra)
        self.evaluations += x_t.shape[0]
        crop = (..., slice(ph // 2, ph // 2 + h), slice(pw // 2, pw // 2 + w))
        return self.schedule.to_epsilon(self.config.prediction, out[crop].float(), x_t[crop],
                                        tt)

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, grad: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0_hat) with Tweedie's x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        e = self.eps(x_t, t, grad)
        a = self.schedule.abar(self._t(t, x_t.shape[0]), e)
        return e, (x_t.to(e) - (1 - a).sqrt() * e) / a.sqrt()

    def x0_hat(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.predict(x_t, t)[1]

    def to_model_space(self, x: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Data (N, H, W) -> network input (N, C, H, W).

        MRI: complex images divided by ``scale`` (a number, one per image, or complex and
        shaped like the images: dds.estimate_scale's magnitude and phase map) -> (real,
        imag).
        CT: data units x in [0, 1] -> 2 x - 1.
        """
        norm = self.config.normalisation
        if norm.kind == "complex":
            z = x / _per_image(scale, x)
            return torch.stack([z.real, z.imag], dim=-3).float()
        return (2 * x - 1).unsqueeze(-3).float()

    def from_model_space(self, z: torch.Tensor, scale: float | torch.Tensor = 1.0
                         ) -> torch.Tensor:
        """Inverse of :meth:`to_model_space`."""
        norm = self.config.normalisation
        if norm.kind == "complex":
            x = torch.complex(z[..., 0, :, :], z[..., 1, :, :])
            return x * _per_image(scale, x)
        return (z[..., 0, :, :] + 1) / 2
