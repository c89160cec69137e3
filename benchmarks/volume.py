"""Benchmark B4 (3D) on the CPU or a GPU (--device cuda): MRI task (a), z super-resolution
x4, and (b), 3D Cartesian k-space with a Poisson (ky, kz) mask at R = 8, on the first IXI
test volume (--volumes 0,1,2,3,4,5: all six of the full protocol); the CT task on
the B3 test volume, every axial slice, 8 and 16 views per slice.

Protocol: ../shared/BENCHMARKS.md (B4-quick: the first IXI test volume, canonical RAS,
zero-padded to 128^3; (a) each group of 4 axial slices averaged, noise 1e-3 of the maximum).
Methods: a classical baseline (the adjoint / zero-filled, CG, ADMM-TV in 3D; FBP and
ADMM-TV for CT), slice-wise 2D DDS (the axial prior, data consistency on the whole volume),
DDS + TV along z, perpendicular priors (--aux-prior: a coronal prior; pattern AAB, CG
data consistency) and both (dds-perpendicular-tv: the perpendicular priors with the TV-z
ADMM data consistency, TV-z's lam and rho). PSNR / SSIM per orientation (axial, coronal,
sagittal; means over slices that contain the object), network evaluations per slice,
seconds and peak memory (RSS) per volume (and peak GPU memory on a GPU). Results are
merged into --out by (scan, method, setting), so rows can be run separately.

    .venv/bin/python benchmarks/volume.py --task mri-zsr|mri-cartesian [--coils 1|16]
        [--prior brain-t1-axial-128] [--aux-prior brain-t1-coronal-128] [--methods ...]
    .venv/bin/python benchmarks/volume.py --task ct [--views 8,16] [--prior ct-axial-128]
        [--aux-prior ct-coronal-128] [--methods fbp,admm-tv,dds,dds-3d-tv,dds-perpendicular]

    .venv/bin/python benchmarks/volume.py --tune ...   (settings are chosen here: MRI on the
        first IXI training volume's central 32 slices, CT on the pulmonary volume)

Chosen with --tune: 16 coils --gamma 3 (noisy data consistency; noiseless amplifies noise
with maps constant along z), MRI perpendicular priors --eta 1.0 (0.5 / 0.85 / 1.0: 23.71 /
24.60 / 25.21 dB axial on z-SR). TV-z settings: MRI lam 0.02, rho 0.1 (chosen on 32 slices
of the first IXI training volume, z-SR: rho 0.03/0.1/0.3 gave 26.0/25.9/19.3 dB; rho 1 let
the TV term outweigh A^H A, whose gain is 1/4 for z-SR); CT lam 0.04, rho 10 (the DDS CT
defaults). MRI diffusion rows treat the object as real (--no-real: complex), as the
protocol's volumes are magnitude images. CT slices are 128 x 128, padded with air as in B3
(183 detectors, B3's per-slice noise).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from diffrecon.common.geometry import slice_volume, unslice_volume
from diffrecon.common.seeds import benchmark_rng, benchmark_seed
from diffrecon.config import PERPENDICULAR_METHODS, VOLUME_METHODS, Z_TV_METHODS
from diffrecon.io.nifti import load_volume
from diffrecon.recon import metrics
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.settings import sampler_eta
from diffrecon.recon.diffusion.training import hardware_name
from diffrecon.recon.diffusion.volume import DDS3DConfig, dds_volume_sample
from diffrecon.recon.operators import ZSuperResolution
from diffrecon.recon.solvers import admm_tv
from diffrecon.results import ResultRecord, format_table, write_results
from diffrecon.testing import ixi_split

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri" / "ixi_t1"


def padded_volume(path: Path, size: int = 128) -> np.ndarray:
    vol, _ = load_volume(path)
    pads = [((size - n) // 2, size - n - (size - n) // 2) for n in vol.shape]
    vol = np.pad(np.abs(vol), pads)
    return (vol / vol.max()).astype(np.float64)


def per_orientation(x_axial: np.ndarray, ref_ras: np.ndarray, data_range: float | None = None
                    ) -> dict[str, tuple[float, float]]:
    """PSNR/SSIM means over the slices of each orientation that contain the object."""
    x_ras = unslice_volume(np.abs(x_axial), "axial")
    out = {}
    for o in ("axial", "coronal", "sagittal"):
        a, r = slice_volume(x_ras, o), slice_volume(ref_ras, o)
        keep = r.reshape(len(r), -1).max(axis=1) > 0.05
        out[o] = (metrics.psnr(a[keep], r[keep], data_range),
                  metrics.ssim(a[keep], r[keep], data_range))
    return out


def mri_volume(args, index: int = 0) -> tuple[str, np.ndarray, torch.Tensor]:
    """(name, reference in RAS, axial stack) of test volume ``index`` (0: B4-quick's); with
    --tune the first IXI training volume's central 32 axial slices (for choosing settings)."""
    train, test = ixi_split(IXI)
    path = train[0] if args.tune else test[index]
    name = path.name.removesuffix(".nii.gz")
    ref_ras = padded_volume(path)
    axial = slice_volume(ref_ras, "axial")
    if args.tune:
        axial = np.ascontiguousarray(axial[48:80])
        ref_ras = unslice_volume(axial, "axial")
    return name, ref_ras, torch.from_numpy(axial)


def scan_label(args, name: str, protocol: str = "B4-quick") -> str:
    return f"{'tune' if args.tune else protocol} {name}"


def protocol(index: int) -> str:
    return "B4-quick" if index == 0 else "B4"


def mri_volumes(args) -> list[int]:
    """--volumes: test volume indices (B4-quick: 0; the full protocol: 0-5)."""
    return [0] if args.tune else [int(v) for v in args.volumes.split(",")]


# the eta of MRI rows whose setting names none: the default until session 18 (since then
# one sample runs at 1.0 unless --eta says otherwise, and its rows say ", eta 1")
UNLABELLED_ETA = 0.85


def variant(args, method: str) -> str:
    """Non-default sampler settings, appended to a row's setting: eta (MRI), noisy DC,
    pattern."""
    default = DDS3DConfig()
    out = ""
    if "dds" in method and args.eta != UNLABELLED_ETA and args.task != "ct":
        out += f", eta {args.eta:g}"
    if "dds" in method and args.gamma is not None:
        out += f", gamma {args.gamma:g}"
    if method in PERPENDICULAR_METHODS and args.pattern != default.pattern:
        out += f", {args.pattern}"
    return out


CT_VOLUME = IXI.parents[2] / "data" / "ct" / "totalsegmentator" / "example_ct.nii.gz"
B1_MAPS = IXI.parent / "b1_simulation_maps_16ch_128.npy"


def measure(records: list, out: Path, scan: str, modality: str, method: str, setting: str,
            fn, priors: list, prior_name: str | None, ref_ras: np.ndarray,
            data_range: float | None = None) -> list:
    """Run ``fn`` (a volume), score it per orientation, replace the scan's earlier rows of
    the method for ``setting`` and write the results file; network evaluations per axial
    slice."""
    before = sum(p.evaluations for p in priors)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fn()
    x = np.abs(result.cpu().numpy())  # .cpu() waits for the GPU
    seconds = time.perf_counter() - t0
    nfe = (sum(p.evaluations for p in priors) - before) // x.shape[0] or None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" \
        if result.is_cuda else ""  # not for a --device cpu run on a GPU machine
    mine = {f"{setting}, {o}" for o in ("axial", "coronal", "sagittal")}
    records = [r for r in records
               if not (r.scan == scan and r.method == method and r.setting in mine)]
    scores = per_orientation(x, ref_ras, data_range)
    for o, (p, s) in scores.items():
        records.append(ResultRecord(scan=scan, modality=modality, method=method,
                                    setting=f"{setting}, {o}", prior=prior_name, psnr=p,
                                    ssim=s, seconds=seconds, nfe=nfe))
    print(f"{scan} {method} {setting}: {seconds:.1f} s, peak RSS {peak:.1f} GiB{gpu}; PSNR "
          + " / ".join(f"{p:.2f}" for p, _ in scores.values()), flush=True)
    write_results(records, out)
    return records


def diffusion(method: str, prior, aux, op, y, args, tv: tuple[float, float]):
    """The diffusion rows of every B4 task: slice-wise DDS ("dds": the volume sampler with
    one prior and no TV), DDS + TV-z (lam, rho), perpendicular priors (AAB, CG data
    consistency) and both (dds-perpendicular-tv), with the flow's method sets."""
    if method not in ("dds", *VOLUME_METHODS):
        raise SystemExit(f"unknown method {method!r}")
    priors = [prior, aux] if method in PERPENDICULAR_METHODS else [prior]
    return dds_volume_sample(priors, op, y, DDS3DConfig(
        nfe=args.nfe, eta=args.eta, scale_factor=args.scale_factor,
        real=args.real and args.task != "ct", gamma=args.gamma, pattern=args.pattern,
        lam=tv[0], rho=tv[1] if method in Z_TV_METHODS else 0.0))


def prior_label(method: str, prior, aux) -> str | None:
    if "dds" not in method:
        return None
    return prior.name + (f" + {aux.name}" if method in PERPENDICULAR_METHODS else "")


def load_priors(args, default: str, wanted: list[str]):
    """The primary prior and the auxiliary one (None without --aux-prior: perpendicular rows
    are then skipped)."""
    diffusion_rows = any("dds" in m for m in wanted)
    dev = args.device
    prior = resolve_prior(args.prior or default, device=dev) if diffusion_rows else None
    aux = resolve_prior(args.aux_prior, device=dev) if args.aux_prior and diffusion_rows \
        else None
    for m in [m for m in wanted if m in PERPENDICULAR_METHODS]:
        if aux is None:
            print(f"{m} skipped: no --aux-prior")
            wanted.remove(m)
    return prior, aux


def run_cartesian(args) -> None:
    """B4 (b): 3D Cartesian, readout along the columns, Poisson (rows, z) mask R = 8."""
    from diffrecon.recon.masks import poisson_2d
    from diffrecon.recon.operators import Cartesian3D
    from diffrecon.recon.solvers import conjugate_gradient
    from diffrecon.results import read_results

    wanted = args.methods.split(",")
    prior, aux = load_priors(args, "brain-t1-axial-128", wanted)
    dev = torch.device(args.device)
    out = Path(args.out)
    records = list(read_results(out) if out.exists() else [])
    for index in mri_volumes(args):
        name, ref_ras, x_true = mri_volume(args, index)
        x_true = x_true.to(dev, torch.complex64)
        nz = x_true.shape[0]
        mask = poisson_2d((128, nz), 8, benchmark_seed(name, None, "poisson")).T  # (z, rows)
        maps = None
        if args.coils == 16:
            maps = torch.from_numpy(np.load(B1_MAPS)).to(dev)
        op = Cartesian3D(maps, mask.to(dev))
        y = op.forward(x_true)
        rng = benchmark_rng(name, None, "noise")
        sigma = 1e-3 * float(y.abs().max())
        noise = rng.standard_normal(tuple(y.shape)) + 1j * rng.standard_normal(tuple(y.shape))
        y = op.mask * (y + sigma * torch.from_numpy(noise.astype(np.complex64)).to(dev))
        # (noise only where sampled)
        aty = op.adjoint(y)

        def run(method: str, op=op, y=y, aty=aty):
            if method == "zero-filled":
                return aty
            if method == "cg-sense":
                return conjugate_gradient(lambda v: op.normal(v) + 1e-2 * v, aty, max_iter=30,
                                          batch_dims=0)[0]
            if method == "admm-tv":
                # lambda 0.03, rho 0.3: the best of 0.01/0.03/0.1 on the first IXI training
                # volume
                return admm_tv(op.normal, aty, 3e-2, dims=(-3, -2, -1), rho=3e-1, iters=40,
                               cg_iters=5, periodic=False, x0=aty, batch_dims=0)
            return diffusion(method, prior, aux, op, y, args, tv=(0.02, 0.1))

        setting = f"3D Cartesian R=8 Poisson, {args.coils} coil{'s' if args.coils > 1 else ''}"
        for method in wanted:
            records = measure(records, out, scan_label(args, name, protocol(index)), "mri",
                              method, setting + variant(args, method),
                              lambda m=method: run(m), [p for p in (prior, aux) if p],
                              prior_label(method, prior, aux), ref_ras)
    print(format_table(records))


def run_ct(args) -> None:
    from diffrecon.recon.ct import CTProjector, fbp, tv_ct
    from diffrecon.results import read_results
    from diffrecon.testing import ct_slices

    path = CT_VOLUME.with_name("pulmonary_ct_cropped.nii.gz") if args.tune else CT_VOLUME
    cases = ct_slices(path, every=1)
    x_true = torch.stack([c.image for c in cases]).double()  # (112, 128, 128) CT units
    ref_ras = unslice_volume(x_true.numpy(), "axial")
    wanted = args.methods.split(",")
    prior, aux = load_priors(args, "ct-axial-128", wanted)
    out = Path(args.out)
    records = [r for r in (read_results(out) if out.exists() else [])]
    for views in args.views.split(","):
        op = CTProjector(cases[0].geometry(views))
        y = torch.cat([c.sinogram(op) for c in cases]).to(args.device)

        def run(method: str, y=y, op=op):
            if method == "fbp":
                return fbp(y, op)
            if method == "admm-tv":
                return tv_ct(y, op, lam=1.0, along_z=True)
            return diffusion(method, prior, aux, op, y, args, tv=(0.04, 10.0))

        for method in wanted:
            records = measure(records, out, scan_label(args, f"ct {cases[0].volume}", "B4"),
                              "ct", method,
                              f"{views} views" + variant(args, method),
                              lambda m=method: run(m), [p for p in (prior, aux) if p],
                              prior_label(method, prior, aux), ref_ras, data_range=1.0)
    print(f"\nB4 CT on {hardware_name(torch.device(args.device))}; seconds per volume")
    print(format_table(records))
    print(f"\nwritten: {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["mri-zsr", "mri-cartesian", "ct"], default="mri-zsr")
    ap.add_argument("--coils", type=int, choices=[1, 16], default=1)
    ap.add_argument("--prior", default=None)
    ap.add_argument("--aux-prior", default=None)
    ap.add_argument("--nfe", type=int, default=50)
    ap.add_argument("--views", default="8,16")
    ap.add_argument("--eta", type=float, default=None,
                    help="DDS noise mixing (default: the flow's for one sample, 1.0, chosen "
                    "on training slices)")
    ap.add_argument("--scale-factor", type=float, default=1.0,
                    help="MRI: multiplies the estimated image scale (the least-squares image's "
                    "maximum); 3D Cartesian R = 8 single coil: 2.0, the mean true/estimated "
                    "ratio on the first three IXI training volumes (1.66, 2.14, 2.15); "
                    "16 coils: 1.45 (1.24, 1.60, 1.50)")
    ap.add_argument("--gamma", type=float, default=None,
                    help="noisy data consistency weight (default: noiseless)")
    ap.add_argument("--pattern", default=DDS3DConfig().pattern,
                    help="perpendicular priors: A axial, B aux")
    ap.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                    help="MRI: the object is a magnitude volume (as the B4 protocol makes it); "
                    "the diffusion rows keep Tweedie's real part (--no-real: complex)")
    ap.add_argument("--methods", default="fbp,admm-tv,dds,dds-3d-tv,dds-perpendicular")
    ap.add_argument("--out", default=None)
    ap.add_argument("--volumes", default="0", help="MRI: IXI test volumes by index (0: "
                    "B4-quick; 0,1,2,3,4,5: the full protocol)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (priors, data and solvers)")
    ap.add_argument("--tune", action="store_true", help="MRI: the first IXI training "
                    "volume's central 32 axial slices instead of the test volume; CT: the "
                    "pulmonary training volume (results to benchmarks/results/volume_tune.json "
                    "unless --out)")
    args = ap.parse_args()
    args.eta = sampler_eta(args.eta, 1)  # one sample per volume: the flow's default
    if args.tune:
        args.out = args.out or "benchmarks/results/volume_tune.json"
    if args.task == "ct":
        args.out = args.out or "benchmarks/results/volume_b4_ct.json"
        return run_ct(args)
    if args.task == "mri-cartesian":
        args.out = args.out or "benchmarks/results/volume_b4_cartesian.json"
        if args.methods == ap.get_default("methods"):
            args.methods = "zero-filled,cg-sense,admm-tv,dds,dds-3d-tv"
        return run_cartesian(args)
    args.out = args.out or "benchmarks/results/volume_b4_quick.json"
    if args.methods == ap.get_default("methods"):
        args.methods = "adjoint,admm-tv,dds,dds-3d-tv,dds-perpendicular"
    run_zsr(args)


def run_zsr(args) -> None:
    """B4 (a): z super-resolution x4 (groups of 4 axial slices averaged, noise 1e-3)."""
    from diffrecon.results import read_results

    wanted = args.methods.split(",")
    prior, aux = load_priors(args, "brain-t1-axial-128", wanted)
    out = Path(args.out)
    records = list(read_results(out) if out.exists() else [])
    op = ZSuperResolution(4)
    for index in mri_volumes(args):
        name, ref_ras, x_true = mri_volume(args, index)
        y = op.forward(x_true)
        rng = benchmark_rng(name, None, "noise")
        y = y + 1e-3 * float(y.abs().max()) * torch.from_numpy(
            rng.standard_normal(tuple(y.shape)))
        y = y.to(args.device)
        yc = y.to(torch.complex128)

        def run(method: str, y=y, yc=yc):
            if method == "adjoint":  # the slices repeated
                return op.adjoint(y) * 4
            if method == "admm-tv":
                return admm_tv(op.normal, op.adjoint(y), 1e-3, dims=(-3, -2, -1), rho=1e-2,
                               iters=60, cg_iters=5, periodic=False, x0=op.adjoint(y) * 4,
                               batch_dims=0)
            return diffusion(method, prior, aux, op, yc, args, tv=(0.02, 0.1))

        for method in wanted:
            records = measure(records, out, scan_label(args, name, protocol(index)), "mri",
                              method, "z-SR x4" + variant(args, method),
                              lambda m=method: run(m), [p for p in (prior, aux) if p],
                              prior_label(method, prior, aux), ref_ras)
    print(f"\nB4 (a) on {hardware_name(torch.device(args.device))}; seconds per volume")
    print(format_table(records))

if __name__ == "__main__":
    main()
