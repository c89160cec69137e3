"""DDS throughput on a GPU: the ADM network of the official DDS MRI config (random weights),
320 x 320, 15 coils, 50 NFE, 5 CG iterations per step.

Baseline: one slice at a time in float32 (the reference implementation's way). Fast path:
the product's own (``Prior`` on CUDA: bf16 autocast, channels-last; ``--compile``: the CLI's
--compile), slices batched. Prints slices per second, the ratio and peak memory. Runs on
CPU too (small --size for a smoke test).

    python3 benchmarks/device/dds_throughput.py [--slices 8] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from diffrecon.recon.diffusion.adm import ADMConfig, ADMUNet
from diffrecon.recon.diffusion.dds import DDSConfig, dds_sample
from diffrecon.recon.diffusion.networks import EpsNetwork
from diffrecon.recon.diffusion.prior import Normalisation, Prior, PriorConfig
from diffrecon.recon.masks import make_mask
from diffrecon.recon.operators import Sense
from diffrecon.recon.simulation import birdcage_maps

OFFICIAL_MRI = {"image_size": 320, "in_channels": 2, "out_channels": 4, "num_channels": 256,
                "num_res_blocks": 1, "attention_resolutions": "16", "num_heads": 4,
                "num_head_channels": 64, "learn_sigma": True, "use_scale_shift_norm": True,
                "resblock_updown": True}


def adm_config(size: int, channels: int) -> ADMConfig:
    """The official DDS MRI network at another size or width."""
    if size not in (320, 256, 128, 64):
        raise SystemExit("size must be one of 64, 128, 256, 320")
    return ADMConfig.from_guided_diffusion(dict(OFFICIAL_MRI, image_size=size,
                                                num_channels=channels,
                                                num_head_channels=min(64, channels)))


def build(size: int, channels: int, dev, fast: bool, compile_: bool):
    adm = adm_config(size, channels)
    net = ADMUNet(adm).eval()
    pc = PriorConfig(name="timing", modality="mri", architecture="adm", network=adm.to_dict(),
                     image_size=size, channels=["real", "imag"],
                     normalisation=Normalisation(kind="complex"))
    return Prior(EpsNetwork(net, "adm", 2), pc, device=dev, autocast=fast, compile=compile_)


def run(prior, slices: int, batch: int, size: int, coils: int, nfe: int, dev) -> float:
    maps = birdcage_maps(coils, (size, size)).to(dev)
    mask = make_mask("equispaced", (size, size), 4).to(dev)
    y = Sense(maps, mask).forward(torch.randn(slices, size, size, dtype=torch.complex64,
                                              device=dev))
    cfg = DDSConfig(nfe=nfe, cg_iters=5)
    dds_sample(prior, Sense(maps[None].expand(min(batch, slices), -1, -1, -1), mask),
               y[:min(batch, slices)], DDSConfig(nfe=2, cg_iters=5))  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, slices, batch):
        yb = y[s:s + batch]
        dds_sample(prior, Sense(maps[None].expand(len(yb), -1, -1, -1), mask), yb, cfg)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return slices / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--nfe", type=int, default=50)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"DDS throughput on {name}: ADM {args.channels} channels, {args.size}^2, "
          f"{args.coils} coils, {args.nfe} NFE, 5 CG", flush=True)
    base = build(args.size, args.channels, dev, False, False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r0 = run(base, args.slices, 1, args.size, args.coils, args.nfe, dev)
    m0 = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    print(f"baseline float32, one slice at a time: {r0:.3f} slices/s, peak {m0:.1f} GiB",
          flush=True)
    fast = build(args.size, args.channels, dev, True, args.compile)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r1 = run(fast, args.slices, args.batch, args.size, args.coils, args.nfe, dev)
    m1 = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    print(f"fast: bf16 autocast, batch {args.batch}, channels-last"
          f"{', torch.compile' if args.compile else ''}: {r1:.3f} slices/s, peak {m1:.1f} GiB")
    print(f"ratio fast / baseline: {r1 / r0:.2f}x")


if __name__ == "__main__":
    main()
