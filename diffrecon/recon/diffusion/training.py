"""Training a prior: AdamW, EMA, gradient clipping, bf16 on GPU, checkpoints, exact resume.

Every step's batch, timesteps, noise, phase and augmentation come from a generator
seeded by (seed, step), so a run resumed from its last checkpoint produces the same
loss curve as an uninterrupted one. Training state (optimiser, EMA, loss history) lives
in a work folder outside the checkpoint folder; the checkpoint folder gets the EMA
weights, a card and a sheet of unconditional samples at every checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from diffrecon.common.files import atomic_path
from diffrecon.recon.diffusion.checkpoint import save_prior
from diffrecon.recon.diffusion.networks import (
    EpsNetwork,
    build_network,
    monai_unet_args,
    position_channels,
)
from diffrecon.recon.diffusion.prior import Normalisation, Prior, PriorConfig
from diffrecon.recon.diffusion.schedule import VPSchedule
from diffrecon.recon.simulation import smooth_phase_from


class SliceSet(Protocol):
    """Training slices (io.training_slices.SliceSet): (N, H, W) float32 images and the names
    of the volumes they come from."""

    images: np.ndarray | torch.Tensor
    volumes: list[str]


@dataclass
class TrainConfig:
    name: str
    modality: str  # "mri" (2 channels real/imag) or "ct" (1 channel)
    orientation: str = "axial"
    size: int = 128
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    warmup: int = 100
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    amp: bool = True
    augment: bool = False
    # MRI: left-right flips (axial, coronal) and gamma jitter x -> x ** g with log g uniform
    # in +-log(1.25) (contrast varies between scanners and sequences); nothing for CT
    jitter: bool = False
    n_samples: int = 16
    sample_steps: int = 50
    # stochastic sampling (eta 1) for the sample sheet: with deterministic DDIM (eta 0) a small
    # network's poor x0 estimates at the first, noisiest steps are carried to the end, and
    # most samples come out saturated or noisy (seen on the brain priors)
    sample_eta: float = 1.0
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    attention: tuple[bool, ...] | None = None  # default: attention at the lowest resolution
    num_res_blocks: int = 1
    weights_dtype: str = "float16"
    data_description: str = ""
    data_licence: str = ""
    network_note: str = ""
    max_seconds: float | None = None  # stop (with a final checkpoint) after this much training
    # warm start: the weights of this prior folder (same network) begin the training
    init_from: str | None = None
    # pixel-size augmentation (mm): slices are stored at pixel_range[0] on a 2 x size grid and
    # each training image is resampled to a pixel size drawn uniformly from the range (the
    # field of view of a size x size image then spans size * pixel mm); validation at the
    # range's upper end. None: slices at their native pixel size, as before.
    pixel_range: tuple[float, float] | None = None
    # what the network learns to predict: "epsilon" (the noise, as DDS's checkpoints) or "v"
    # (sqrt(abar) eps - sqrt(1 - abar) x_0); the prior's config records it and Prior.eps
    # converts v to epsilon for the samplers
    prediction: str = "epsilon"
    # min-SNR-gamma loss weighting (e.g. 5); None: every timestep's squared error weighs 1
    min_snr: float | None = None
    # patch training: on a share 1 - patch_full of the steps the batch is random patch x
    # patch crops, (size / patch)^2 as many as whole images (the same pixels per step: about
    # the same compute, more distinct image content), the others whole images; the network,
    # fully convolutional, is applied to whole images as always. None: whole images only
    patch: int | None = None
    patch_full: float = 0.25
    # two more input channels: each pixel's row and column position in the whole image,
    # -1..1 (for a crop, where it was cut from), so that patch training can learn where
    # anatomy and background lie; the prior's config records it and Prior.eps supplies them
    positions: bool = False

    def __post_init__(self) -> None:
        if self.patch is not None:
            step = 2 ** (len(self.channel_mult) - 1)
            if not (step <= self.patch < self.size and self.patch % step == 0):
                raise ValueError(f"patch {self.patch}: a multiple of {step} (the network "
                                 f"halves it {len(self.channel_mult) - 1} times) below the "
                                 f"image size {self.size}")
            if not 0 <= self.patch_full < 1:
                raise ValueError(f"patch_full {self.patch_full:g}: the share of whole-image "
                                 "steps must be in [0, 1)")

    @property
    def channels(self) -> int:
        return 2 if self.modality == "mri" else 1

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        if self.attention is not None:
            return tuple(self.attention)
        return tuple(i == len(self.channel_mult) - 1 for i in range(len(self.channel_mult)))

    def storage(self) -> tuple[int, float | None]:
        """(size, pixel mm) at which training slices are stored: 2 x size at the pixel
        range's lower end with pixel-size augmentation, else size at native pixels."""
        if self.pixel_range is None:
            return self.size, None
        return 2 * self.size, float(self.pixel_range[0])

    def network_args(self) -> dict:
        return monai_unet_args(self.channels, self.base_channels, self.channel_mult,
                               self.attention_levels, self.num_res_blocks,
                               head_channels=self.base_channels, positions=self.positions)

    def prior_config(self, pixel_mm: tuple[float, float] | None = None) -> PriorConfig:
        """The checkpoint's config; its pixel sizes: the pixel range trained with, else
        ``pixel_mm`` (the training slices')."""
        mri = self.modality == "mri"
        return PriorConfig(
            name=self.name, modality=self.modality, architecture="monai-diffusion-unet",
            network=self.network_args(), schedule=VPSchedule().to_dict(),
            image_size=self.size, channels=["real", "imag"] if mri else ["intensity"],
            orientation=self.orientation,
            normalisation=Normalisation(kind="complex" if mri else "ct-window"),
            weights_dtype=self.weights_dtype, prediction=self.prediction,
            pixel_mm=tuple(self.pixel_range) if self.pixel_range is not None else pixel_mm,
            positions=self.positions,
        )


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    val_loss: float | None
    seconds: float
    images_per_second: float
    prior_path: str
    samples_png: str | None
    n_train_slices: int
    n_val_slices: int
    parameters: int
    hardware: str
    history: list[dict] = field(default_factory=list)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads (CPU)"


