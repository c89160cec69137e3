"""Calibration of the diffusion methods' std maps (issue 23): does the spread of K samples
say where the error is?

For each setting, K samples per slice are drawn in one batch (recon.diffusion.run, as
``--samples K`` draws them) and the first 4, 8, 16 of them are scored with
recon.uncertainty.calibration: per slice Spearman's rho of the 5 x 5 local means of
|mean - truth| and std, the coverage of mean +- 2 std over the truth's object, and the mean
error over the mean std; plus the PSNR of the K-sample mean and of one sample.

A calibration factor c (std -> c std) is fitted on training-split slices only (IXI's
training volumes; CT: the aorta and pulmonary volumes): the 95th percentile of
|error| / (2 std) over their object pixels, pooled over the settings, at K = 8. The test rows
report coverage raw and with c.

    .venv/bin/python benchmarks/uncertainty.py [--mri-settings 4/equispaced,8/equispaced]
        [--ct-views 8,16] [--max-k 16] [--out benchmarks/results/uncertainty.json]

MRI: B1-quick test slices (8), the brain prior; CT: B3 slices of example_ct (every 16th)
with the CT prior. Minutes per setting on a 2-core CPU. The sheet beside the JSON shows the
first test slice of each setting: truth, K-sample mean, |error|, std (error and std on one
grey scale).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffrecon.recon import coils, metrics
from diffrecon.recon.diffusion.dds import DDSConfig
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.run import draw_samples, sample_statistics
from diffrecon.recon.operators import Sense
from diffrecon.recon.uncertainty import calibration, object_support
from diffrecon.testing import b1_case, b1_cases, ct_slices, ixi_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MRI = SHARED / "mri"
CT = SHARED / "ct" / "totalsegmentator"
TRAIN_Z = (65, 85)  # training-split slices for the calibration factor


def mri_samples(cases, accel: int, kind: str, prior, k: int) -> list[tuple]:
    """Per slice (samples (K, H, W) magnitude-comparable complex, truth)."""
    out = []
    for case in cases:
        mask = case.mask(accel, kind)
        ku = (case.kspace * mask)[None]
        op = Sense(coils.estimate_coil_maps(ku, mask), mask)
        run = _draw(prior, lambda a, b, op=op: op, ku, k)
        out.append((run, case.reference.numpy()))
    return out


def ct_samples(cases, views: int, prior, k: int) -> list[tuple]:
    from diffrecon.recon.ct import CTProjector

    geom = cases[0].geometry(str(views))
    op = CTProjector(geom)
    out = []
    for case in cases:
        y = case.sinogram(op).float()
        run = _draw(prior, lambda a, b: op, y, k)
        out.append((run, case.image.numpy()))
    return out


def _draw(prior, make_op, y, k: int) -> np.ndarray:
    """K samples of one slice, (K, H, W), drawn in one batch as --samples K draws them."""
    return draw_samples([prior], DDSConfig(), make_op, y, samples=k)[0][0].numpy()


def score(runs: list[tuple], k: int, factor: float, ct: bool) -> dict:
    """The calibration figures of the first k samples of every slice, averaged over slices."""
    rows = {"spearman": [], "coverage": [], "coverage_calibrated": [], "error_over_std": [],
            "psnr_mean": [], "psnr_one": []}
    for x, truth in runs:
        mean, std = sample_statistics(torch.from_numpy(x[:k])[None])
        mean, std = mean[0].numpy(), std[0].numpy()
        show = metrics.ct_window if ct else np.abs
        rng = 1.0 if ct else None
        c = calibration(show(mean), std, truth)
        cc = calibration(show(mean), factor * std, truth)
        rows["spearman"].append(c["spearman"])
        rows["coverage"].append(c["coverage"])
        rows["coverage_calibrated"].append(cc["coverage"])
        rows["error_over_std"].append(c["error_over_std"])
        rows["psnr_mean"].append(metrics.psnr(show(mean), truth, rng))
        rows["psnr_one"].append(metrics.psnr(show(x[0]), truth, rng))
    return {key: float(np.mean(v)) for key, v in rows.items()}


def sheet(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """One row per (label, truth, mean, std): truth | mean | |mean - truth| | std, the error
    and the std on one grey scale (0 to the 99.5th percentile of the error), so that a
    std map that is too small or in the wrong place shows."""
    from PIL import Image, ImageDraw

    rows = []
    for label, truth, mean, std in items:
        err = np.abs(mean - truth)
        top = max(float(np.percentile(err, 99.5)), 1e-12)
        tiles = [truth / truth.max(), mean / truth.max(), err / top, std / top]
        row = np.concatenate([np.pad(np.clip(t, 0, 1), 2) for t in tiles], axis=1)
        rows.append((label, row))
    im = Image.fromarray((np.concatenate([r for _, r in rows]) * 255).astype(np.uint8))
    im = im.resize((im.width * 2, im.height * 2), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    h = im.height // len(rows)
    for i, (label, _) in enumerate(rows):
        draw.text((6, i * h + 4), label, fill=255)
    im.save(path)


def fit_factor(runs: list[tuple], k: int, ct: bool) -> float:
    """The 95th percentile of |error| / (2 std) over the truth's object pixels, pooled."""
    ratios = []
    for x, truth in runs:
        mean, std = sample_statistics(torch.from_numpy(x[:k])[None])
        mean, std = mean[0].numpy(), std[0].numpy()
        show = metrics.ct_window(mean) if ct else np.abs(mean)
        sup = object_support(truth)[0]
        ratios.append(np.abs(show - truth)[sup] / np.maximum(2 * std[sup], 1e-12))
    return float(np.percentile(np.concatenate(ratios), 95))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mri-settings", default="4/equispaced,4/random,8/equispaced,8/random")
    ap.add_argument("--ct-views", default="8,16", help="comma list; empty: no CT rows")
    ap.add_argument("--max-k", type=int, default=16)
    ap.add_argument("--fit-k", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/uncertainty.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ks = [k for k in (4, 8, 16) if k <= args.max_k]
    result: dict = {"ks": ks, "fit_k": args.fit_k, "rows": [], "factors": {}}
    t_start = time.perf_counter()
    figure: list = []  # the first test slice of each setting: truth, mean, error, std

    settings = [s.split("/") for s in args.mri_settings.split(",") if s]
    if settings:
        prior = resolve_prior("brain-t1-axial-128")
        maps = torch.from_numpy(np.load(MRI / "b1_simulation_maps_16ch_128.npy"))
        train_vols, _ = ixi_split(MRI / "ixi_t1")
        train = [b1_case(v, z, maps) for v in train_vols[:2] for z in TRAIN_Z]
        test = b1_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy", quick=True)
        fit_runs = [r for a, kind in settings
                    for r in mri_samples(train, int(a), kind, prior, args.fit_k)]
        factor = fit_factor(fit_runs, args.fit_k, ct=False)
        result["factors"]["mri"] = factor
        print(f"MRI calibration factor (training slices {len(fit_runs)}): {factor:.2f}",
              flush=True)
        for a, kind in settings:
            runs = mri_samples(test, int(a), kind, prior, max(ks))
            x, truth = runs[0]
            mean, std = sample_statistics(torch.from_numpy(x)[None])
            figure.append((f"R={a} {kind}", truth, np.abs(mean[0].numpy()), std[0].numpy()))
            for k in ks:
                row = {"benchmark": f"B1-quick ({len(test)} slices)", "setting":
                       f"R={a} {kind}", "k": k, **score(runs, k, factor, ct=False)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)

    views = [int(v) for v in args.ct_views.split(",") if v]
    if views:
        prior = resolve_prior("ct-axial-128")
        train = (ct_slices(CT / "aorta_ct_cropped.nii.gz", every=16)[:2]
                 + ct_slices(CT / "pulmonary_ct_cropped.nii.gz", every=16)[:2])
        test = ct_slices(CT / "example_ct.nii.gz", every=16)
        fit_runs = [r for v in views for r in ct_samples(train, v, prior, args.fit_k)]
        factor = fit_factor(fit_runs, args.fit_k, ct=True)
        result["factors"]["ct"] = factor
        print(f"CT calibration factor (training slices {len(fit_runs)}): {factor:.2f}",
              flush=True)
        for v in views:
            runs = ct_samples(test, v, prior, max(ks))
            x, truth = runs[0]
            mean, std = sample_statistics(torch.from_numpy(x)[None])
            figure.append((f"{v} views", truth, metrics.ct_window(mean[0].numpy()),
                           std[0].numpy()))
            for k in ks:
                row = {"benchmark": f"B3-quick ({len(test)} slices)", "setting": f"{v} views",
                       "k": k, **score(runs, k, factor, ct=True)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    result["seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(result, indent=1))
    if figure:
        sheet(figure, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
