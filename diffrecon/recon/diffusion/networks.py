"""Score networks by name: MONAI's DiffusionModelUNet for our priors, ADM for DDS's.

Every network here is called as ``net(x, t) -> eps`` with x (N, C, H, W) and integer
timesteps t (N,); an ADM model trained with ``learn_sigma`` returns 2C channels and the
first C are the noise prediction.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("monai-diffusion-unet", "adm")


class EpsNetwork(nn.Module):
    """Wraps a network so that it returns exactly the epsilon channels."""

    def __init__(self, net: nn.Module, architecture: str, channels: int) -> None:
        super().__init__()
        self.net = net
        self.architecture = architecture
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x, t)
        return out[:, : self.channels]


def build_network(architecture: str, args: dict) -> nn.Module:
    """The bare network (its state dict has the architecture's own key names)."""
    if architecture == "monai-diffusion-unet":
        from monai.networks.nets import DiffusionModelUNet

        kw = dict(args)
        kw.setdefault("spatial_dims", 2)
        for key in ("channels", "attention_levels", "num_res_blocks", "num_head_channels"):
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        return DiffusionModelUNet(**kw)
    if architecture == "adm":
        from diffrecon.recon.diffusion.adm import ADMConfig, ADMUNet

        cfg = ADMConfig(**{**args,
                           "attention_resolutions": tuple(args["attention_resolutions"]),
                           "channel_mult": tuple(args["channel_mult"])})
        return ADMUNet(cfg)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def monai_unet_args(in_channels: int, base: int = 32, mult: tuple[int, ...] = (1, 2, 2, 4),
                    attention: tuple[bool, ...] = (False, False, False, True),
                    num_res_blocks: int = 1,
                    head_channels: int = 32) -> dict:
    """Arguments of a MONAI DiffusionModelUNet of a given width (channels = base * mult)."""
    return {
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "channels": [base * m for m in mult],
        "attention_levels": list(attention),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": head_channels,
        "norm_num_groups": min(32, base),
        "resblock_updown": False,
    }
