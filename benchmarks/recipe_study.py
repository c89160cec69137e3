"""Training recipes at equal compute (issue "Priors that win", item 3): each candidate trains
the shipped brain prior's network (2.7 M parameters, `diffrecon train`'s defaults) from
scratch on IXI's 26 training volumes for the same wall time on one CPU thread, all
candidates side by side (one process each), then is scored on the *training split's*
validation volumes (never the test volumes): Tweedie denoising PSNR at t in {20, 50, 100,
200, 400, 700} (prior_quality.py's measure on B1-quick's slice positions), the epsilon
validation loss (comparable across parameterisations), and DDS at R=4 and R=8 equispaced on
4 training slices (as benchmarks/gap_study.py's training set).

    .venv/bin/python benchmarks/recipe_study.py [--minutes 40]
        [--candidates baseline,v-minsnr] [--out benchmarks/results/recipe_study.json]

Candidates: baseline (epsilon, uniform weights: today's recipe), v-minsnr (v prediction,
min-SNR-5), minsnr (epsilon, min-SNR-5), augment (today's + rotations and scalings), jitter
(today's + left-right flips and gamma jitter), patch (64 x 64 crops, 4 per image, on 3 of 4
steps), patch-augment (both), patch32 (32 x 32 crops, 16 per image). Rows of candidates
not rerun stay in --out (compare only rows run at the same --minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MRI = ROOT.parent / "shared" / "data" / "mri"
CANDIDATES = {
    "baseline": {},
    "v-minsnr": {"prediction": "v", "min_snr": 5.0},
    "minsnr": {"min_snr": 5.0},
    "augment": {"augment": True},
    "jitter": {"jitter": True},
    "patch": {"patch": 64},
    "patch-augment": {"patch": 64, "augment": True},
    "patch32": {"patch": 32},
}


def train_one(name: str, minutes: float, work: Path) -> None:
    """One candidate, in this process, on one thread."""
    torch.set_num_threads(1)
    from diffrecon.flows.train import volume_files
    from diffrecon.io.training_slices import load_slices, split_by_volume
    from diffrecon.recon.diffusion.training import TrainConfig, train

    files = volume_files([str(MRI / "ixi_t1")], first=26)
    train_files, val_files = split_by_volume(files, 0.1)
    cfg = TrainConfig(name=f"recipe-{name}", modality="mri", steps=10**7,
                      checkpoint_every=10**7, max_seconds=minutes * 60, n_samples=4,
                      **CANDIDATES[name])
    r = train(load_slices(train_files, "mri", "axial", 128),
              load_slices(val_files, "mri", "axial", 128), cfg, work / name, work / f".{name}")
    (work / f"{name}.json").write_text(json.dumps(
        {"steps": r.step, "images": r.step * cfg.batch_size, "val_loss": r.val_loss,
         "seconds": r.seconds, "val_volumes": [f.name for f in val_files]}))


def score(name: str, work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gap_study import SETTINGS, prepare
    from prior_quality import denoising_psnr, mri_slices

    from diffrecon.recon import metrics
    from diffrecon.recon.diffusion.checkpoint import load_prior
    from diffrecon.recon.diffusion.dds import dds_sample
    from diffrecon.testing import b1_training_cases

    info = json.loads((work / f"{name}.json").read_text())
    prior = load_prior(work / name)
    images, names = mri_slices([MRI / "ixi_t1" / v for v in info["val_volumes"]])
    row = {"candidate": name, **CANDIDATES[name], **info,
           "denoising_psnr": denoising_psnr(prior, images, names)}
    cases = b1_training_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy")
    for accel, kind in SETTINGS:
        slices = prepare(cases, accel, kind)
        row[f"dds R={accel} {kind}"] = float(np.mean(
            [metrics.psnr(dds_sample(prior, op, y), r[None]) for op, y, r in slices]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--candidates", default="baseline,v-minsnr")
    ap.add_argument("--out", default="benchmarks/results/recipe_study.json")
    ap.add_argument("--work", default=None, help="folder for the candidates' priors")
    ap.add_argument("--train-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="recipes-"))
    if args.train_one:
        return train_one(args.train_one, args.minutes, work)
    names = args.candidates.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--train-one", n, "--minutes",
                               str(args.minutes), "--work", str(work)], env=env)
             for n in names]
    if any(p.wait() for p in procs):
        raise SystemExit("a candidate failed")
    torch.set_num_threads(2)
    rows = [score(n, work) for n in names]
    out_path = Path(args.out)
    kept = []
    if out_path.exists():  # earlier candidates stay, marked with their own minutes
        before = json.loads(out_path.read_text())
        kept = [{"minutes": before["minutes"], **r} for r in before["candidates"]
                if r["candidate"] not in names]
    out = {"minutes": args.minutes, "threads_per_candidate": 1, "work": str(work),
           "candidates": kept + [{"minutes": args.minutes, **r} for r in rows]}
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(r["candidate"], r["steps"], "steps", f"val {r['val_loss']:.4f}",
              {k: round(v, 2) for k, v in r["denoising_psnr"].items()},
              f"DDS {r['dds R=4 equispaced']:.2f} / {r['dds R=8 equispaced']:.2f}")


if __name__ == "__main__":
    main()
