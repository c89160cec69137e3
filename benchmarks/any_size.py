"""Diffusion at any matrix size (issue: real scans of every shape): B1-quick slices resampled
to other matrices (the truth resampled likewise, the 16 simulation coil maps resampled and
renormalised, phase and noise as B1 draws them), reconstructed with the 128 x 128 brain
prior run at the scan's own size (the network is convolutional; Prior.eps pads to its
multiple) against CG-SENSE and ADMM-TV at each size.

    .venv/bin/python benchmarks/any_size.py [--sizes 128,96,160,180x230,256] [--quick]
    .venv/bin/python benchmarks/any_size.py --b2 --sizes 128,112,144,160 \
        --out benchmarks/results/any_size_b2.json   # the real scan, field of view padded

Writes benchmarks/results/any_size.json (PSNR / SSIM means over the slices, per size,
setting and method) and a figure of one slice per size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffrecon.common.seeds import benchmark_seed
from diffrecon.config import ReconConfig
from diffrecon.recon import classical, coils, metrics
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.run import pixel_grid, sample
from diffrecon.recon.diffusion.settings import DDSConfig, DDSTVConfig
from diffrecon.recon.masks import expand_mask, mask_1d
from diffrecon.recon.operators import Composed, FourierResample, Sense
from diffrecon.testing import b1_case_resized, b1_cases

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"


def b2_resized(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The real 16-coil scan (B2) with its field of view padded or cropped in image space to
    ``shape`` at the same pixel size (coil images padded with zeros / cropped, then back to
    k-space), and its SENSE reference made the same way B2 makes it."""
    from diffrecon.common.geometry import pad_or_crop
    from diffrecon.recon.classical import sense_reference
    from diffrecon.recon.fft import fft2c, ifft2c
    from diffrecon.testing import b2_case

    case = b2_case(DATA / "raw_twix" / "invivo_brain_16ch_gre.dat")
    k = fft2c(pad_or_crop(ifft2c(case.kspace), shape)).to(torch.complex64)
    return k, sense_reference(k[None])[0]


def reconstruct(method: str, prior, ku: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor,
                resample: FourierResample | None, tv_lam: float) -> torch.Tensor:
    """One method on one slice; the diffusion methods on the prior's grid when ``resample``
    maps it onto the scan's."""
    if method == "zero-filled":
        return classical.zero_filled(ku, mask)
    if method == "cg-sense":
        return classical.cg_sense(ku, maps, mask)
    if method == "admm-tv":
        return classical.tv_sense(ku, maps, mask)
    cfg = DDSConfig() if method == "dds" else DDSTVConfig(tv_lam=tv_lam)
    op = Sense(maps, mask)
    if resample is None:
        return sample(prior, op, ku, cfg)
    # on the prior's grid nothing zeroes where no coil sees: the scan's support, at the end
    return resample.forward(sample(prior, Composed(op, resample), ku, cfg)) * op.support()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="128,96,160,180x230,256")
    ap.add_argument("--settings", default="4,8", help="accelerations (equispaced)")
    ap.add_argument("--quick", action="store_true", help="2 slices instead of 8")
    ap.add_argument("--out", default="benchmarks/results/any_size.json")
    ap.add_argument("--b2", action="store_true",
                    help="the real 16-coil scan padded / cropped in image space instead")
    ap.add_argument("--grid", choices=["native", "prior", "pixel"], default="native",
                    help="diffusion on the scan's own grid (native), on the prior's 128 x "
                         "128 grid of the same field of view (prior), or on the grid of the "
                         "same field of view at the prior's pixel size (pixel: B1 resized "
                         "keeps its 256 mm field of view, B2 its 2 mm pixels), the data "
                         "consistency always on the scan's grid")
    ap.add_argument("--methods", default="zero-filled,cg-sense,admm-tv,dds,dds-tv")
    args = ap.parse_args()
    cases = b1_cases(DATA / "ixi_t1", DATA / "b1_simulation_maps_16ch_128.npy", quick=True)
    cases = cases[:2] if args.quick else cases
    maps = torch.from_numpy(np.load(DATA / "b1_simulation_maps_16ch_128.npy"))
    prior = resolve_prior("brain-t1-axial-128")
    tv_lam = ReconConfig.model_fields["tv_lam"].default
    rows, figure = [], {}
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x")) if "x" in size else (int(size),) * 2
        for accel in (int(a) for a in args.settings.split(",")):
            scores: dict[str, list] = {}
            t0 = time.perf_counter()
            for c in cases[:1] if args.b2 else cases:
                k, truth = b2_resized((h, w)) if args.b2 else b1_case_resized(c, maps, (h, w))
                vol, z = ("invivo_brain_16ch_gre", 0) if args.b2 else (c.volume, c.z)
                seed = benchmark_seed(vol, z, f"{accel}/equispaced")
                mask = expand_mask(mask_1d("equispaced", h, accel, seed), w)
                ku = (k * mask)[None]
                smaps = coils.estimate_coil_maps(ku, mask)
                grid = (prior.config.image_size,) * 2
                if args.grid == "pixel":  # as --grid pixel picks it from the header
                    pixel = (2.0, 2.0) if args.b2 else (256 / h, 256 / w)
                    grid = pixel_grid(prior, (h, w), pixel)
                resample = FourierResample(grid, (h, w))
                mapped = args.grid != "native" and grid != (h, w)

                out = {m: reconstruct(m, prior, ku, smaps, mask, resample if mapped else None,
                                      tv_lam)
                       for m in args.methods.split(",")}
                for name, x in out.items():
                    scores.setdefault(name, []).append(
                        (metrics.psnr(x, truth[None]), metrics.ssim(x, truth[None])))
                if c is cases[0] and accel == 8 and {"admm-tv", "dds", "dds-tv"} <= set(out):
                    figure[size] = [truth.numpy()] + [x[0].abs().numpy() for x in
                                                      (out["admm-tv"], out["dds"],
                                                       out["dds-tv"])]
            for name, v in scores.items():
                rows.append({"size": f"{h}x{w}", "R": accel, "method": name,
                             "psnr": round(float(np.mean([p for p, _ in v])), 2),
                             "ssim": round(float(np.mean([s for _, s in v])), 4),
                             "slices": len(v)})
                print(f"{h}x{w} R={accel} {name:12s} PSNR {rows[-1]['psnr']:6.2f} "
                      f"SSIM {rows[-1]['ssim']:.4f}", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps({"prior": prior.name, "rows": rows}, indent=2) + "\n")
    _figure(figure, Path(args.out).with_suffix(".png"))


def _figure(figure: dict, path: Path) -> None:
    """One row per size: truth, ADMM-TV, DDS, DDS-TV (R=8), each scaled to its truth."""
    from PIL import Image

    tiles = []
    if not figure:
        return
    for imgs in figure.values():
        hi = float(imgs[0].max()) or 1.0
        row = [np.clip(i / hi, 0, 1) for i in imgs]
        h = max(i.shape[0] for i in row)
        row = [np.pad(i, ((0, h - i.shape[0]), (0, 4))) for i in row]
        tiles.append(np.concatenate(row, axis=1))
    wmax = max(t.shape[1] for t in tiles)
    sheet = np.concatenate([np.pad(t, ((0, 4), (0, wmax - t.shape[1]))) for t in tiles])
    Image.fromarray((255 * sheet).astype(np.uint8)).save(path)


if __name__ == "__main__":
    main()
