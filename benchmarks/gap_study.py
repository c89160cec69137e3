"""Where the diffusion gap is (issue "Priors that win", item 2): on B1 at R=4 and R=8
equispaced, DDS against ADMM-TV with its knobs turned (50 / 100 / 200 network evaluations,
2 / 5 / 10 CG iterations, noiseless or noisy (gamma) data consistency) and a plug-and-play
reconstruction that uses the same network's Tweedie estimate as its denoiser (half-quadratic
splitting: z = D_t(x), then x = argmin ||A x - y||^2 + (1/gamma) ||x - z||^2 by CG from z),
at a fixed timestep t or annealed from t_start down to t_end.

If PnP with the same network beats ADMM-TV while DDS does not, the sampler's use of the
prior is the gap; if neither does, the prior is. The PnP settings (t, t_start, gamma) are
chosen on IXI *training* slices (volumes 1-2, z 65 and 85, as benchmarks/uncertainty.py
fits its factor) by mean PSNR over both accelerations; only then run on the B1-quick test
slices. The DDS rows are a sweep, reported on the test slices with nothing chosen.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gap_study.py [--prior brain-t1-axial-128]
        [--out benchmarks/results/gap_study.json]

Writes the JSON and ``gap_study.png`` (one R=8 test slice: truth, ADMM-TV, DDS, PnP).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffrecon.recon import classical, coils, metrics
from diffrecon.recon.diffusion.dds import data_consistency, dds_sample, estimate_scale
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.settings import DDSConfig
from diffrecon.recon.operators import Sense
from diffrecon.recon.solvers import conjugate_gradient
from diffrecon.testing import b1_cases, b1_training_cases

MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"
SETTINGS = [(4, "equispaced"), (8, "equispaced")]
PNP_ITERS = 50  # as many network evaluations as DDS's default


@torch.no_grad()
def pnp_hqs(prior, op, y, ts: list[int], gamma: float | None, cg_iters: int = 5
            ) -> torch.Tensor:
    """Plug-and-play HQS with the prior's Tweedie denoiser at timesteps ``ts`` (one per
    iteration), started at the least-squares image; data consistency as DDS's
    (:func:`data_consistency`: noiseless with gamma None, else (I + gamma A^H A))."""
    scale = estimate_scale(prior, op, y)
    aty = op.adjoint(y)
    x, _ = conjugate_gradient(op.normal, aty, max_iter=10, tol=1e-6, batch_dims=1)
    for t in ts:
        z = prior.to_model_space(x, scale)
        a = prior.schedule.abar(torch.tensor([t]), z)
        # x read as a noisy image at noise level sqrt((1 - a) / a): the VP model's x_t
        x0 = prior.x0_hat(a.sqrt() * z, t).clamp(-1, 1)
        x = data_consistency(op, y, prior.from_model_space(x0, scale).to(y.dtype),
                             cg_iters, gamma, aty)
    sup = op.support()
    return x if sup is None else x * sup


def annealed(t_start: int, t_end: int, n: int = PNP_ITERS) -> list[int]:
    return [int(round(t)) for t in np.geomspace(t_start, t_end, n)]


def prepare(cases, accel: int, kind: str) -> list[tuple]:
    """Per slice: (operator with ESPIRiT maps from the undersampled data, data, truth)."""
    out = []
    for case in cases:
        mask = case.mask(accel, kind)
        ku = (case.kspace * mask)[None]
        out.append((Sense(coils.estimate_coil_maps(ku, mask), mask), ku, case.reference))
    return out


def score(fn, slices: list[tuple]) -> dict:
    t0 = time.perf_counter()
    xs = [fn(op, y) for op, y, _ in slices]
    sec = (time.perf_counter() - t0) / len(slices)
    return {"psnr": float(np.mean([metrics.psnr(x, r[None]) for x, (_, _, r) in
                                   zip(xs, slices, strict=True)])),
            "ssim": float(np.mean([metrics.ssim(x, r[None]) for x, (_, _, r) in
                                   zip(xs, slices, strict=True)])),
            "seconds_per_slice": round(sec, 2), "images": xs}


def pnp_grid() -> list[dict]:
    grid = [{"kind": "fixed", "t": t, "gamma": g}
            for t, g in itertools.product((5, 10, 20, 40), (10.0, 100.0, None))]
    grid += [{"kind": "annealed", "t_start": a, "t_end": b, "gamma": g}
             for a, b, g in itertools.product((100, 300), (5, 10), (10.0, 100.0, None))]
    return grid


def pnp_fn(prior, cfg: dict):
    ts = [cfg["t"]] * PNP_ITERS if cfg["kind"] == "fixed" else \
        annealed(cfg["t_start"], cfg["t_end"])
    return lambda op, y: pnp_hqs(prior, op, y, ts, cfg["gamma"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", default="brain-t1-axial-128")
    ap.add_argument("--out", default="benchmarks/results/gap_study.json")
    args = ap.parse_args()
    prior = resolve_prior(args.prior)
    train = b1_training_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy")
    test = b1_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy", quick=True)
    result: dict = {"prior": prior.name, "pnp_iterations": PNP_ITERS, "training": [],
                    "test": []}

    # 1. PnP settings chosen on the training slices (mean PSNR over both accelerations)
    train_sets = {s: prepare(train, *s) for s in SETTINGS}
    for cfg in pnp_grid():
        scores = {f"R={a} {k}": score(pnp_fn(prior, cfg), train_sets[(a, k)])["psnr"]
                  for a, k in SETTINGS}
        result["training"].append({**cfg, **scores})
        print("train", cfg, {k: round(v, 2) for k, v in scores.items()}, flush=True)

    def best(kind: str) -> dict:
        rows = [r for r in result["training"] if r["kind"] == kind]
        top = max(rows, key=lambda r: np.mean([r[f"R={a} {k}"] for a, k in SETTINGS]))
        return {k: v for k, v in top.items() if not k.startswith("R=")}

    chosen = {"pnp-hqs fixed t": best("fixed"), "pnp-hqs annealed": best("annealed")}
    result["chosen_on_training"] = chosen
    print("chosen", chosen, flush=True)

    # 2. the test slices: classical references, the DDS sweep, PnP as chosen
    base = DDSConfig()
    variants = {
        "cg-sense": ({}, lambda op, y: classical.cg_sense(y, op.maps, op.mask)),
        "admm-tv": ({}, lambda op, y: classical.tv_sense(y, op.maps, op.mask)),
    }
    for label, cfg in (("dds (50 nfe, 5 cg, noiseless)", base),
                       ("dds 100 nfe", replace(base, nfe=100)),
                       ("dds 200 nfe", replace(base, nfe=200)),
                       ("dds 2 cg", replace(base, cg_iters=2)),
                       ("dds 10 cg", replace(base, cg_iters=10)),
                       ("dds gamma 1", replace(base, gamma=1.0)),
                       ("dds gamma 10", replace(base, gamma=10.0))):
        variants[label] = ({"nfe": cfg.nfe, "cg_iters": cfg.cg_iters, "gamma": cfg.gamma},
                           lambda op, y, cfg=cfg: dds_sample(prior, op, y, cfg))
    for label, cfg in chosen.items():
        variants[label] = (cfg, pnp_fn(prior, cfg))
    pictures = {}
    for a, k in SETTINGS:
        slices = prepare(test, a, k)
        for label, (cfg, fn) in variants.items():
            s = score(fn, slices)
            pictures[(a, label)] = s.pop("images")
            result["test"].append({"setting": f"R={a} {k}", "method": label, **cfg, **s})
            print(f"test R={a} {k} {label}: {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}, "
                  f"{s['seconds_per_slice']} s/slice", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _picture(test, pictures, Path(args.out).with_suffix(".png"))
    _table(result)


def _picture(test, pictures: dict, path: Path) -> None:
    """Slice 0 of the test set at R=8: truth | ADMM-TV | DDS | PnP (fixed) | PnP (annealed),
    and their |error| x 5 below, one grey scale."""
    from PIL import Image

    truth = test[0].reference.numpy()
    labels = ["admm-tv", "dds (50 nfe, 5 cg, noiseless)", "pnp-hqs fixed t", "pnp-hqs annealed"]
    imgs = [truth] + [np.abs(pictures[(8, lb)][0][0].numpy()) for lb in labels]
    errs = [np.zeros_like(truth)] + [np.abs(i - truth) * 5 for i in imgs[1:]]
    top = np.concatenate([np.pad(np.clip(i, 0, 1), 2) for i in imgs], axis=1)
    bottom = np.concatenate([np.pad(np.clip(e, 0, 1), 2) for e in errs], axis=1)
    im = Image.fromarray((np.concatenate([top, bottom]) * 255).astype(np.uint8))
    im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(path)


def _table(result: dict) -> None:
    print("\nsetting         method                              PSNR    SSIM    s/slice")
    for r in result["test"]:
        print(f"{r['setting']:<15} {r['method']:<35} {r['psnr']:6.2f}  {r['ssim']:.4f}  "
              f"{r['seconds_per_slice']:6.2f}")


if __name__ == "__main__":
    main()