def _resample(x: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor,
              size: int) -> torch.Tensor:
    """(N, H, W) -> (N, size, size): rotate by ``angle`` (radians) and sample the source's
    central ``zoom`` fraction of its field of view (bilinear, 0 outside)."""
    zero = torch.zeros_like(angle)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, zero], -1),
                         torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta, (x.shape[0], 1, size, size), align_corners=False)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[:, 0]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small rotations (+-10 deg) and scalings (0.9-1.1) that keep intensities; pads with 0."""
    n, dev = x.shape[0], g.device
    ang = (torch.rand(n, generator=g, device=dev) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=g, device=dev)
    return _resample(x, ang, 1 / scale, x.shape[-1])


def _jitter(x: torch.Tensor, g: torch.Generator, modality: str, orientation: str
            ) -> torch.Tensor:
    """MRI only: left-right flips of half the slices (axial and coronal slices, whose
    columns run left-right; a sagittal flip would put the face at the back) and gamma
    x -> x ** g, log g uniform in +-log(1.25) (intensities stay in [0, 1], 0 and 1 fixed).
    CT is returned as it is: a mirrored body has its organs on the wrong side, and HU do
    not vary between scanners as MR contrast does."""
    if modality != "mri":
        return x
    n, dev = x.shape[0], g.device
    flip = torch.rand(n, generator=g, device=dev) < 0.5
    if orientation in ("axial", "coronal"):
        x = torch.where(flip[:, None, None], x.flip(-1), x)
    gamma = torch.exp((torch.rand(n, generator=g, device=dev) * 2 - 1) * math.log(1.25))
    return x.clamp(min=0) ** gamma[:, None, None].to(x.dtype)


def _pixel_zoom(pixel: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Fraction of a stored (2 size)^2 slice at pixel_range[0] mm that a size x size image at
    ``pixel`` mm covers."""
    return pixel / cfg.pixel_range[0] * 0.5


