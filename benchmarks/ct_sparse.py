"""Benchmark B3 (ct-sparse): 8, 16, 32 views and limited angle (0..89 degrees), parallel
beam, 183 detectors, on axial slices of example_ct (every 4th; --quick: every 16th).

Protocol: ../shared/BENCHMARKS.md (PSNR/SSIM with data range 1 in CT units). Prints the
table and writes JSON with the project's results model.

    .venv/bin/python benchmarks/ct_sparse.py [--quick] [--out benchmarks/results/ct_sparse.json]
        [--prior ct-axial-128 [--nfe 50 --cg-iters 5 --eta 1.0] [--dps]]

With --prior, DDS rows (and with --dps, DPS rows at 8 views on the first two slices: DPS
costs minutes per slice on a CPU) follow the classical ones. ``--samples K``: the diffusion
rows are the mean of K samples per slice (``diffrecon run --samples K``, with
``--branch-steps`` as there). ``--train``: the CT training slices
(testing.ct_training_slices) instead of example_ct, for choosing settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffrecon.recon import metrics
from diffrecon.recon.ct import CTProjector, cg_ls, fbp, tv_ct
from diffrecon.recon.diffusion.settings import DDSConfig, DDSTVConfig
from diffrecon.recon.diffusion.training import hardware_name
from diffrecon.results import ResultRecord, format_table, write_results
from diffrecon.testing import ct_slices, ct_training_slices

VOLUME = Path(__file__).resolve().parents[2] / "shared/data/ct/totalsegmentator/example_ct.nii.gz"
METHODS = {"fbp": fbp, "cg-ls": cg_ls, "admm-tv": tv_ct}


def diffusion_rows(prior, op, y, images, setting, args, n_cases, shown: dict | None = None
                   ) -> list[ResultRecord]:
    from diffrecon.config import CTSpec
    from diffrecon.recon.diffusion.dps import DPSConfig
    from diffrecon.recon.diffusion.run import run_diffusion

    rows = []
    dds = dict(nfe=args.nfe, cg_iters=args.cg_iters, eta=args.eta, gamma=args.gamma,
               branch_steps=args.branch_steps)
    sampler = {"dds": DDSConfig(**dds),
               # dds-tv with the flow's defaults: ADMM-TV's weight (CTSpec.tv_lam)
               "dds-tv": DDSTVConfig(**dds, tv_lam=CTSpec.model_fields["tv_lam"].default)}
    runs = [(m, sampler[m], slice(None)) for m in args.diffusion.split(",")]
    if args.dps and setting == "8":
        runs.append(("dps", DPSConfig(step_size=args.dps_step_size), slice(0, 2)))
    for name, cfg, sl in runs:
        k = 1 if name == "dps" else args.samples
        before = prior.evaluations
        t0 = time.perf_counter()
        x = run_diffusion([prior], cfg, lambda a, b: op, y[sl], samples=k).image
        dc = metrics.dc_residual(op, x, y[sl])
        x = metrics.ct_window(x)  # scored in the CT window (BENCHMARKS.md units)
        if shown is not None and sl == slice(None):
            shown[name if k == 1 else f"{name} (K={k})"] = x
        n = x.shape[0]
        secs = (time.perf_counter() - t0) / n
        ref = images[sl]
        rows.append(ResultRecord(
            scan=f"{_name(args)} ({n} slices)", modality="ct",
            method=name if k == 1 else f"{name} (K={k})",
            prior=prior.name, setting="limited 0-89 deg" if setting == "limited"
            else f"{setting} views", psnr=metrics.psnr(x, ref, data_range=1.0),
            ssim=metrics.ssim(x, ref, data_range=1.0), nmse=metrics.nmse(x, ref),
            dc_residual=dc, seconds=secs,
            nfe=(prior.evaluations - before) // (n * k)))
    return rows


def _figure(settings: list[dict], path: Path) -> None:
    """Rows: two slices (a third and two thirds through the list) per setting; columns: the
    images in ``settings``' order, CT units windowed to soft tissue (-160..240 HU)."""
    import numpy as np
    from PIL import Image

    lo, hi = (-160 + 1000) / 2000, (240 + 1000) / 2000
    rows = []
    for shown in settings:
        n = len(shown["truth"])
        for i in (n // 3, 2 * n // 3):
            rows.append(np.concatenate([np.clip((np.asarray(x[i], float) - lo) / (hi - lo), 0, 1)
                                        for x in shown.values()], axis=1))
    im = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    Image.fromarray(im).resize((im.shape[1] * 2, im.shape[0] * 2), Image.NEAREST).save(path)
    print(f"figure: {path} (columns: {', '.join(settings[0])})")


def _name(args) -> str:
    return "CT training" if args.train else f"B3{'-quick' if args.quick else ''}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/ct_sparse.json")
    ap.add_argument("--prior", default=None, help="add DDS rows with this prior")
    ap.add_argument("--nfe", type=int, default=DDSConfig.nfe)
    ap.add_argument("--cg-iters", type=int, default=DDSConfig.cg_iters)
    ap.add_argument("--eta", type=float, default=DDSConfig.eta, help="default: the flow's")
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--dps", action="store_true", help="add DPS rows (8 views, 2 slices)")
    ap.add_argument("--diffusion", default="dds", help="comma list of dds, dds-tv")
    ap.add_argument("--settings", default="8,16,32,limited",
                    help="comma list of 8, 16, 32 (views) and limited")
    ap.add_argument("--dps-step-size", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=1, help="diffusion rows: mean of K samples")
    ap.add_argument("--branch-steps", type=int, default=0)
    ap.add_argument("--train", action="store_true", help="CT training slices instead")
    ap.add_argument("--figure", default=None, help="PNG: two slices per setting in a soft-"
                    "tissue window (-160..240 HU): truth, ADMM-TV, the diffusion rows")
    args = ap.parse_args()
    prior = None
    if args.prior:
        from diffrecon.recon.diffusion.registry import resolve_prior

        prior = resolve_prior(args.prior)
    cases = ct_training_slices(VOLUME.parent) if args.train else \
        ct_slices(VOLUME, every=16 if args.quick else 4)
    images = torch.stack([c.image for c in cases]).double()
    records = []
    figure = []
    for setting in args.settings.split(","):
        shown = {"truth": images}
        op = CTProjector(cases[0].geometry(setting))
        y = torch.cat([c.sinogram(op) for c in cases])
        for name, fn in METHODS.items():
            t0 = time.perf_counter()
            x = fn(y, op)
            secs = (time.perf_counter() - t0) / len(cases)
            dc = metrics.dc_residual(op, x, y)
            x = metrics.ct_window(x)  # scored in the CT window (BENCHMARKS.md units)
            if name == "admm-tv":
                shown[name] = x
            records.append(ResultRecord(
                scan=f"{_name(args)} ({len(cases)} slices)", modality="ct",
                method=name, setting="limited 0-89 deg" if setting == "limited"
                else f"{setting} views", psnr=metrics.psnr(x, images, data_range=1.0),
                ssim=metrics.ssim(x, images, data_range=1.0), nmse=metrics.nmse(x, images),
                dc_residual=dc, seconds=secs))
        if prior is not None:
            records += diffusion_rows(prior, op, y, images, setting, args, len(cases), shown)
        figure.append(shown)
    if args.figure:
        _figure(figure, Path(args.figure))
    print(f"B3 on {hardware_name(torch.device('cpu'))}; seconds per slice")
    print(format_table(records))
    print(f"\nwritten: {write_results(records, args.out)}")


if __name__ == "__main__":
    main()
