"""Finding priors by name or path, and importing the published DDS checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffrecon.recon.diffusion.checkpoint import (
    PriorLoadError,
    load_prior,
    load_torch_state_dict,
    read_config,
    save_prior,
)
from diffrecon.recon.diffusion.prior import Normalisation, Prior, PriorConfig

if TYPE_CHECKING:
    import torch

PRIORS_DIR = Path(__file__).resolve().parents[2] / "priors"

_ADM_COMMON = {
    "num_channels": 256, "num_res_blocks": 1, "attention_resolutions": "16", "num_heads": 4,
    "num_head_channels": 64, "num_heads_upsample": -1, "dropout": 0.0, "learn_sigma": True,
    "use_scale_shift_norm": True, "resblock_updown": True, "resamp_with_conv": True,
    "use_new_attention_order": False, "class_cond": False,
}

#: the two published DDS checkpoints: their guided-diffusion configs and what they model
DDS_CHECKPOINTS = {
    "mri-knee-320": {
        "name": "dds-fastmri-knee-320",
        "file": "fastmri_knee_320_complex_1m.pt",
        "adm": {**_ADM_COMMON, "image_size": 320, "in_channels": 2, "out_channels": 4},
        "modality": "mri",
        "channels": ["real", "imag"],
        "normalisation": {"kind": "complex"},
        "orientation": None,
        "about": "fastMRI knee, complex 320 x 320 (real/imag), as released with DDS "
                 "(Chung, Lee, Ye, ICLR 2024); 1M training steps.",
    },
    "ct-aapm-256": {
        "name": "dds-aapm-ct-256",
        "file": "AAPM256_1M.pt",
        "adm": {**_ADM_COMMON, "image_size": 256, "in_channels": 1, "out_channels": 2},
        "modality": "ct",
        "channels": ["intensity"],
        "normalisation": {"kind": "ct-window"},
        "orientation": "axial",
        "about": "AAPM low-dose CT challenge, axial 256 x 256, as released with DDS "
                 "(Chung, Lee, Ye, ICLR 2024); 1M training steps.",
    },
}


def list_priors(root: str | Path | None = None) -> list[tuple[Path, PriorConfig | None, str]]:
    """(folder, config or None, problem) for every checkpoint folder under ``root``."""
    root = Path(root) if root else PRIORS_DIR
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out.append((d, read_config(d), ""))
        except PriorLoadError as exc:
            out.append((d, None, str(exc)))
    return out


def card_facts(folder: str | Path) -> dict[str, str]:
    """Key facts of a card.md: the '- key: value' lines for steps, hardware, wall time and
    the validation loss (empty where the card does not say)."""
    facts = {}
    try:
        text = (Path(folder) / "card.md").read_text()
    except OSError:
        return facts
    for line in text.splitlines():
        for key in ("steps", "hardware", "wall time", "validation loss (EMA weights)"):
            if line.startswith(f"- {key}:"):
                facts[key.split(" (")[0]] = line.split(":", 1)[1].strip()
    return facts


def resolve_prior_path(name_or_path: str | Path) -> Path:
    """A checkpoint folder from a path, or by name from the package's priors directory."""
    p = Path(name_or_path)
    if not p.exists() and (PRIORS_DIR / str(name_or_path)).is_dir():
        p = PRIORS_DIR / str(name_or_path)
    if not p.exists():
        known = ", ".join(d.name for d, *_ in list_priors()) or "none shipped yet"
        raise PriorLoadError(p, f"no such folder or shipped prior (shipped: {known})")
    return p


def resolve_prior(name_or_path: str | Path, device: torch.device | str = "cpu",
                  autocast: bool = True, compile: bool = False) -> Prior:
    """A prior from a folder path, or by name from the package's priors directory."""
    return load_prior(resolve_prior_path(name_or_path), device=device, autocast=autocast,
                      compile=compile)


def import_adm_checkpoint(pt_path: str | Path, out: str | Path, adm_config: dict, name: str,
                          modality: str, channels: list[str], normalisation: dict,
                          orientation: str | None, about: str,
                          weights_dtype: str = "float32") -> Path:
    """Convert a guided-diffusion ``.pt`` state dict into a checkpoint folder, unchanged.

    The file is read with ``torch.load(weights_only=True)``; keys and shapes must match the
    ADM built from ``adm_config`` exactly (strict loading).
    """
    from diffrecon.recon.diffusion.adm import ADMConfig, ADMUNet

    state = load_torch_state_dict(pt_path)
    cfg = ADMConfig.from_guided_diffusion(adm_config)
    net = ADMUNet(cfg)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise PriorLoadError(pt_path, f"weights do not match the {name} layout: "
                                      f"{str(exc).splitlines()[0][:300]}") from None
    config = PriorConfig(
        name=name, modality=modality, architecture="adm", network=cfg.to_dict(),
        image_size=cfg.image_size, channels=channels,
        normalisation=Normalisation(**normalisation), orientation=orientation,
        weights_dtype=weights_dtype,
    )
    n = sum(p.numel() for p in net.parameters())
    card = "\n".join([
        f"# {name}", "", about, "",
        f"- imported unchanged from `{Path(pt_path).name}` by `diffrecon prior import-dds`",
        f"- architecture: guided-diffusion UNet (ADM), {n:,} parameters, learn_sigma "
        "(the first half of the output channels is epsilon)",
        "- schedule: VP, linear betas 1e-4..0.02 over 1000 steps, epsilon prediction",
        f"- normalisation: {normalisation['kind']} (check the original training scripts "
        "before relying on absolute intensities)",
        "- licence and training data: see the DDS release; not verified here", "",
    ])
    return save_prior(out, net, config, card)


def import_dds(pt_path: str | Path, kind: str, out: str | Path,
               weights_dtype: str = "float32") -> Path:
    if kind not in DDS_CHECKPOINTS:
        raise ValueError(f"unknown DDS checkpoint kind {kind!r}; "
                         f"expected one of {', '.join(DDS_CHECKPOINTS)}")
    spec = DDS_CHECKPOINTS[kind]
    return import_adm_checkpoint(pt_path, out, spec["adm"], spec["name"], spec["modality"],
                                 spec["channels"], spec["normalisation"], spec["orientation"],
                                 spec["about"], weights_dtype)


def convert_prior(src: str | Path, out: str | Path, weights_dtype: str) -> Path:
    """Store a prior's weights anew in ``weights_dtype`` (e.g. int8: a quarter of float32's
    bytes); config and card as they were, the card noting the conversion."""
    folder = resolve_prior_path(src)
    prior = load_prior(folder)
    config = prior.config.model_copy(update={"weights_dtype": weights_dtype})
    config = PriorConfig.model_validate(config.model_dump())  # refuses an unknown dtype
    card = (folder / "card.md").read_text().rstrip("\n") + (
        f"\n\nWeights re-stored as {weights_dtype} (from {prior.config.weights_dtype}) by "
        "`diffrecon prior convert`.\n")
    sheet = folder / "samples.png"  # the card shows it; read before writing: out may be src
    png = sheet.read_bytes() if sheet.is_file() else None
    path = save_prior(out, prior.net, config, card)
    if png is not None:
        (path / "samples.png").write_bytes(png)
    return path
