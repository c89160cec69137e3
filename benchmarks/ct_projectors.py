"""Speed of the CT projector: forward + adjoint at 180 views, ours vs astra-toolbox (CPU).

Cases: 128 x 128 batched over 32 slices (the target: ours no slower than astra) and one
512 x 512 slice. Same process, alternating, median of --repeats; prints the ratios.

    .venv/bin/python benchmarks/ct_projectors.py [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import astra
import numpy as np
import torch
from common import median_time  # benchmarks/common.py

from diffrecon.recon.ct import CTGeometry, CTProjector
from diffrecon.recon.diffusion.training import hardware_name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    angles = np.linspace(0, np.pi, 180, endpoint=False)
    print(f"CT projectors at 180 views on {hardware_name(dev)} (astra: CPU 'linear')")
    print(f"{'case':26s} {'ours fwd+adj (s)':>17s} {'astra fwd+adj (s)':>18s} {'astra/ours':>10s}")
    for size, slices in ((128, 32), (512, 1)):
        n_det = int(np.ceil(size * np.sqrt(2))) | 1
        geom = CTGeometry.parallel(angles, n_det, image_shape=(size, size))
        op = CTProjector(geom)
        x = torch.rand(slices, size, size, dtype=torch.float32, device=dev)
        y = op.forward(x)  # builds the matrix once (cached), not timed below

        def ours(op=op, x=x, y=y):
            op.forward(x)
            op.adjoint(y)

        vg = astra.create_vol_geom(size, size)
        pid = astra.create_projector("linear",
                                     astra.create_proj_geom("parallel", 1.0, n_det, angles), vg)
        xs = x.cpu().numpy()

        def theirs(xs=xs, pid=pid, slices=slices):
            for s in range(slices):
                sid, sino = astra.create_sino(xs[s], pid)
                bid, _ = astra.create_backprojection(sino, pid)
                astra.data2d.delete([sid, bid])

        t_ours = median_time(ours, args.repeats)
        t_astra = median_time(theirs, args.repeats)
        mode = "matrix-free" if op.matrix_free else "sparse matrix"
        print(f"{f'{size}x{size} x {slices} ({mode})':26s} {t_ours:17.3f} {t_astra:18.3f} "
              f"{t_astra / t_ours:10.2f}")


if __name__ == "__main__":
    main()
