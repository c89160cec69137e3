"""Calibration of the diffusion methods' std maps (issue 23): does the spread of K samples
say where the error is?

For each setting, K samples per slice are drawn in one batch (recon.diffusion.run, as
``--samples K`` draws them) and the first 4, 8, 16 of them are scored with
recon.uncertainty.calibration: per slice Spearman's rho of the 5 x 5 local means of
|mean - truth| and std, the coverage of mean +- 2 std over the truth's object, and the mean
error over the mean std; plus the PSNR of the K-sample mean and of one sample.

MRI also gets the aliasing term (recon.uncertainty.with_aliasing): u = sqrt(std^2 +
w alias^2), alias^2 = |A^H A m - m|^2 of the mean m averaged over a Gaussian of
ALIAS_SIGMA pixels (its width chosen on the training slices too: the "alias_sigma" study
in the JSON), with one weight w per acceleration and
sampling pattern, chosen on training-split slices only (IXI's training volumes) as the
smallest weight of a grid within 0.005 of the highest mean Spearman there; the (sampled
fraction, weight, scale, pattern) points are what ``--std-aliasing`` takes. Rows report
Spearman of std alone ("spearman") and of u ("spearman_aliasing").

A calibration factor c (u -> c u) is fitted on training-split slices only (IXI's
training volumes; CT: the aorta and pulmonary volumes): the 95th percentile of
|error| / (2 u) over their object pixels at K = 8, for MRI one per acceleration and
pattern (the table's scale), for CT one pooled over the view counts (std -> c std,
``--std-scale``). The test rows report coverage of the raw std and of c u.

MRI also fits the error model of ``--std-model`` (recon.uncertainty.error_model: the log of
the error's local RMS, least squares on five features of the mean and the spread, one
point per acceleration and pattern, its scale for coverage) on the same training slices,
writes it (``--model-out``; its points carry the method, and an existing file keeps the
points of other methods) and scores its map ("spearman_model", "coverage_model"; with
``--model FILE`` another model's instead, e.g. one fitted for the other sampler).

    .venv/bin/python benchmarks/uncertainty.py [--mri-settings 4/equispaced,8/equispaced]
        [--ct-views 8,16] [--max-k 16] [--branch-steps N] [--train-volumes 4]
        [--method dds|dds-tv] [--model FILE] [--model-out FILE] [--b1-full] [--b2]
        [--out benchmarks/results/uncertainty.json]

``--branch-steps N``: the K samples share all but their last N steps (``diffrecon run
--branch-steps``; a K-sample run then costs nfe - N + K N network evaluations per slice
instead of K nfe), the weights and factors fitted for that sampler.

``--ct-views ''`` keeps the CT rows (and factor) already in ``--out``, ``--mri-settings ''``
the MRI rows and fitted points (the aliasing term is MRI's; CT rows do not change with it).

MRI: B1-quick test slices (8; ``--b1-full``: all 48 B1 slices; ``--b2``: also B2, the
real scan), the brain prior; CT: B3 slices of example_ct (every 16th) with the CT prior.
Minutes per setting on a 2-core CPU. The sheet beside the JSON shows the first test slice
of each setting: truth, K-sample mean, |error|, std and (MRI) c u and the error model's
map (error and maps on one grey scale).
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
from diffrecon.recon.diffusion.settings import ETA_SAMPLES, sampler_eta
from diffrecon.recon.masks import sampling_pattern
from diffrecon.recon.operators import Sense, gaussian_smooth
from diffrecon.recon.uncertainty import (
    ALIAS_SIGMA,
    ERROR_FEATURES,
    aliasing,
    aliasing_map,
    calibration,
    error_features,
    error_model,
    error_model_map,
    model_methods,
    object_support,
    sampled_fraction,
    with_aliasing,
)
from diffrecon.testing import (
    b1_cases,
    b1_training_cases,
    b2_case,
    ct_slices,
    ct_training_slices,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MRI = SHARED / "mri"
CT = SHARED / "ct" / "totalsegmentator"
WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)  # alias weights
SIGMAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # widths (px) of the aliasing energy's mean


# --cache: samples kept on disk (the draws are deterministic for a prior and DDSConfig's
# defaults: the key holds the prior's digest and eta; clear the folder after changing the
# sampler otherwise)
CACHE: Path | None = None
BRANCH = 0  # --branch-steps: the K samples share all but their last BRANCH steps
METHOD = "dds"  # --method: the sampler (dds-tv: MRI rows only, ADMM-TV's weight as the flow)
ETA: float | None = None  # --eta: None is the flow's default for K samples


def mri_samples(cases, accel: int, kind: str, prior, k: int) -> list[tuple]:
    """Per slice (samples (K, H, W) complex, truth, its SENSE operator)."""
    out = []
    for case in cases:
        mask = case.mask(accel, kind)
        ku = (case.kspace * mask)[None]
        op = Sense(coils.estimate_coil_maps(ku, mask), mask)
        eta = sampler_eta(_sampler(k).eta, k)  # the default for K > 1: no suffix
        key = f"{prior.digest[:12]}_{case.volume}_{case.z}_{accel}_{kind}_{k}" + \
            (f"_b{BRANCH}" if BRANCH else "") + ("" if METHOD == "dds" else f"_{METHOD}") + \
            ("" if eta == ETA_SAMPLES else f"_eta{eta:g}")
        run = _cached(key, lambda op=op, ku=ku: _draw(prior, lambda a, b: op, ku, k))
        out.append((run, case.reference.numpy(), op))
    return out


def _cached(key: str, draw) -> np.ndarray:
    if CACHE is None:
        return draw()
    path = CACHE / f"{key}.npy"
    if not path.exists():
        np.save(path, draw())
    return np.load(path)


def ct_samples(cases, views: int, prior, k: int) -> list[tuple]:
    from diffrecon.recon.ct import CTProjector

    geom = cases[0].geometry(str(views))
    op = CTProjector(geom)
    out = []
    for case in cases:
        y = case.sinogram(op).float()
        run = _draw(prior, lambda a, b: op, y, k)
        out.append((run, case.image.numpy(), None))
    return out


def _draw(prior, make_op, y, k: int) -> np.ndarray:
    """K samples of one slice, (K, H, W), drawn in one batch as --samples K draws them."""
    return draw_samples([prior], _sampler(k), make_op, y, samples=k)[0][0].numpy()


def _sampler(k: int):
    """The settings of METHOD's sampler for K samples (dds-tv: the flow's, ADMM-TV's weight
    for MRI)."""
    branch = BRANCH if k > 1 else 0
    if METHOD == "dds-tv":
        from diffrecon.config import PriorRef, ReconConfig

        return PriorRef(samples=max(k, 2), branch_steps=branch, eta=ETA).sampler_config(
            "dds-tv", tv_lam=ReconConfig.model_fields["tv_lam"].default)
    return DDSConfig(branch_steps=branch, eta=ETA)


def maps(run: tuple, k: int, table: list | None, w: float | None = None,
         sigma: float = ALIAS_SIGMA, model: dict | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shown mean, truth, std, u) of the first k samples of one slice: u is the std map as
    ``--std-model`` makes it with ``model``, else as ``--std-aliasing`` makes it, with weight
    and scale interpolated in ``table`` at the slice's sampled fraction and pattern, or with
    weight ``w``, scale 1 and the aliasing energy's local mean over ``sigma`` pixels (u =
    std for CT, or with none of them)."""
    x, truth, op = run
    mean, std = sample_statistics(torch.from_numpy(x[:k])[None])
    u = std
    if op is not None and model is not None:
        u = error_model_map(op, mean, std, model, model_methods(model, METHOD))
    elif op is not None and w is not None:
        u = with_aliasing(std, aliasing(op, mean, sigma), torch.tensor([w]))
    elif op is not None and table:
        u = aliasing_map(op, mean, std, table)
    show = np.abs if op is not None else metrics.ct_window
    return show(mean[0].numpy()), truth, std[0].numpy(), u[0].numpy()


