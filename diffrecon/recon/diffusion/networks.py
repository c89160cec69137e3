"""Score networks by name: MONAI's DiffusionModelUNet for our priors, ADM for DDS's.

Every network here is called as ``net(x, t) -> eps`` with x (N, C, H, W) and integer
timesteps t (N,); an ADM model trained with ``learn_sigma`` returns 2C channels and the
first C are the noise prediction. A network trained with position channels (patch
training, issue "Priors that win") takes two more input channels, each pixel's row and
column position in the image (:func:`position_channels`); :class:`EpsNetwork` appends them.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("monai-diffusion-unet", "adm")


def position_channels(n: int, h: int, w: int, top: torch.Tensor | int = 0,
                      left: torch.Tensor | int = 0, size: tuple[int, int] | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """(n, 2, h, w): the row and column of each pixel of an h x w window whose first pixel
    is (``top``, ``left``) (ints or one per image) in an image of ``size`` (default (h, w)),
    as positions in [-1, 1] across that image (pixel centres; windows reaching outside it,
    e.g. padding, continue the line beyond +-1)."""
    size_h, size_w = size or (h, w)
    top = torch.as_tensor(top, device=device).reshape(-1, 1).float()
    left = torch.as_tensor(left, device=device).reshape(-1, 1).float()
    rows = (2 * (top + torch.arange(h, device=device)) + 1) / size_h - 1  # (n or 1, h)
    cols = (2 * (left + torch.arange(w, device=device)) + 1) / size_w - 1
    return torch.stack([rows[:, :, None].expand(n, h, w), cols[:, None, :].expand(n, h, w)], 1)


class EpsNetwork(nn.Module):
    """Wraps a network so that it returns exactly the epsilon channels; with ``positions``
    it appends the pixels' position channels to the input first (``pos``: given, e.g. for
    padded images or crops, else the whole input's own grid)."""

    def __init__(self, net: nn.Module, architecture: str, channels: int,
                 positions: bool = False) -> None:
        super().__init__()
        self.net = net
        self.architecture = architecture
        self.channels = channels
        self.positions = positions

    def forward(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None
                ) -> torch.Tensor:
        if self.positions:
            if pos is None:
                pos = position_channels(x.shape[0], *x.shape[-2:], device=x.device)
            x = torch.cat([x, pos.to(x)], 1)
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
                    head_channels: int = 32, positions: bool = False) -> dict:
    """Arguments of a MONAI DiffusionModelUNet of a given width (channels = base * mult);
    ``positions``: two more input channels (the pixels' positions) than it outputs."""
    return {
        "spatial_dims": 2,
        "in_channels": in_channels + 2 * positions,
        "out_channels": in_channels,
        "channels": [base * m for m in mult],
        "attention_levels": list(attention),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": head_channels,
        "norm_num_groups": min(32, base),
        "resblock_updown": False,
    }