def _pixel_augment(x: torch.Tensor, g: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Rotations +-10 deg and pixel sizes uniform in cfg.pixel_range: (N, 2S, 2S) -> (N, S, S)."""
    n, dev = x.shape[0], g.device
    ang = (torch.rand(n, generator=g, device=dev) * 2 - 1) * math.radians(10) if cfg.augment \
        else torch.zeros(n, device=dev)
    lo, hi = cfg.pixel_range
    pixel = lo + (hi - lo) * torch.rand(n, generator=g, device=dev)
    return _resample(x, ang, _pixel_zoom(pixel, cfg), cfg.size)


def validation_images(data: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Validation slices at the model's size: with a pixel range, at its upper end."""
    if cfg.pixel_range is None:
        return data
    n = data.shape[0]
    return _resample(data, torch.zeros(n), _pixel_zoom(torch.full((n,), cfg.pixel_range[1]), cfg),
                     cfg.size)


def to_model_batch(x: torch.Tensor, modality: str, g: torch.Generator) -> torch.Tensor:
    """Slices (N, H, W) -> model-space batch: MRI with a random smooth phase (real, imag),
    CT as 2 x - 1."""
    if modality == "mri":
        coeffs = torch.rand(x.shape[0], 3, generator=g, dtype=torch.float64,
                            device=g.device) - 0.5
        z = x * smooth_phase_from(coeffs, tuple(x.shape[-2:]))
        return torch.stack([z.real, z.imag], dim=1).float()
    return (2 * x - 1)[:, None].float()


def make_batch(data: torch.Tensor, step: int, cfg: TrainConfig, schedule: VPSchedule
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, noise) of one training step, a pure function of (data, seed, step), made on
    the data's device: on a GPU by a generator there (other numbers than on the CPU, the
    same distribution), with the one host decision (patches or whole images) drawn on the
    CPU so that nothing waits for the GPU. With ``cfg.positions`` x_t is the network's
    input: the noisy images' channels, then two position channels (where each pixel lies
    in the whole image, crops included)."""
    data = torch.as_tensor(data)
    seed = cfg.seed * 1_000_003 + step
    g = torch.Generator(device=data.device).manual_seed(seed)
    host = g if data.device.type == "cpu" else torch.Generator().manual_seed(seed)
    x = _draw(data, cfg.batch_size, g, cfg)
    top = left = 0
    if cfg.patch is not None:
        x, top, left = _patches(data, x, g, cfg, host)
    x0 = to_model_batch(x, cfg.modality, g)
    t = torch.randint(schedule.num_steps, (len(x0),), generator=g, device=data.device)
    noise = torch.randn(x0.shape, generator=g, device=data.device)
    x_t = schedule.q_sample(x0, t, noise)
    if cfg.positions:
        pos = position_channels(len(x), *x.shape[-2:], top, left, (cfg.size, cfg.size),
                                data.device)
        x_t = torch.cat([x_t, pos], 1)
    return x_t, t, noise


def _draw(data: torch.Tensor, n: int, g: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """``n`` training slices drawn at random, through the config's augmentations."""
    x = data[torch.randint(len(data), (n,), generator=g, device=g.device)]
    if cfg.pixel_range is not None:
        x = _pixel_augment(x, g, cfg)
    elif cfg.augment:
        x = _augment(x, g)
    if cfg.jitter:
        x = _jitter(x, g, cfg.modality, cfg.orientation)
    return x


