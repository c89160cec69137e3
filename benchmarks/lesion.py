"""Lesion preservation (issue 23): does a prior trained on healthy T1 keep a lesion it never
saw, and does its std map flag it?

Data: T1 slices through the lesions of the chronic stroke patient and of the low-grade
glioma (TCGA-FG-6692) in ../shared/data/mri (see PATIENTS), simulated as B1 simulates a
slice: resampled to B1's 2 mm pixels and padded / cropped to 128 x 128 (magnitude, max 1),
B1's smooth phase, its 16 simulation coil maps and noise, its 1D masks (R = 4 and 8,
equispaced).

Lesion mask (:func:`lesion_masks`): the FLAIR hyperintensity (FLAIR resampled onto the
T1 grid through the affines; the glioma's after a rigid mutual-information registration,
:func:`register_rigid`), on the slices seen to hold the lesion; the largest connected
component per slice, on the slices where it is largest. Mirror: the mask flipped
left-right about the brain's centre column, minus any overlap with the lesion. The masks
are drawn on the sheet (benchmarks/results/lesion.png) to be checked by eye.

Per method (zero-filled, CG-SENSE, ADMM-TV, DDS and dds-tv with K samples, --branch-steps
as `diffrecon run` takes it): PSNR inside the lesion
(range: the slice's maximum), the lesion contrast (lesion mean minus mirror mean) relative
to the truth's, and for DDS the mean std inside the lesion over the mean std in the
mirror (and the mean |error| inside over the mirror's, which a map should follow), and
the same for the std with the aliasing term (the weights uncertainty.py fitted on
training slices, read from uncertainty.json beside --out); with ``--std-model
FILE|prior`` also for the error model's map (``diffrecon run --std-model``; the points of
each row's method, "model_points" in the row).

Per row also the pixels of invented bright structure (``recon.metrics.invented_mask``:
regions of >= 8 pixels brighter than the truth by > 0.1 of its maximum, inside the head),
and for K > 1 the fraction of them that mean +- 2 x the map covers and the map's mean on
them over the rest of the head (the map: the error model's with --std-model, else the one
with the aliasing term, else the spread), and that map's calibration over the whole object
(``calibration``: Spearman of the 5 x 5 local means of |error| and the map, coverage of
mean +- 2 x map). The summary (printed, and "summary" in the JSON; :func:`summarise`): per
patient (all synthetic slices as one), setting and method the means of the contrast error,
PSNR, lesion PSNR and invented pixels, and on how many slices the contrast error is at most
CG-SENSE's.

With ``--synthetic N`` the same on training slices instead of the patients: lesions no
training image has drawn into the TRAIN_Z slices of the first N IXI training volumes
(:func:`synthetic_lesion_slices`), where settings may be chosen.

    .venv/bin/python benchmarks/lesion.py [--samples 8] [--slices 3] [--branch-steps N]
        [--diffusion dds,dds-tv] [--std-model prior] [--synthetic N]
        [--out benchmarks/results/lesion.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffrecon.config import PriorRef, ReconConfig
from diffrecon.recon import classical, coils, metrics
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.run import run_diffusion
from diffrecon.recon.operators import Sense
from diffrecon.recon.uncertainty import (
    aliasing_map,
    calibration,
    error_model_map,
    model_methods,
)
from diffrecon.testing import MRICase, _b1_kspace

MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"
PATIENTS = {  # T1, FLAIR, the axial T1 slices that hold the lesion (seen on the FLAIR),
    # the erosion of the head that removes scalp and skull (pixels; 0: brain-extracted),
    # and for the glioma: a rigid registration of the FLAIR to the T1 first (its header
    # leaves it 16 mm off along z), and a wider local mean and lower threshold (the tumour's
    # hyperintensity is large and moderate); every outline checked on the sheet
    "stroke": {"t1": "stroke/stroke_T1.nii.gz", "flair": "stroke/stroke_FLAIR.nii.gz",
               "zrange": (60, 81), "erode": 0},
    "glioma": {"t1": "glioma_tcga_lgg/TCGA-FG-6692_t1.nii.gz",
               "flair": "glioma_tcga_lgg/TCGA-FG-6692_flair.nii.gz", "zrange": (14, 19),
               "erode": 20, "sigma": 80, "k": 1.5, "register": True},
}
PIXEL_MM = 2.0  # B1's pixel size (IXI at 2 mm)
SIZE = 128


def _axial(img) -> tuple[np.ndarray, float]:
    """(slices, rows, cols) axial slices of a nibabel image (canonical RAS), in-plane mm."""
    import nibabel as nib

    from diffrecon.common.geometry import slice_volume

    can = nib.as_closest_canonical(img)
    zooms = can.header.get_zooms()[:3]
    return slice_volume(np.asarray(can.get_fdata(dtype=np.float32)), "axial"), float(zooms[0])


def _mirror(a: np.ndarray, centre: float) -> np.ndarray:
    """``a`` (rows, cols) flipped left-right about column ``centre``."""
    cols = np.arange(a.shape[-1])
    return a[..., np.clip(np.round(2 * centre - cols).astype(int), 0, a.shape[-1] - 1)]


def _head(image: np.ndarray, top: float) -> np.ndarray:
    """The head of an axial slice: above 0.1 of ``top`` (a 99th percentile), holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(image > 0.1 * top)