def score(runs: list[tuple], k: int, factor: float, table: list | None,
          model: dict | None = None) -> dict:
    """The calibration figures of the first k samples of every slice, averaged over slices;
    with ``model`` also those of its map (its own scale: "spearman_model", "coverage_model")."""
    rows: dict = {"spearman": [], "spearman_aliasing": [], "coverage": [],
                  "coverage_calibrated": [], "error_over_std": [], "psnr_mean": [],
                  "psnr_one": [], "spearman_model": [], "coverage_model": []}
    for run in runs:
        mean, truth, std, u = maps(run, k, table)
        ct = run[2] is None
        rng = 1.0 if ct else None
        c = calibration(mean, std, truth)
        if model is not None:
            cm = calibration(mean, maps(run, k, None, model=model)[3], truth)
            rows["spearman_model"].append(cm["spearman"])
            rows["coverage_model"].append(cm["coverage"])
        rows["spearman"].append(c["spearman"])
        rows["spearman_aliasing"].append(calibration(mean, u, truth)["spearman"])
        rows["coverage"].append(c["coverage"])
        rows["coverage_calibrated"].append(calibration(mean, factor * u, truth)["coverage"])
        rows["error_over_std"].append(c["error_over_std"])
        rows["psnr_mean"].append(metrics.psnr(mean, truth, rng))
        one = metrics.ct_window(run[0][0]) if ct else np.abs(run[0][0])
        rows["psnr_one"].append(metrics.psnr(one, truth, rng))
    out = {key: float(np.mean(v)) for key, v in rows.items() if v}
    if not table:
        out.pop("spearman_aliasing")
    return out