def _patches(data: torch.Tensor, x: torch.Tensor, g: torch.Generator, cfg: TrainConfig,
             host: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | int, torch.Tensor | int]:
    """Patch training's batch and its crops' corners (top, left): on a share ``patch_full``
    of the steps the whole images ``x`` (corners 0), else (size / patch)^2 times as many
    slices (the batch's and further ones, through the same augmentation) each cropped at a
    random position to patch x patch. The choice is drawn from ``host`` (a CPU generator;
    default ``g``)."""
    if torch.rand(1, generator=host or g).item() < cfg.patch_full:
        return x, 0, 0
    n, p = len(x) * (cfg.size // cfg.patch) ** 2, cfg.patch
    x = torch.cat([x, _draw(data, n - len(x), g, cfg)])
    top = torch.randint(cfg.size - p + 1, (n,), generator=g, device=g.device)
    left = torch.randint(cfg.size - p + 1, (n,), generator=g, device=g.device)
    span = torch.arange(p, device=x.device)
    rows, cols = (top[:, None] + span)[:, :, None], (left[:, None] + span)[:, None, :]
    return x[torch.arange(n, device=x.device)[:, None, None], rows, cols], top, left


def diffusion_loss(schedule: VPSchedule, cfg: TrainConfig, pred: torch.Tensor,
                   x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The training loss: mean squared error against the config's prediction target,
    weighted per sample (min-SNR) when the config asks."""
    target = schedule.target(cfg.prediction, x_t, t, noise)
    if cfg.min_snr is None:
        return F.mse_loss(pred, target)
    err = (pred - target).pow(2).flatten(1).mean(1)
    return (schedule.loss_weight(cfg.prediction, t, cfg.min_snr).to(err) * err).mean()


@torch.no_grad()
def validation_loss(net: torch.nn.Module, data: torch.Tensor, cfg: TrainConfig,
                    schedule: VPSchedule, device: torch.device, max_slices: int = 256
                    ) -> float | None:
    """Mean epsilon MSE on validation slices with fixed timesteps, noise and phase (a v
    network's output converted to epsilon: comparable across parameterisations); ``net``
    is the EpsNetwork (it adds position channels where the prior has them)."""
    if len(data) == 0:
        return None
    g = torch.Generator().manual_seed(12345)
    data = data[: max_slices]
    x0 = to_model_batch(data, cfg.modality, g)
    t = torch.linspace(0, schedule.num_steps - 1, len(data)).long()
    noise = torch.randn(x0.shape, generator=g)
    x_t = schedule.q_sample(x0, t, noise)
    total = 0.0
    net.eval()
    for s in range(0, len(data), cfg.batch_size):
        sl = slice(s, s + cfg.batch_size)
        tt, xt = t[sl].to(device), x_t[sl].to(device)
        pred = schedule.to_epsilon(cfg.prediction, net(xt, tt).float(), xt, tt)
        total += F.mse_loss(pred, noise[sl].to(device), reduction="sum").item()
    return total / noise.numel()


def _atomic_torch_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _config_key(cfg: TrainConfig) -> str:
    d = asdict(cfg)
    for k in ("steps", "checkpoint_every", "log_every", "n_samples", "sample_steps", "sample_eta",
              "data_description", "data_licence", "network_note", "max_seconds"):
        d.pop(k)
    # keys of configurations older than these fields stay valid
    for k, default in (("init_from", None), ("pixel_range", None), ("prediction", "epsilon"),
                       ("min_snr", None), ("jitter", False), ("patch", None),
                       ("patch_full", 0.25), ("positions", False)):
        if d[k] == default:
            d.pop(k)
    return json.dumps(d, sort_keys=True, default=list)


def _augmentation_text(cfg: TrainConfig) -> str:
    parts = []
    if cfg.pixel_range is not None:
        lo, hi = cfg.pixel_range
        parts += (["rotations +-10 deg"] if cfg.augment else []) + [
            f"pixel sizes uniform in {lo:g}-{hi:g} mm (validation at {hi:g} mm)"]
    elif cfg.augment:
        parts.append("rotations +-10 deg, scalings 0.9-1.1")
    if cfg.jitter and cfg.modality == "mri":
        parts.append(("left-right flips, " if cfg.orientation in ("axial", "coronal") else "")
                     + "gamma 0.8-1.25")
    if cfg.patch is not None:
        parts.append(f"{cfg.patch} x {cfg.patch} patches on {100 * (1 - cfg.patch_full):.0f} % "
                     "of the steps")
    if cfg.positions:
        parts.append("pixel positions as 2 extra input channels")
    return ", ".join(parts) or "none"


def render_card(cfg: TrainConfig, r: TrainResult, train_volumes: list[str],
                val_volumes: list[str]) -> str:
    val = "n/a (no validation volumes)" if r.val_loss is None else f"{r.val_loss:.4f}"
    recent = r.losses[-100:]
    train_loss = sum(recent) / len(recent) if recent else float("nan")
    chans = "2 (real, imag; random smooth phase per slice)" if cfg.modality == "mri" \
        else "1 (CT: clip((HU + 1000) / 2000, 0, 1) mapped to [-1, 1])"
    lines = [
        f"# {cfg.name}",
        "",
        f"Diffusion prior ({cfg.prediction} prediction, VP schedule: linear betas 1e-4..0.02 "
        f"over 1000 steps) for {cfg.modality.upper()} {cfg.orientation} slices of {cfg.size} x "
        f"{cfg.size}, channels {chans}.",
        "",
        "## Training data",
        f"- {cfg.data_description or 'volumes listed below'}",
        f"- licence: {cfg.data_licence or 'not stated'}",
        f"- {len(train_volumes)} training volumes ({r.n_train_slices} slices): "
        + ", ".join(train_volumes),
        f"- validation split by volume, {len(val_volumes)} volumes ({r.n_val_slices} slices): "
        + (", ".join(val_volumes) or "none"),
        f"- augmentation: {_augmentation_text(cfg)}",
        f"- objective: {cfg.prediction} prediction, "
        + ("uniform weights" if cfg.min_snr is None else f"min-SNR-{cfg.min_snr:g} weights"),
        "",
        "## Training",
        f"- network: MONAI DiffusionModelUNet, channels "
        f"{[cfg.base_channels * m for m in cfg.channel_mult]}, attention "
        f"{list(cfg.attention_levels)}, "
        f"{cfg.num_res_blocks} res block(s) per level, {r.parameters:,} parameters, weights "
        f"stored as {cfg.weights_dtype}",
        *([f"- why this size: {cfg.network_note}"] if cfg.network_note else []),
        f"- steps: {r.step}, batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, EMA {cfg.ema_decay}, "
        f"grad clip {cfg.grad_clip}, seed {cfg.seed}"
        + (f", started from the weights of {Path(cfg.init_from).name}" if cfg.init_from else ""),
        f"- hardware: {r.hardware}",
        f"- wall time: {r.seconds:.0f} s ({r.images_per_second:.1f} images/s)",
        f"- training loss (mean of the last {len(recent)} steps): {train_loss:.4f}",
        f"- validation loss (EMA weights): {val}",
        "",
        "## Unconditional samples",
        f"DDIM, {cfg.sample_steps} steps, eta {cfg.sample_eta:g}, EMA weights"
        + (" (magnitude shown):" if cfg.modality == "mri" else ":"),
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(lines)


def _load_initial_weights(net: torch.nn.Module, cfg: TrainConfig) -> None:
    """Warm start from a prior folder whose network matches cfg's (else a named error). A
    network without position channels starts one with them: its first convolution gets
    zero weights for the two new input channels, so training begins at the same function."""
    from diffrecon.recon.diffusion.checkpoint import load_prior

    src = load_prior(cfg.init_from, device="cpu")
    want = json.loads(json.dumps(cfg.network_args()))
    state = src.net.net.state_dict()
    widen = cfg.positions and not src.config.positions
    if widen:
        want["in_channels"] -= 2
    if src.config.network != want:
        raise ValueError(f"{cfg.init_from}: its network {src.config.network} differs from the "
                         f"one being trained {cfg.network_args()}")
    if widen:
        w = state["conv_in.conv.weight"]
        state["conv_in.conv.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 2, *w.shape[2:])],
                                                 1)
    net.load_state_dict(state)


def train(
    train_set: SliceSet,
    val_set: SliceSet,
    cfg: TrainConfig,
    out_dir: str | Path,
    work_dir: str | Path,
    device: str | torch.device = "cpu",
    callback: Callable[[int, int, float], None] | None = None,
    resume: bool = True,
    prefetch: bool | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
) -> TrainResult:
    """Train (or resume training) a prior; returns figures for the card and the caller.

    ``channels_last`` keeps the network and its batches in channels-last memory order and
    ``compile_net`` runs the training forward through ``torch.compile`` (the same weights;
    the EMA copy, validation and checkpoints use the plain module). Both are for GPUs, where
    the shipped network is bound by memory traffic; neither changes what is learnt.

    On a GPU the training slices stay on it and each batch is drawn there (augmentation,
    crops, phase and noise: the CPU drew about 12 batches of 64 a second, which held the
    GPU back), and the loss is read back every ``log_every`` steps instead of every step;
    if a batch cannot be made on the GPU, batches are drawn on the CPU as before.
    ``prefetch`` (default: on a GPU, where batches are drawn on the CPU) draws CPU batches
    ahead on two threads."""
    from diffrecon.common.previews import grid, save_png
    from diffrecon.recon.diffusion.sampling import sample_unconditional

    device = torch.device(device)
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set.images) == 0:
        raise ValueError("no training slices: check the data folder, modality and orientation")
    torch.manual_seed(cfg.seed)
    schedule = VPSchedule()
    net = build_network("monai-diffusion-unet", cfg.network_args()).to(device)
    if cfg.init_from:
        _load_initial_weights(net, cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path = work_dir / "state.pt"
    step, losses, seconds, history = 0, [], 0.0, []
    if resume and state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=True)
        if st["config"] != _config_key(cfg):
            raise ValueError(f"{state_path} was written by a different training configuration; "
                             "use another work folder or resume=False")
        net.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, losses, seconds = int(st["step"]), list(st["losses"]), float(st["seconds"])
        history = json.loads(st["history"])
    use_amp = cfg.amp and device.type == "cuda"
    data = torch.as_tensor(train_set.images)
    val_images = validation_images(torch.as_tensor(val_set.images), cfg)
    n_params = sum(p.numel() for p in net.parameters())
    result = None

    def checkpoint() -> TrainResult:
        _atomic_torch_save({"config": _config_key(cfg), "model": net.state_dict(),
                            "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                            "losses": losses, "seconds": seconds,
                            "history": json.dumps(history)}, state_path)
        ema_eps = EpsNetwork(ema, "monai-diffusion-unet", cfg.channels, cfg.positions)
        vloss = validation_loss(ema_eps, val_images, cfg, schedule, device)
        prior = Prior(ema_eps, cfg.prior_config(), device=device)
        samples = prior.from_model_space(
            sample_unconditional(prior, cfg.n_samples, cfg.sample_steps, eta=cfg.sample_eta,
                                 seed=cfg.seed, batch=cfg.batch_size))
        sheet = grid(samples.abs().numpy() if cfg.modality == "mri" else samples.numpy(),
                     vmin=0.0, vmax=1.0)
        save_png(work_dir / "samples" / f"step_{step:07d}.png", sheet)
        history.append({"step": step, "val_loss": vloss, "seconds": seconds})
        r = TrainResult(step, losses, vloss, seconds, step * cfg.batch_size / max(seconds, 1e-9),
                        str(out_dir), None, len(train_set.images), len(val_set.images), n_params,
                        hardware_name(device), history)
        save_prior(out_dir, ema, cfg.prior_config(getattr(train_set, "pixel_mm", None)),
                   render_card(cfg, r, train_set.volumes, val_set.volumes))
        r.samples_png = str(save_png(out_dir / "samples.png", sheet))
        return r

    net.train()
    # Batches are a function of (seed, step) on each device, so results do not depend on
    # prefetching; on a GPU the loss is read back every log_every steps so that the GPU
    # never waits on the CPU per step.
    on_gpu = device.type == "cuda"
    gpu_data = None
    if on_gpu and prefetch is None:
        try:
            gpu_data = data.to(device)
            for k in range(8):  # whole-image and patch batches alike
                make_batch(gpu_data, step + k, cfg, schedule)
        except RuntimeError as e:  # e.g. out of memory: draw on the CPU as before
            print(f"batches drawn on the CPU: {e}", flush=True)
            gpu_data = None
    prefetching = (on_gpu and gpu_data is None) if prefetch is None else prefetch
    pool = ThreadPoolExecutor(max_workers=2) if prefetching else None
    ahead: dict[int, Future] = {}

    def next_batch(s: int):
        if gpu_data is not None:
            return make_batch(gpu_data, s, cfg, schedule)
        if pool is None:
            return make_batch(data, s, cfg, schedule)
        for k in range(s, min(s + 3, cfg.steps)):
            if k not in ahead:
                ahead[k] = pool.submit(make_batch, data, k, cfg, schedule)
        return ahead.pop(s).result()

    unread: list[torch.Tensor] = []

    def read_losses() -> None:
        losses.extend(torch.stack(unread).tolist() if unread else [])
        unread.clear()

    params, ema_params = list(net.parameters()), list(ema.parameters())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        net.to(memory_format=layout)
    # one compiled graph per batch shape (patch training alternates two)
    compiled = torch.compile(net, dynamic=False) if compile_net else None

    def gradients(x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step's loss, its gradients in the parameters (compiled where asked)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            model = net if compiled is None else compiled
            pred = model(x_t.contiguous(memory_format=layout), t)
        loss = diffusion_loss(schedule, cfg, pred.float(), x_t[:, :cfg.channels], t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            x_t, t, noise = next_batch(step)
            x_t, t, noise = (v.to(device, non_blocking=True) for v in (x_t, t, noise))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            try:
                loss = gradients(x_t, t, noise)
            except Exception as e:
                if compiled is None:
                    raise
                # the compiler (forward or backward graph) must not lose the run: the step
                # is redone without it, and the history says so
                traceback.print_exc()
                why = f"{type(e).__name__}: {e}"[:500]
                print(f"torch.compile failed at step {step} ({why}); training continues "
                      "uncompiled", flush=True)
                history.append({"step": step, "compile_failed": why})
                compiled = None
                loss = gradients(x_t, t, noise)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
                for be, b in zip(ema.buffers(), net.buffers()):
                    be.copy_(b)
            step += 1
            unread.append(loss.detach())
            if not on_gpu or step % cfg.log_every == 0 or step == cfg.steps:
                read_losses()  # on a GPU this waits for the queued steps
            seconds += time.perf_counter() - t0
            if callback is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                callback(step, cfg.steps, losses[-1])
            out_of_time = cfg.max_seconds is not None and seconds >= cfg.max_seconds
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                read_losses()
                result = checkpoint()
                net.train()
            if out_of_time:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if result is None:  # already complete when resumed
        result = checkpoint()
    return result
