"""Prior quality, the fitness function for training priors (issue "Priors that win"): per
prior, Tweedie denoising PSNR on the test slices (B1-quick's for brain priors, as complex
images with B1's smooth phase; B3's for CT priors) at t in {20, 50, 100, 200, 400, 700}
(noise and phase seeded per slice), the card's validation loss, and its sample sheet. The
DDS rows come from brain_16c.py / ct_sparse.py (``--diffusion dds,dds-tv``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prior_quality.py PRIOR [PRIOR ...]
        [--out benchmarks/results/prior_quality.json]

PRIOR is a shipped name or a checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from diffrecon.common.seeds import benchmark_rng
from diffrecon.recon import metrics
from diffrecon.recon.diffusion.registry import resolve_prior, resolve_prior_path
from diffrecon.recon.simulation import smooth_phase
from diffrecon.testing import B1_QUICK_SLICES, b1_image, ct_slices, ixi_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMESTEPS = (20, 50, 100, 200, 400, 700)


def test_slices(modality: str) -> tuple[torch.Tensor, list[str]]:
    """Test images in data units: MRI complex (B1-quick with B1's phase), CT in CT units."""
    if modality == "ct":
        cases = ct_slices(SHARED / "ct/totalsegmentator/example_ct.nii.gz", every=4)
        return torch.stack([c.image for c in cases]), [f"{c.volume}/{c.z}" for c in cases]
    _, test = ixi_split(SHARED / "mri/ixi_t1")
    return mri_slices(test[:2])


def mri_slices(volumes: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """B1-quick's slice positions of IXI ``volumes`` as complex images with B1's phase."""
    images, names = [], []
    for v in volumes:
        volume = v.name.removesuffix(".nii.gz")
        for z in B1_QUICK_SLICES:
            img = torch.from_numpy(b1_image(v, z))
            images.append(img * smooth_phase(img.shape, benchmark_rng(volume, z, "phase")))
            names.append(f"{volume}/{z}")
    return torch.stack(images), names


@torch.no_grad()
def denoising_psnr(prior, images: torch.Tensor, names: list[str]) -> dict[int, float]:
    """Mean PSNR (magnitude, data range of each reference) of Tweedie's estimate at each t."""
    x0 = prior.to_model_space(images)
    out = {}
    for t in TIMESTEPS:
        noise = torch.stack([torch.from_numpy(benchmark_rng(n, t, "denoise").standard_normal(
            tuple(x0.shape[1:])).astype(np.float32)) for n in names])
        x_t = prior.schedule.q_sample(x0, torch.full((len(x0),), t), noise)
        est = torch.cat([prior.x0_hat(x_t[b:b + 8], t) for b in range(0, len(x0), 8)])
        x = prior.from_model_space(est.clamp(-1, 1))
        ct = prior.config.modality == "ct"
        vals = [metrics.psnr(x[i:i + 1].abs(), images[i:i + 1].abs(), 1.0 if ct else None)
                for i in range(len(x))]
        out[t] = float(np.mean(vals))
    return out


def card_value(folder: Path, label: str) -> str | None:
    m = re.search(rf"- {label}[^:]*: ([^\n]+)", (folder / "card.md").read_text())
    return m.group(1).strip() if m else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("priors", nargs="+")
    ap.add_argument("--out", default="benchmarks/results/prior_quality.json")
    args = ap.parse_args()
    rows = []
    for name in args.priors:
        prior = resolve_prior(name)
        folder = Path(resolve_prior_path(name))
        images, names = test_slices(prior.config.modality)
        psnr = denoising_psnr(prior, images, names)
        rows.append({"prior": name, "folder": str(folder), "modality": prior.config.modality,
                     "test_slices": len(names), "denoising_psnr": psnr,
                     "validation_loss": card_value(folder, "validation loss"),
                     "steps": card_value(folder, "steps"),
                     "samples": str(folder / "samples.png")})
        print(f"{name:40s} " + "  ".join(f"t={t}: {v:.2f}" for t, v in psnr.items())
              + f"  val loss {rows[-1]['validation_loss']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