def sheet(items: list[tuple], path: Path) -> None:
    """One row per (label, truth, mean, maps...): truth | mean | |mean - truth| | each map,
    the error and the maps on one grey scale (0 to the 99.5th percentile of the error), so
    that a map that is too small or in the wrong place shows."""
    from PIL import Image, ImageDraw

    rows = []
    width = max(len(item) for item in items) - 1
    for label, truth, mean, *more in items:
        err = np.abs(mean - truth)
        top = max(float(np.percentile(err, 99.5)), 1e-12)
        tiles = [truth / truth.max(), mean / truth.max(), err / top] + [m / top for m in more]
        tiles += [np.zeros_like(truth)] * (width - len(tiles))
        row = np.concatenate([np.pad(np.clip(t, 0, 1), 2) for t in tiles], axis=1)
        rows.append((label, row))
    im = Image.fromarray((np.concatenate([r for _, r in rows]) * 255).astype(np.uint8))
    im = im.resize((im.width * 2, im.height * 2), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    h = im.height // len(rows)
    for i, (label, _) in enumerate(rows):
        draw.text((6, i * h + 4), label, fill=255)
    im.save(path)


def best_weight(runs: list[tuple], k: int, sigma: float = ALIAS_SIGMA
                ) -> tuple[float, dict[float, float]]:
    """The weight of WEIGHTS for the aliasing term of ``runs`` (training slices): the
    smallest within 0.005 of the highest mean Spearman of |error| and u (the spread keeps
    its say where larger weights gain nothing), and the mean Spearman per weight."""
    rho = {}
    for w in WEIGHTS:
        scored = []
        for r in runs:
            mean, truth, _, u = maps(r, k, None, w, sigma)
            scored.append(calibration(mean, u, truth)["spearman"])
        rho[w] = float(np.mean(scored))
    top = max(rho.values())
    return min(w for w in WEIGHTS if rho[w] >= top - 0.005), rho


def sigma_study(groups: dict[tuple[int, str], list[tuple]], k: int) -> dict[str, float]:
    """Per width of SIGMAS, the mean over the groups (acceleration, pattern) of the
    training slices' Spearman at each group's best weight: how recon.uncertainty's
    ALIAS_SIGMA was chosen (the smallest within 0.005 of the best)."""
    out = {}
    for sigma in SIGMAS:
        out[str(sigma)] = round(float(np.mean([
            max(best_weight(runs, k, sigma)[1].values()) for runs in groups.values()])), 4)
        print(f"aliasing energy over sigma {sigma} px: mean Spearman on training slices "
              f"{out[str(sigma)]:.3f}", flush=True)
    return out


def fit_weights(groups: dict[tuple[int, str], list[tuple]], k: int) -> list[tuple]:
    """Per acceleration and sampling pattern (recon.masks.sampling_pattern of each training
    slice's mask, as the product tells them apart): the weight of WEIGHTS with the highest
    mean Spearman of |error| and u, then the scale that makes u cover the group's error
    (:func:`fit_factor`); returned as (mean sampled fraction, weight, scale, pattern)."""
    table = []
    for (accel, kind), runs in sorted(groups.items()):
        best, rho = best_weight(runs, k)
        frac = float(np.mean([float(sampled_fraction(r[2].mask, 1)[0]) for r in runs]))
        scale = fit_factor(runs, k, None, best)
        print(f"R={accel} {kind}: sampled fraction {frac:.3f}, Spearman on training slices "
              f"per weight {json.dumps({str(w): round(v, 3) for w, v in rho.items()})}: "
              f"{best}, scale {scale:.2f}", flush=True)
        table.append((round(frac, 4), best, round(scale, 3), kind))
    return table


def fit_factor(runs: list[tuple], k: int, table: list | None, w: float | None = None,
               model: dict | None = None) -> float:
    """The 95th percentile of |error| / (2 u) over the truth's object pixels, pooled (u as
    :func:`maps` makes it)."""
    ratios = []
    for run in runs:
        mean, truth, _, u = maps(run, k, table, w, model=model)
        sup = object_support(truth)[0]
        ratios.append(np.abs(mean - truth)[sup] / np.maximum(2 * u[sup], 1e-12))
    return float(np.percentile(np.concatenate(ratios), 95))


def fit_error_model(groups: dict[tuple[int, str], list[tuple]], k: int, fitted: dict
                    ) -> dict:
    """The error model of ``--std-model`` (recon.uncertainty.error_model), one point per
    acceleration and sampling pattern of the training slices: the least-squares fit of
    log(local RMS of |error| over 2 pixels / max|m|) on the features
    (recon.uncertainty.error_features) over the truth's object pixels, then the scale that
    makes the map cover the group's error (the 95th percentile of |error| / (2 u))."""
    points = []
    for (accel, kind), runs in sorted(groups.items()):
        xs, ys = [], []
        for x, truth, op in runs:
            mean, std = sample_statistics(torch.from_numpy(x[:k])[None])
            feats, top, _ = error_features(op, mean, std)
            err = (mean.abs() - torch.from_numpy(truth)).to(std.dtype)
            env = gaussian_smooth(err.square(), 2.0).sqrt() / top.reshape(-1, 1, 1)
            sup = torch.from_numpy(object_support(truth))
            xs.append(feats.permute(0, 2, 3, 1)[sup].double().numpy())
            ys.append(torch.log(env.clamp_min(1e-6))[sup].double().numpy())
        a = np.concatenate(xs)
        coef = np.linalg.lstsq(np.c_[a, np.ones(len(a))], np.concatenate(ys), rcond=None)[0]
        frac = float(np.mean([float(sampled_fraction(r[2].mask, 1)[0]) for r in runs]))
        pt = {"fraction": round(frac, 4), "pattern": kind, "method": METHOD,
              "coefficients": [round(float(c), 4) for c in coef[:-1]],
              "intercept": round(float(coef[-1]), 4), "scale": 1.0}
        one = error_model({"features": list(ERROR_FEATURES), "points": [pt]})
        pt["scale"] = round(fit_factor(runs, k, None, model=one), 4)
        print(f"R={accel} {kind}: error model {json.dumps(pt)}", flush=True)
        points.append(pt)
    return error_model({"features": list(ERROR_FEATURES), "points": points,
                        "fitted": fitted})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mri-settings", default="4/equispaced,4/random,8/equispaced,8/random")
    ap.add_argument("--ct-views", default="8,16", help="comma list; empty: no CT rows")
    ap.add_argument("--max-k", type=int, default=16)
    ap.add_argument("--fit-k", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/uncertainty.json")
    ap.add_argument("--cache", default=None, help="folder keeping the MRI samples (reruns "
                    "that change only the fit or the scoring draw nothing)")
    ap.add_argument("--branch-steps", type=int, default=0, help="the K samples share all but "
                    "their last N steps (--branch-steps of diffrecon run; 0: whole trajectories)")
    ap.add_argument("--train-volumes", type=int, default=2, help="MRI: fit on the B1-style "
                    "slices of this many IXI training volumes (two slices each)")
    ap.add_argument("--b1-full", action="store_true", help="MRI test rows on all 48 B1 "
                    "slices instead of B1-quick's 8")
    ap.add_argument("--b2", action="store_true", help="MRI: also rows of B2, the real "
                    "16-coil scan (its SENSE reference as the truth)")
    ap.add_argument("--eta", type=float, default=None, help="the sampler's eta (default: "
                    "the flow's for K samples, 0.85)")
    ap.add_argument("--method", choices=["dds", "dds-tv"], default="dds",
                    help="the sampler (dds-tv: MRI rows only)")
    ap.add_argument("--model", default=None, help="score this error model file instead of "
                    "the one fitted here (which is still written)")
    ap.add_argument("--model-out", default=None, help="where the fitted error model "
                    "(--std-model) goes; default: beside --out, *_error_model.json")
    args = ap.parse_args()
    global CACHE, BRANCH, METHOD, ETA
    BRANCH, METHOD, ETA = args.branch_steps, args.method, args.eta
    if METHOD != "dds" and args.ct_views:
        ap.error("--method dds-tv: MRI rows only (give --ct-views '')")
    if args.cache:
        CACHE = Path(args.cache)
        CACHE.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ks = [k for k in (4, 8, 16) if k <= args.max_k]
    result: dict = {"ks": ks, "fit_k": args.fit_k, "branch_steps": BRANCH, "method": METHOD,
                    "rows": [],
                    "factors": {}}
    t_start = time.perf_counter()
    out = Path(args.out)

    settings = [s.split("/") for s in args.mri_settings.split(",") if s]
    if settings:
        figure: list = []  # the first test slice of each setting: truth, mean, std, u
        prior = resolve_prior("brain-t1-axial-128")
        train = b1_training_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy",
                                  args.train_volumes)
        test = b1_cases(MRI / "ixi_t1", MRI / "b1_simulation_maps_16ch_128.npy",
                        quick=not args.b1_full)
        b2 = [b2_case(MRI / "raw_twix" / "invivo_brain_16ch_gre.dat")] if args.b2 else []
        groups: dict[tuple[int, str], list] = {}
        for a, kind in settings:
            for r in mri_samples(train, int(a), kind, prior, args.fit_k):
                groups.setdefault((int(a), sampling_pattern(r[2].mask)), []).append(r)
        result["alias_sigma"] = {"chosen": ALIAS_SIGMA, **sigma_study(groups, args.fit_k)}
        table = fit_weights(groups, args.fit_k)  # its points carry the scales
        result["aliasing"] = table
        print(f"MRI: --std-aliasing "
              f"{','.join(f'{f}:{w:g}:{c:g}:{p}' for f, w, c, p in table)} "
              f"(training slices {sum(len(r) for r in groups.values())})", flush=True)
        from diffrecon.recon.diffusion.checkpoint import folder_digest
        from diffrecon.recon.diffusion.registry import resolve_prior_path

        model = fit_error_model(groups, args.fit_k, {
            "prior": prior.name, "prior_digest": folder_digest(
                resolve_prior_path("brain-t1-axial-128")), "samples": args.fit_k,
            "branch_steps": BRANCH, "nfe": _sampler(2).nfe,
            "eta": sampler_eta(_sampler(2).eta, args.fit_k),
            "by": "benchmarks/uncertainty.py", "training_slices": [
                f"{c.volume} z={c.z}" for c in train]})
        model_out = Path(args.model_out or out.with_name(out.stem + "_error_model.json"))
        if model_out.exists():  # the points of other methods stay (one file per prior)
            kept = [p for p in error_model(model_out)["points"] if p["method"] != METHOD]
            model = error_model({**model, "points": kept + model["points"]})
        model_out.write_text(json.dumps(model, indent=1))
        result["error_model"] = str(model_out)
        print(f"MRI: --std-model {model_out}", flush=True)
        if args.model:  # scored with another model (e.g. one fitted for another sampler)
            model = error_model(args.model)
            result["error_model_scored"] = args.model
        for a, kind in settings:
            runs = mri_samples(test, int(a), kind, prior, max(ks))
            mean, truth, std, u = maps(runs[0], max(ks), table)
            um = maps(runs[0], max(ks), None, model=model)[3]
            figure.append((f"R={a} {kind}", truth, mean, std, u, um))
            for k in ks:
                row = {"benchmark": f"{'B1' if args.b1_full else 'B1-quick'} "
                       f"({len(test)} slices)", "setting":
                       f"R={a} {kind}", "k": k, **score(runs, k, 1.0, table, model)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
            if args.b2:  # the real 16-coil scan: real noise and coils, never fitted on
                runs = mri_samples(b2, int(a), kind, prior, max(ks))
                mean, truth, std, u = maps(runs[0], max(ks), table)
                um = maps(runs[0], max(ks), None, model=model)[3]
                figure.append((f"B2 R={a} {kind}", np.abs(truth), mean, std, u, um))
                for k in ks:
                    row = {"benchmark": "B2 (1 slice)", "setting": f"R={a} {kind}", "k": k,
                           **score(runs, k, 1.0, table, model)}
                    result["rows"].append(row)
                    print(json.dumps(row), flush=True)
        sheet(figure, out.with_name(out.stem + "_mri.png"))

    views = [int(v) for v in args.ct_views.split(",") if v]
    if views:
        figure = []
        prior = resolve_prior("ct-axial-128")
        train = ct_training_slices(CT)
        test = ct_slices(CT / "example_ct.nii.gz", every=16)
        fit_runs = [r for v in views for r in ct_samples(train, v, prior, args.fit_k)]
        factor = fit_factor(fit_runs, args.fit_k, None)
        result["factors"]["ct"] = factor
        print(f"CT calibration factor (training slices {len(fit_runs)}): {factor:.2f}",
              flush=True)
        for v in views:
            runs = ct_samples(test, v, prior, max(ks))
            mean, truth, std, _ = maps(runs[0], max(ks), None)
            figure.append((f"{v} views", truth, mean, std))
            for k in ks:
                row = {"benchmark": f"B3-quick ({len(test)} slices)", "setting": f"{v} views",
                       "k": k, **score(runs, k, factor, None)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
        sheet(figure, out.with_name(out.stem + "_ct.png"))
    before = json.loads(out.read_text()) if out.exists() else {}
    if (before.get("branch_steps", 0), before.get("method", "dds")) != (BRANCH, METHOD):
        # rows of another sampler: not kept
        before = {}
    if before:  # keep the rows (and fits) of what was not rerun
        if not settings:
            result["rows"] += [r for r in before["rows"] if r["benchmark"].startswith("B1")]
            if "aliasing" in before:
                result["aliasing"] = before["aliasing"]
        if not views:
            result["rows"] += [r for r in before["rows"] if r["benchmark"].startswith("B3")]
            if "ct" in before.get("factors", {}):
                result["factors"]["ct"] = before["factors"]["ct"]
    result["seconds"] = time.perf_counter() - t_start
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