def lesion_masks(t1: np.ndarray, flair: np.ndarray, zrange: tuple[int, int], erode: int,
                 sigma: float = 30, k: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(head, lesion) masks of axial slices (slices, rows, cols): the lesion is the FLAIR
    hyperintensity, a 3 x 3 median over the local mean (``sigma``-pixel Gaussian inside the
    head: a coil's bright rim is not a lesion; wider than a large lesion, or the lesion
    raises its own mean) above mean + ``k`` std of that ratio, on the slices
    ``zrange``, inside the head eroded by ``erode`` pixels (a bright scalp does not
    count); per slice the largest connected component, opened once, holes filled."""
    from scipy.ndimage import (
        binary_erosion,
        binary_fill_holes,
        binary_opening,
        gaussian_filter,
        label,
        median_filter,
    )

    top = float(np.percentile(t1, 99))
    head = np.stack([_head(s, top) for s in t1])
    inner = np.stack([binary_erosion(h, iterations=erode) if erode else h for h in head])
    rel = np.zeros_like(flair)
    for z in range(*zrange):
        m = inner[z].astype(np.float64)
        local = gaussian_filter(flair[z] * m, sigma) / np.maximum(gaussian_filter(m, sigma),
                                                                  1e-6)
        rel[z] = median_filter(flair[z], 3) / np.maximum(local, 1e-6)
    vals = rel[zrange[0]:zrange[1]][inner[zrange[0]:zrange[1]]]
    thr = vals.mean() + k * vals.std()
    lesion = np.zeros_like(head)
    for z in range(*zrange):
        cand = binary_opening((rel[z] > thr) & inner[z], iterations=1)
        lab, k = label(cand)
        if k:
            sizes = np.bincount(lab.ravel())[1:]
            lesion[z] = binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    return head, lesion


def register_rigid(fixed, moving) -> np.ndarray:
    """The rigid world transform (4 x 4, mm) that best aligns nibabel image ``moving`` to
    ``fixed`` starting from their headers: 3 rotations about the fixed grid's centre and 3
    translations, maximising the normalised mutual information (32 x 32 bins) of the
    intensities sampled on every second in-plane voxel of ``fixed`` (Powell). The moving
    image's affine becomes inv(T) @ its affine."""
    from scipy.ndimage import map_coordinates
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    a, b = fixed.get_fdata(dtype=np.float32), moving.get_fdata(dtype=np.float32)
    idx = np.meshgrid(np.arange(0, a.shape[0], 2), np.arange(0, a.shape[1], 2),
                      np.arange(a.shape[2]), indexing="ij")
    world = fixed.affine @ np.stack([*idx, np.ones_like(idx[0])]).reshape(4, -1)
    centre = world[:3].mean(axis=1)
    to_moving = np.linalg.inv(moving.affine)

    def bins(v: np.ndarray, top: float) -> np.ndarray:
        return np.clip((v / top * 31).astype(int), 0, 31)

    fixed_bins = bins(a[tuple(idx)].ravel(), float(np.percentile(a, 99.5)))
    top_b = float(np.percentile(b, 99.5))

    def transform(p: np.ndarray) -> np.ndarray:
        r = Rotation.from_rotvec(np.radians(p[:3])).as_matrix()
        t = np.eye(4)
        t[:3, :3], t[:3, 3] = r, centre - r @ centre + p[3:]
        return t

    def cost(p: np.ndarray) -> float:
        m = map_coordinates(b, (to_moving @ transform(p) @ world)[:3], order=1, cval=0)
        h = np.histogram2d(fixed_bins, bins(m, top_b), bins=32, range=[[0, 32], [0, 32]])[0]
        pxy = h / h.sum() + 1e-12
        px, py = pxy.sum(1), pxy.sum(0)
        ent = -(px * np.log(px)).sum() - (py * np.log(py)).sum()
        return float(ent / (pxy * np.log(pxy)).sum())  # -(H(x) + H(y)) / H(x, y)

    best = minimize(cost, np.zeros(6), method="Powell",
                    options={"xtol": 1e-2, "ftol": 1e-5, "maxfev": 1500})
    return transform(best.x)


def lesion_slices(t1_path: Path, flair_path: Path, zrange: tuple[int, int], erode: int,
                  n: int, register: bool = False, sigma: float = 30, k: float = 2.5
                  ) -> list[dict]:
    """The ``n`` axial slices with the largest lesion (:func:`lesion_masks`): T1 truth on
    B1's grid (2 mm pixels, 128 x 128, max 1), lesion and mirror masks on the same grid."""
    import nibabel as nib
    from nibabel.processing import resample_from_to
    from scipy.ndimage import center_of_mass, zoom

    from diffrecon.common.geometry import pad_or_crop

    t1 = nib.as_closest_canonical(nib.load(str(t1_path)))
    flair = nib.as_closest_canonical(nib.load(str(flair_path)))
    if register:  # the headers alone leave the FLAIR mm off the T1 (the glioma)
        flair = nib.Nifti1Image(flair.get_fdata(dtype=np.float32),
                                np.linalg.inv(register_rigid(t1, flair)) @ flair.affine)
    flair = resample_from_to(flair, t1, order=1)
    t1s, mm = _axial(t1)
    fls, _ = _axial(flair)
    heads, masks = lesion_masks(t1s, fls, zrange, erode, sigma, k)
    # the n slices with the largest lesion among those whose lesion and mirror keep pixels
    # on B1's grid (n may exceed them)
    out = []
    f = mm / PIXEL_MM
    for z in (int(i) for i in np.argsort([-m.sum() for m in masks])):
        if len(out) == n or not masks[z].any():
            break
        truth = np.clip(zoom(t1s[z], f, order=3), 0, None)
        les = zoom(masks[z].astype(np.float32), f, order=1) > 0.5
        head = zoom(heads[z].astype(np.float32), f, order=1) > 0.5
        truth, les, head = (pad_or_crop(a, SIZE) for a in (truth, les, head))
        mirror = _mirror(les, center_of_mass(head)[1]) & ~les & head
        if les.any() and mirror.any():
            out.append({"z": z, "truth": (truth / truth.max()).astype(np.float32),
                        "lesion": les, "mirror": mirror, "head": head,
                        "lesion_px": int(les.sum())})
    return sorted(out, key=lambda s: s["z"])


def synthetic_lesion_slices(volumes: int, seed: int = 0) -> list[dict]:
    """Lesions no training image has, on training slices (for choosing settings without the
    patients): the B1-style slices (TRAIN_Z) of the first ``volumes`` IXI training volumes,
    each with one ellipse (semi-axes 3-7 pixels, any angle) inside the brain (its centre at
    least 12 pixels inside the head, its edge at least 4 pixels clear of the midline, so
    its mirror is normal tissue) whose level is 0.35, 0.6 or 1.5 times the median of the
    tissue around it, the three in turn from one slice to the next (dark as a stroke's
    cavity, moderately dark as a glioma on T1, about as bright as the brightest white
    matter), blended in over a 1-pixel Gaussian edge. Keys as :func:`lesion_slices`'s and
    "volume"; a slice with no room for the lesion is an error naming it."""
    from scipy.ndimage import binary_erosion, center_of_mass, gaussian_filter

    from diffrecon.testing import TRAIN_Z, b1_image, ixi_split

    rng = np.random.default_rng(seed)
    levels = (0.35, 0.6, 1.5)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for path in ixi_split(MRI / "ixi_t1")[0][:volumes]:
        for z in TRAIN_Z:
            img = b1_image(path, z)
            head = _head(img, float(np.percentile(img, 99)))
            centre = center_of_mass(head)[1]
            a, b = rng.uniform(3, 7, size=2)
            ang = rng.uniform(0, np.pi)
            # where the centre may lie: inside, clear of the midline
            room = binary_erosion(head, iterations=12) & (np.abs(xx - centre) > max(a, b) + 4)
            if not room.any():
                raise ValueError(f"{path.name} z {z}: no room for a synthetic lesion")
            while True:
                cy, cx = rng.integers(0, SIZE, size=2)
                if room[cy, cx]:
                    break
            u = (yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
            v = -(yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
            les = (u / a) ** 2 + (v / b) ** 2 <= 1
            ring = binary_erosion(~les, iterations=2) & ~binary_erosion(~les, iterations=6)
            level = levels[len(out) % len(levels)] * float(np.median(img[ring & head]))
            w = gaussian_filter(les.astype(np.float32), 1.0)
            truth = np.clip(img * (1 - w) + level * w, 0, None)
            mirror = _mirror(les, centre) & ~les & head
            out.append({"volume": path.name.removesuffix(".nii.gz"), "z": z,
                        "truth": (truth / truth.max()).astype(np.float32), "lesion": les,
                        "mirror": mirror, "head": head, "lesion_px": int(les.sum())})
    return out


def lesion_scores(x: np.ndarray, truth: np.ndarray, les: np.ndarray, mirror: np.ndarray
                  ) -> dict:
    a = np.abs(x)
    rmse = float(np.sqrt(np.mean((a[les] - truth[les]) ** 2)))
    contrast = float(a[les].mean() - a[mirror].mean())
    true_contrast = float(truth[les].mean() - truth[mirror].mean())
    # the ratio is meaningless where the truth has no contrast (the glioma on T1): the
    # absolute error, in units of the slice's maximum, reads for both
    return {"psnr_lesion": 20 * np.log10(float(truth.max()) / max(rmse, 1e-12)),
            "contrast_ratio": contrast / true_contrast, "true_contrast": true_contrast,
            "contrast_error": abs(contrast - true_contrast) / float(truth.max())}


def _cases(args):
    """(patient, slice) pairs: the patients' lesion slices, or with --synthetic the training
    slices with synthetic lesions (the patient named by the IXI volume)."""
    if args.synthetic:
        for s in synthetic_lesion_slices(args.synthetic):
            yield f"synthetic-{s['volume']}", s
        return
    for patient, how in PATIENTS.items():
        how = dict(how)
        t1, flair = MRI / how.pop("t1"), MRI / how.pop("flair")
        for s in lesion_slices(t1, flair, n=args.slices, **how):
            yield patient, s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--accels", default="4,8")
    ap.add_argument("--branch-steps", type=int, default=0)
    ap.add_argument("--diffusion", default="dds", help="comma list of dds, dds-tv")
    ap.add_argument("--std-model", default=None, help="an error model file, or 'prior'")
    ap.add_argument("--nfe", type=int, default=PriorRef.model_fields["nfe"].default)
    ap.add_argument("--cg-iters", type=int, default=PriorRef.model_fields["cg_iters"].default)
    ap.add_argument("--synthetic", type=int, default=0, help="N: instead of the patients, "
                    "synthetic lesions on TRAIN_Z slices of the first N IXI training volumes")
    ap.add_argument("--out", default="benchmarks/results/lesion.json")
    args = ap.parse_args()
    maps = torch.from_numpy(np.load(MRI / "b1_simulation_maps_16ch_128.npy"))
    prior = resolve_prior("brain-t1-axial-128")
    cfg = ReconConfig(diffusion=PriorRef(samples=args.samples, branch_steps=args.branch_steps,
                                         std_model=args.std_model, nfe=args.nfe,
                                         cg_iters=args.cg_iters))
    # each method's sampler settings as the flow makes them (dds-tv: ADMM-TV's weight)
    samplers = {m: cfg.diffusion.sampler_config(m, tv_lam=cfg.tv_lam)
                for m in args.diffusion.split(",")}
    rows, sheet = [], []
    t0 = time.perf_counter()
    fitted = Path(args.out).parent / "uncertainty.json"  # its training-slice fit
    table = json.loads(fitted.read_text()).get("aliasing") if fitted.exists() else None
    for patient, s in _cases(args):
        volume = f"lesion-{patient}"
        k = _b1_kspace(volume, s["z"], s["truth"], maps)
        case = MRICase(volume, s["z"], k, torch.from_numpy(s["truth"]))
        for accel in (int(a) for a in args.accels.split(",")):
            mask = case.mask(accel, "equispaced")
            ku = (case.kspace * mask)[None]
            smaps = coils.estimate_coil_maps(ku, mask)
            op = Sense(smaps, mask)
            recs = {
                "zero-filled": classical.zero_filled(ku, mask),
                "cg-sense": classical.cg_sense(ku, smaps, mask, cfg.lam, cfg.cg_iters),
                "admm-tv": classical.tv_sense(ku, smaps, mask, cfg.tv_lam),
            }
            stds = {}
            base = {}  # the rows' method names -> the diffusion method
            for m, sampler in samplers.items():
                name = f"{m} (K={args.samples})"
                base[name] = m
                recs[name], stds[name], _ = run_diffusion(
                    [prior], sampler, lambda a, b, op=op: op, ku, samples=args.samples)
            for method, x in recs.items():
                xn = x[0].numpy()
                row = {"patient": patient, "z": s["z"], "lesion_px": s["lesion_px"],
                       "setting": f"R={accel} equispaced", "method": method,
                       "psnr": metrics.psnr(xn, s["truth"]),
                       **lesion_scores(xn, s["truth"], s["lesion"], s["mirror"])}
                inv = metrics.invented_mask(xn, s["truth"], s["head"])[0]
                row["invented_px"] = int(inv.sum())
                if stds.get(method) is not None:  # K > 1: the std maps
                    mean, std = x, stds[method]
                    u = sd = std[0].numpy()
                    err = np.abs(np.abs(xn) - s["truth"])  # what a map should follow
                    row["error_lesion_over_mirror"] = float(err[s["lesion"]].mean()
                                                            / err[s["mirror"]].mean())
                    row["std_lesion_over_mirror"] = float(sd[s["lesion"]].mean()
                                                          / sd[s["mirror"]].mean())
                    if table:  # with the aliasing term, as --std-aliasing adds it
                        u = aliasing_map(op, mean, std, table)[0].numpy()
                        row["u_lesion_over_mirror"] = float(
                            u[s["lesion"]].mean() / u[s["mirror"]].mean())
                    if cfg.diffusion.std_model:  # the error model's map (its method's)
                        model = cfg.diffusion.std_model
                        row["model_points"] = model_methods(model, base[method])
                        u = error_model_map(op, mean, std, model,
                                            row["model_points"])[0].numpy()
                        row["model_lesion_over_mirror"] = float(
                            u[s["lesion"]].mean() / u[s["mirror"]].mean())
                    # the map over the whole object, as uncertainty.py measures it on B1
                    row["calibration"] = calibration(np.abs(xn)[None], u[None],
                                                     s["truth"][None])
                    if inv.any():  # does the map (the last of those above) warn there?
                        rest = s["head"] & ~inv
                        row["invented_covered"] = calibration(
                            np.abs(xn)[None], u[None], s["truth"][None], inv[None])["coverage"]
                        row["invented_map_over_rest"] = float(u[inv].mean() / u[rest].mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
            if accel == 8:
                sd = next(iter(stds.values()))  # None for one sample
                sheet.append((s, [np.abs(recs[m][0].numpy())
                                  for m in ["cg-sense", "admm-tv", *stds]],
                              None if sd is None else sd[0].numpy()))
    summary = summarise(rows)
    for line in summary:
        print(json.dumps(line))
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary,
                                          "samples": args.samples,
                                          "branch_steps": args.branch_steps,
                                          "seconds": time.perf_counter() - t0}, indent=1))
    _sheet(sheet, Path(args.out).with_suffix(".png"))


def summarise(rows: list[dict]) -> list[dict]:
    """Per patient (the synthetic slices together), setting and method: the mean lesion
    contrast error, PSNR, lesion PSNR and invented pixels over the slices, and on how many
    slices the method's contrast error is at most CG-SENSE's."""
    def group(r: dict) -> str:
        return "synthetic" if r["patient"].startswith("synthetic") else r["patient"]

    cg = {(r["patient"], r["z"], r["setting"]): r["contrast_error"] for r in rows
          if r["method"] == "cg-sense"}
    keys = dict.fromkeys((group(r), r["setting"], r["method"]) for r in rows)
    out = []
    for g, setting, method in keys:
        sel = [r for r in rows if (group(r), r["setting"], r["method"]) == (g, setting, method)]
        out.append({"patient": g, "setting": setting, "method": method, "slices": len(sel),
                    **{f"mean_{k}": float(np.mean([r[k] for r in sel]))
                       for k in ("contrast_error", "psnr", "psnr_lesion", "invented_px")
                       if all(k in r for r in sel)},
                    "slices_at_most_cg_sense": sum(
                        r["contrast_error"] <= cg[(r["patient"], r["z"], r["setting"])]
                        for r in sel)})
    return out


def _sheet(items, path: Path) -> None:
    """Per slice: truth with the lesion (red) and mirror (green) outlines, CG-SENSE, ADMM-TV
    and each diffusion method (--diffusion, in order) at R = 8, the first diffusion method's std
    (with K > 1)."""
    from PIL import Image
    from scipy.ndimage import binary_erosion

    rows = []
    for s, images, sd in items:
        def rgb(a, top=None):
            a = np.clip(a / (top or max(float(a.max()), 1e-12)), 0, 1)
            return np.repeat(a[..., None], 3, axis=2)

        t = rgb(s["truth"])
        for m, colour in ((s["lesion"], (1, 0, 0)), (s["mirror"], (0, 1, 0))):
            edge = m & ~binary_erosion(m)
            t[edge] = colour
        stdmap = [] if sd is None else [rgb(sd, float(np.percentile(sd, 99.5)))]
        rows.append(np.concatenate([t, *(rgb(a, 1.0) for a in images), *stdmap], axis=1))
    im = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    Image.fromarray(im).resize((im.shape[1] * 2, im.shape[0] * 2), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
