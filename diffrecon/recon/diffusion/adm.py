"""An ADM (guided-diffusion) compatible UNet, so the published DDS checkpoints load unchanged.

The module tree, parameter names and arithmetic follow OpenAI's guided-diffusion
``UNetModel`` (MIT licence) as the DDS checkpoints were trained with it: residual blocks
with scale-shift conditioning on the timestep embedding, residual up/down-sampling
(``resblock_updown``), legacy QKV attention at the listed resolutions and in the middle
block, GroupNorm(32) computed in float32. Only the parts the DDS configs use are built:
2D, no class conditioning. Written here from the architecture's description; see
``../shared/vectors/adm`` for the layouts it must reproduce.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: guided-diffusion's channel multipliers when a config leaves ``channel_mult`` empty
#: (320 x 320, the DDS knee model, uses the 256 entry: its checkpoint has that layout)
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    320: (1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


@dataclass
class ADMConfig:
    image_size: int
    in_channels: int
    out_channels: int
    num_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    resamp_with_conv: bool = True
    use_new_attention_order: bool = False
    learn_sigma: bool = True

    @classmethod
    def from_guided_diffusion(cls, cfg: dict) -> ADMConfig:
        """Build from a guided-diffusion / DDS style config dict (strings as in their YAML)."""
        size = int(cfg["image_size"])
        mult = cfg.get("channel_mult", "")
        if isinstance(mult, str):
            mult = tuple(float(m) for m in mult.split(",")) if mult else DEFAULT_CHANNEL_MULT[size]
        att = cfg.get("attention_resolutions", "16")
        if isinstance(att, str):
            att = tuple(int(a) for a in att.split(",") if a)
        if cfg.get("class_cond"):
            raise ValueError("class-conditional ADM models are not supported")
        in_ch = int(cfg["in_channels"])
        learn_sigma = bool(cfg.get("learn_sigma", False))
        out_ch = int(cfg.get("out_channels", in_ch * (2 if learn_sigma else 1)))
        return cls(
            image_size=size,
            in_channels=in_ch,
            out_channels=out_ch,
            num_channels=int(cfg["num_channels"]),
            num_res_blocks=int(cfg["num_res_blocks"]),
            attention_resolutions=tuple(int(a) for a in att),
            channel_mult=tuple(float(m) for m in mult),
            num_heads=int(cfg.get("num_heads", 4)),
            num_head_channels=int(cfg.get("num_head_channels", -1)),
            num_heads_upsample=int(cfg.get("num_heads_upsample", -1)),
            dropout=float(cfg.get("dropout", 0.0)),
            use_scale_shift_norm=bool(cfg.get("use_scale_shift_norm", True)),
            resblock_updown=bool(cfg.get("resblock_updown", True)),
            resamp_with_conv=bool(cfg.get("resamp_with_conv", True)),
            use_new_attention_order=bool(cfg.get("use_new_attention_order", False)),
            learn_sigma=learn_sigma,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        return d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) evaluated in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class _Resample(nn.Module):
    """Nearest 2x upsampling, or 2x downsampling (strided conv ``op`` or average pooling)."""

    def __init__(self, channels: int, use_conv: bool, up: bool) -> None:
        super().__init__()
        self.up = up
        self.use_conv = use_conv
        if up and use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif not up:
            self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                       else nn.AvgPool2d(kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if self.use_conv else x
        return self.op(x)


class TimestepBlock(nn.Module):
    def forward(self, x: torch.Tensor,  # pragma: no cover - interface
                emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose timestep-aware children also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, dropout: float,
                 out_channels: int | None = None, use_scale_shift_norm: bool = True,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if self.updown:
            self.h_upd = _Resample(channels, False, up=up)
            self.x_upd = _Resample(channels, False, up=up)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions; legacy (heads-then-qkv) or new (qkv-then-heads) split."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 new_order: bool = False) -> None:
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels not divisible by {num_head_channels}")
            num_heads = channels // num_head_channels
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        n, length = self.num_heads, qkv.shape[-1]
        ch = c // n
        if self.new_order:
            q, k, v = (t.reshape(b * n, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * n, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel (2D, unconditional): forward(x, t) -> (N, C_out, H, W)."""

    def __init__(self, cfg: ADMConfig) -> None:
        super().__init__()
        self.config = cfg
        mc = cfg.num_channels
        ted = mc * 4
        attention_ds = {cfg.image_size // r for r in cfg.attention_resolutions}
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(ch_in: int, ch_out: int, **kw: bool):
            return ResBlock(ch_in, ted, cfg.dropout, ch_out,
                            use_scale_shift_norm=cfg.use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int):
            return AttentionBlock(ch, heads, cfg.num_head_channels, cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        chans = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = (res(ch, ch, down=True) if cfg.resblock_updown
                        else _Resample(ch, cfg.resamp_with_conv, up=False))
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, cfg.num_heads),
                                                    res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else _Resample(ch, cfg.resamp_with_conv, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(),
            nn.Conv2d(int(cfg.channel_mult[0] * mc), cfg.out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
