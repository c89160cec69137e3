"""Train a set of priors on a GPU machine, without Prefect: the device tool's job.

Runs the project's own training code (``recon.diffusion.training.train``) on NIfTI volumes
in --data (copied there by prepare.sh), within a time budget per prior, and writes one
tar file per prior (its checkpoint folder: weights, config, card, samples) to --out.

    python3 benchmarks/device/train_priors.py --set brain|ct --data .devdata --out $OUT
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import torch

from diffrecon.io.training_slices import load_slices, split_by_volume, volume_files
from diffrecon.recon.diffusion.training import TrainConfig, hardware_name, train

IXI = ("IXI T1 (Hammersmith Hospital, Philips 3T): the first 26 volumes of "
       "../shared/data/mri/ixi_t1 by name, the training split of BENCHMARKS.md")
CT = ("CT training files of BENCHMARKS.md: TotalSegmentator pulmonary_ct_cropped and "
      "aorta_ct_cropped, the LIDC-IDRI 0314 whole chest (275 slices at 1 mm, 1.56 mm pixels; "
      "on the GPU machine pairs of slices averaged to 2 mm, see prepare_ct.py), "
      "the TotalSegmentator 20-slice DICOM series (validation) and the two lungmask slices "
      "(the DICOM series block-averaged in-plane to about 2.5-3 mm); example_ct never trains")
NOTE = ("channels 16-32-64-128 with attention at 16x16: 2.7 M parameters, 5.1 MB in fp16 "
        "(under the 6 MB cap); the most images per second among the UNets tried under the cap")

SETS = {
    "brain": [dict(name=f"brain-t1-{o}-128", modality="mri", orientation=o, folder="ixi_t1",
                   first=26, description=IXI, licence="IXI: CC BY-SA 3.0", augment=False)
              for o in ("axial", "coronal")],
    "ct": [dict(name=f"ct-{o}-128", modality="ct", orientation=o, folder="ct", first=None,
                description=CT,
                licence="TotalSegmentator: CC BY 4.0; lungmask: Apache-2.0; LIDC-IDRI: CC BY 3.0",
                augment=True) for o in ("axial", "coronal")],
}


def progress_printer(batch: int):
    """A training callback that prints, every 100 steps, the loss and the images/s since its
    last line (steady-state throughput, without the first steps' compilation)."""
    mark = [0, time.perf_counter()]

    def progress(step: int, total: int, loss: float) -> None:
        if step - mark[0] >= 100:
            now = time.perf_counter()
            print(f"step {step}: loss {loss:.4f}, "
                  f"{(step - mark[0]) * batch / (now - mark[1]):.0f} images/s", flush=True)
            mark[:] = [step, now]

    return progress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=sorted(SETS), required=True)
    ap.add_argument("--data", default=".devdata")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=3.3, help="training budget per prior")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--work", default="/tmp/train")
    ap.add_argument("--only", help="train only the prior of this name (one process per prior)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--init-from", help="folder holding priors (by name) whose weights start "
                    "the training, e.g. diffrecon/priors")
    ap.add_argument("--pixel-range", type=float, nargs=2, metavar=("MIN_MM", "MAX_MM"),
                    help="pixel-size augmentation (CT: 1.5 3.0 covers the training volumes' "
                    "1.5 mm and the test volume's 3 mm)")
    ap.add_argument("--checkpoint-every", type=int, default=10**7)
    # the recipe (issue "Priors that win"; train_priors.sh passes $TRAIN_ARGS through)
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                    help="rotations and scalings (default: the set's, on for CT)")
    ap.add_argument("--jitter", action="store_true", help="MRI: flips and gamma jitter")
    ap.add_argument("--patch", type=int, default=None, help="patch training: crop size")
    ap.add_argument("--patch-full", type=float, default=0.25)
    ap.add_argument("--base-channels", type=int, default=16, help="network width (channels "
                    "base x 1-2-4-8; 24: 6.0 M parameters, 32: 10.7 M; a wider network "
                    "trains from scratch, --init-from needs the same width)")
    ap.add_argument("--weights-dtype", default="float16", choices=["float16", "int8"],
                    help="weights in the checkpoint (int8: per-channel scales, a quarter of "
                    "float32's bytes: all four priors <= 32 MB fits base 24)")
    ap.add_argument("--positions", action="store_true", help="pixel positions as 2 extra "
                    "input channels (with --init-from: the new channels start at zero weight)")
    ap.add_argument("--prediction", choices=["epsilon", "v"], default="epsilon")
    ap.add_argument("--min-snr", type=float, default=None)
    ap.add_argument("--channels-last", action="store_true", help="network and batches in "
                    "channels-last order (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training "
                    "forward (GPU; compile time counts in the budget)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    print(f"training the {args.set} priors on {hardware_name(dev)}", flush=True)
    for spec in SETS[args.set]:
        if args.only and spec["name"] != args.only:
            continue
        t0 = time.time()
        files = volume_files([Path(args.data) / spec["folder"]], first=spec["first"])
        tr, va = split_by_volume(files, 0.1)
        cfg = TrainConfig(
            name=spec["name"], modality=spec["modality"], orientation=spec["orientation"],
            steps=10**7, batch_size=args.batch, lr=args.lr,
            checkpoint_every=args.checkpoint_every,
            augment=spec["augment"] if args.augment is None else args.augment,
            jitter=args.jitter, patch=args.patch, patch_full=args.patch_full,
            positions=args.positions, prediction=args.prediction, min_snr=args.min_snr,
            data_description=spec["description"],
            data_licence=spec["licence"],
            network_note=NOTE if (args.base_channels, args.weights_dtype) == (16, "float16")
            else (f"base {args.base_channels} with {args.weights_dtype} weights (the shipped "
                  "priors: base 16, float16); chosen for the size budget of issue 'Priors "
                  "that win' (all priors <= 32 MB)"),
            base_channels=args.base_channels, weights_dtype=args.weights_dtype,
            max_seconds=args.minutes * 60, n_samples=16, sample_steps=50,
            init_from=str(Path(args.init_from) / spec["name"]) if args.init_from else None,
            pixel_range=tuple(args.pixel_range) if args.pixel_range else None,
        )
        train_set = load_slices(tr, spec["modality"], spec["orientation"], *cfg.storage())
        val_set = load_slices(va, spec["modality"], spec["orientation"], *cfg.storage())
        print(f"{spec['name']}: {len(train_set.images)} training slices {tuple(tr)}, "
              f"{len(val_set.images)} validation slices", flush=True)
        out = Path(args.work) / spec["name"]
        r = train(train_set, val_set, cfg, out, Path(args.work) / f".{spec['name']}.state",
                  device=dev, channels_last=args.channels_last, compile_net=args.compile,
                  callback=progress_printer(cfg.batch_size))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with tarfile.open(Path(args.out) / f"{spec['name']}.tar", "w") as tar:
            tar.add(out, arcname=spec["name"])
        print(f"{spec['name']}: {r.step} steps, {r.images_per_second:.0f} images/s, "
              f"val loss {r.val_loss}, {time.time() - t0:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
