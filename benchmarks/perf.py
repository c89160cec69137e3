"""Speed where users wait, each figure beside its anchor, measured in one run.

    .venv/bin/python benchmarks/perf.py [--parts ct,espirit,dds,samples] [--device cpu|cuda]
                                        [--repeats 3] [--out benchmarks/results/perf.json]

Parts (a part whose anchor is not installed reports the anchor as null):
- ct: Joseph's projector, forward + adjoint, ours against astra-toolbox's CPU 'linear'
  projector (one slice at a time, as astra's 2D CPU projectors work), parallel beam:
  128 x 128 x 32 slices at 180 views, one 512 x 512 slice and an 8-slice 512 x 512 slab at
  64 and 720 views; plus the first call's set-up (kernel compile or cache load, ray
  tables). On CUDA also ours on the CPU (numba, when installed) for the CUDA/CPU ratio.
- espirit: one 15-coil 320 x 320 slice, ours against sigpy's EspiritCalib and BART's
  ecalib (Debian ``bart``, when installed); a 35-slice 15-coil 320 x 320 volume, ours.
- dds (CUDA; on the CPU only with --dds-size 64 as a smoke run): DDS slices/s at
  320 x 320 with the official ADM MRI configuration, bf16, batched, 50 NFE, 15 coils,
  against the bound set by the network's FLOPs (counted here) at --peak-tflops.
- samples: the cost of ``--samples K`` against one sample, through
  recon.diffusion.run.run_diffusion (K samples of a slice batch drawn in one batch), 50
  NFE: on CUDA the official ADM configuration at 320 x 320, 15 coils (--samples-slices,
  default 8, in batches of --dds-batch); on the CPU the shipped brain prior at
  128 x 128, 16 coils, 4 slices. Target on an H200: K = 8 at most 3x one sample. With
  --samples-branch N (default 14: 50 - 14 + 8 x 14 = 148 <= 3 x 50 network evaluations)
  also K samples that share all but their last N steps (DDSConfig.branch_steps).

Writes the run under its device's key ("cpu" / "cuda") in --out, keeping the other key and
the parts not run this time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import median_time  # benchmarks/common.py

sys.path.insert(0, str(Path(__file__).resolve().parent / "device"))

from diffrecon.recon.ct import CTGeometry, CTProjector  # noqa: E402
from diffrecon.recon.diffusion.training import hardware_name  # noqa: E402

CT_CASES = ((128, 32, 180), (512, 1, 64), (512, 1, 720), (512, 8, 64), (512, 8, 720))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ct_part(dev: torch.device, repeats: int) -> list[dict]:
    try:
        import astra
    except ImportError as e:  # say why: on the GPU machine the wheel did not import (2026-12-04)
        print(f"astra-toolbox not importable: {e}", flush=True)
        astra = None
    try:
        import numba  # noqa: F401

        cpu_kernel = True
    except ImportError:
        cpu_kernel = False
    rows = []
    for size, slices, views in CT_CASES:
        angles = np.linspace(0, np.pi, views, endpoint=False)
        n_det = int(np.ceil(size * np.sqrt(2))) | 1
        geom = CTGeometry.parallel(angles, n_det, image_shape=(size, size))
        x = torch.rand(slices, size, size, dtype=torch.float32)
        y = torch.rand(slices, views, n_det, dtype=torch.float32)

        def fwd_adj(op: CTProjector, x: torch.Tensor, y: torch.Tensor) -> None:
            op.forward(x)
            op.adjoint(y)

        op = CTProjector(geom)
        xd, yd = x.to(dev), y.to(dev)
        t0 = time.perf_counter()
        fwd_adj(op, xd, yd)  # first call: compile / cache load, ray tables or the matrix
        _sync()
        first = time.perf_counter() - t0
        ours = median_time(lambda op=op, xd=xd, yd=yd: fwd_adj(op, xd, yd), repeats)
        row = {"case": f"{size}x{size} x {slices} slices, {views} views", "size": size,
               "slices": slices, "views": views, "backend": op._backend(dev),
               "ours_s": round(ours, 4), "ours_first_call_s": round(first, 3)}
        if dev.type != "cpu" and cpu_kernel:
            cop = CTProjector(geom)
            fwd_adj(cop, x, y)
            row["ours_cpu_s"] = round(median_time(
                lambda cop=cop, x=x, y=y: fwd_adj(cop, x, y), repeats), 4)
            row["cpu_over_ours"] = round(row["ours_cpu_s"] / ours, 2)
        if astra is not None:
            vg = astra.create_vol_geom(size, size)
            pid = astra.create_projector(
                "linear", astra.create_proj_geom("parallel", 1.0, n_det, angles), vg)
            xs, ys = x.numpy(), y.numpy()

            def theirs(xs: np.ndarray = xs, ys: np.ndarray = ys, pid: int = pid) -> None:
                for s in range(len(xs)):
                    sid, _ = astra.create_sino(xs[s], pid)
                    bid, _ = astra.create_backprojection(ys[s], pid)
                    astra.data2d.delete([sid, bid])

            row["astra_s"] = round(median_time(theirs, repeats), 4)
            row["astra_over_ours"] = round(row["astra_s"] / ours, 2)
            astra.projector.delete(pid)
        else:
            row["astra_s"] = row["astra_over_ours"] = None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def espirit_part(dev: torch.device, repeats: int) -> list[dict]:
    from coil_maps import time_bart  # benchmarks/coil_maps.py

    from diffrecon.demo_data import simulated_multicoil
    from diffrecon.recon.coils import estimate_coil_maps

    params = dict(calib=24, kernel_width=6, thresh=0.02, crop=0.8)
    rows = []
    k1 = simulated_multicoil(1, 320, 15)[0]
    kd = k1.to(dev)
    estimate_coil_maps(kd, **params)  # warm-up
    ours = median_time(lambda: estimate_coil_maps(kd, **params), repeats)
    sig = median_time(lambda: estimate_coil_maps(k1, method="sigpy", **params), 1)
    b = time_bart(k1[0].numpy())
    rows.append({"case": "1 slice, 15 coils, 320 x 320", "ours_s": round(ours, 3),
                 "sigpy_s": round(sig, 3), "sigpy_over_ours": round(sig / ours, 2),
                 "bart_s": None if b is None else round(b, 3),
                 "bart_over_ours": None if b is None else round(b / ours, 2)})
    print(json.dumps(rows[-1]), flush=True)
    kv = k1.repeat(35, 1, 1, 1).to(dev)  # a 35-slice volume (one slice's data, 35 times)
    vol = median_time(lambda: estimate_coil_maps(kv, **params), max(1, repeats // 2))
    rows.append({"case": "35 slices, 15 coils, 320 x 320", "ours_s": round(vol, 3),
                 "target_s": 5.0, "per_slice_s": round(vol / 35, 4)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def dds_part(dev: torch.device, size: int, slices: int, batch: int, peak_tflops: float,
             compile_: bool = False) -> dict:
    from dds_throughput import adm_config, build, run  # benchmarks/device/dds_throughput.py
    from torch.utils.flop_counter import FlopCounterMode

    from diffrecon.recon.diffusion.adm import ADMUNet

    channels = 256 if size == 320 else 64
    with torch.device("meta"):  # count the FLOPs of one forward without running it
        net = ADMUNet(adm_config(size, channels)).eval()
        x, t = torch.randn(1, 2, size, size), torch.full((1,), 500, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, t)
    flops = fc.get_total_flops()
    prior = build(size, channels, dev, dev.type == "cuda", compile_)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = run(prior, slices, batch, size, 15, 50, dev)
    bound = peak_tflops * 1e12 / (flops * 50)
    out = {"size": size, "channels": channels, "nfe": 50, "coils": 15, "batch": batch,
           "compile": compile_, "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "slices_per_s": round(rate, 3), "network_gflop_per_forward": round(flops / 1e9, 1),
           "peak_tflops": peak_tflops, "flop_bound_slices_per_s": round(bound, 2),
           "share_of_bound": round(rate / bound, 3), "target_slices_per_s": 3.3,
           "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                               if dev.type == "cuda" else None)}
    print(json.dumps(out), flush=True)
    return out


def samples_part(dev: torch.device, k: int, slices: int, batch: int, branch: int = 0) -> dict:
    from diffrecon.recon.diffusion.dds import DDSConfig
    from diffrecon.recon.diffusion.run import run_diffusion
    from diffrecon.recon.masks import make_mask
    from diffrecon.recon.operators import Sense
    from diffrecon.recon.simulation import birdcage_maps

    if dev.type == "cuda":
        from dds_throughput import build  # benchmarks/device/dds_throughput.py

        size, coils, prior = 320, 15, build(320, 256, dev, True, False)
        name = "ADM (official DDS MRI configuration, random weights), bf16"
    else:
        from diffrecon.recon.diffusion.registry import resolve_prior

        size, coils, slices, batch = 128, 16, 4, 4
        prior, name = resolve_prior("brain-t1-axial-128"), "brain-t1-axial-128"
    maps = birdcage_maps(coils, (size, size)).to(dev)
    mask = make_mask("equispaced", (size, size), 4).to(dev)
    x = torch.randn(slices, size, size, dtype=torch.complex64, device=dev)
    y = Sense(maps, mask).forward(x)

    def op(a: int, b: int) -> Sense:
        return Sense(maps[None].expand(b - a, -1, -1, -1), mask)

    run_diffusion([prior], DDSConfig(nfe=2), op, y[:1], 1)  # warm-up
    secs = {}
    for kk, n in ((1, 0), (k, 0)) + (((k, branch),) if branch else ()):
        _sync()
        t0 = time.perf_counter()
        run_diffusion([prior], DDSConfig(branch_steps=n), op, y, batch, samples=kk)
        _sync()
        secs[kk, n] = time.perf_counter() - t0
    out = {"prior": name, "size": size, "coils": coils, "slices": slices, "slice_batch": batch,
           "nfe": 50, "k": k, "seconds_one_sample": round(secs[1, 0], 2),
           f"seconds_k{k}": round(secs[k, 0], 2), "cost_ratio": round(secs[k, 0] / secs[1, 0], 2),
           "target_ratio": 3.0 if dev.type == "cuda" else None}
    if branch:  # the K samples share all but the last `branch` steps
        out.update({"branch_steps": branch, f"seconds_k{k}_branched": round(secs[k, branch], 2),
                    "cost_ratio_branched": round(secs[k, branch] / secs[1, 0], 2),
                    "network_work_ratio_branched": round((50 - branch + k * branch) / 50, 2)})
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="ct,espirit,dds,samples")
    ap.add_argument("--samples-k", type=int, default=8)
    ap.add_argument("--samples-slices", type=int, default=8)
    ap.add_argument("--samples-branch", type=int, default=14,
                    help="also time K samples sharing all but their last N steps (0: not)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dds-size", type=int, default=320)
    ap.add_argument("--dds-slices", type=int, default=32)
    ap.add_argument("--dds-batch", type=int, default=16)
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN time its convolution algorithms for each shape first "
                         "(torch.backends.cudnn.benchmark)")
    ap.add_argument("--dds-compile", action="store_true",
                    help="torch.compile the network (compile time in the warm-up, untimed)")
    ap.add_argument("--peak-tflops", type=float, default=790.0,
                    help="the device's dense bf16 rate for the FLOP bound (H200: about 790)")
    ap.add_argument("--out", default="benchmarks/results/perf.json")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dev = torch.device(args.device)
    parts = args.parts.split(",")
    run_info = {"hardware": hardware_name(dev), "threads": torch.get_num_threads(),
                "date": datetime.date.today().isoformat()}
    print(json.dumps(run_info), flush=True)
    if "ct" in parts:
        run_info["ct"] = ct_part(dev, args.repeats)
    if "espirit" in parts:
        run_info["espirit"] = espirit_part(dev, args.repeats)
    if "dds" in parts and (dev.type == "cuda" or args.dds_size < 320):
        run_info["dds"] = dds_part(dev, args.dds_size, args.dds_slices, args.dds_batch,
                                   args.peak_tflops, args.dds_compile)
    if "samples" in parts:
        run_info["samples"] = samples_part(dev, args.samples_k, args.samples_slices,
                                           args.dds_batch, args.samples_branch)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old[dev.type] = {**old.get(dev.type, {}), **run_info}  # parts run apart add up
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {out} ({dev.type}); {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
