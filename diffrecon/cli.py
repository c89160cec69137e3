"""The ``diffrecon`` command: thin, parses arguments and calls flows."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _methods(values: list[str]) -> list[str]:
    from diffrecon.config import MRI_METHODS

    out: list[str] = []
    for v in values:
        for m in v.split(","):
            m = m.strip()
            if m not in MRI_METHODS:
                raise argparse.ArgumentTypeError(
                    f"unknown method {m!r}; choose from {', '.join(MRI_METHODS)}"
                )
            if m not in out:
                out.append(m)
    return out


def _run_flow(paths: list[str], config) -> int:
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.results import format_table

    records = reconstruct_scans(paths, config)
    print(format_table(records))
    print(f"\nresults: {Path(config.out_dir) / 'results.json'}")
    for r in records:
        if r.output:
            print(f"image:   {r.output}")
    return 0 if all(r.state == "done" for r in records) else 1


def cmd_run(args) -> int:
    from diffrecon.config import MaskSpec, ReconConfig

    config = ReconConfig(
        methods=_methods(args.method),
        mask=MaskSpec(kind=args.mask, accel=args.accel, seed=args.seed),
        out_dir=str(args.out),
        store=args.store,
        device=args.device,
    )
    return _run_flow([str(p) for p in args.files], config)


def cmd_demo(args) -> int:
    from diffrecon.config import MaskSpec, ReconConfig
    from diffrecon.sample import write_demo_scan

    out = Path(args.out)
    scan = write_demo_scan(out / "input" / "mni152_demo.h5")
    print(f"sample scan (MNI152 T1 template, 12 simulated coils, fully sampled): {scan}")
    config = ReconConfig(
        methods=["zero-filled", "cg-sense"],
        mask=MaskSpec(kind="equispaced", accel=4),
        out_dir=str(out),
        device=args.device,
    )
    return _run_flow([str(scan)], config)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffrecon",
        description="MRI/CT reconstruction with diffusion priors, run as Prefect flows.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="reconstruct a batch of scans")
    r.add_argument("files", nargs="+", type=Path, help="fastMRI/ISMRMRD .h5 or twix .dat")
    r.add_argument("--method", action="append", default=None,
                   help="zero-filled, cg-sense (repeat or comma-separate; default cg-sense)")
    r.add_argument("--accel", type=float, default=4.0, help="acceleration R (fully sampled input)")
    r.add_argument("--mask", default="equispaced",
                   choices=["equispaced", "random", "gaussian", "poisson"])
    r.add_argument("--seed", type=int, default=None,
                   help="mask seed (default: BENCHMARKS.md crc32 of scan/0/R/mask)")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--store", default=None, help="artifact store (default OUT/.artifacts)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the whole pipeline on a built-in sample scan")
    d.add_argument("--out", type=Path, default=Path("demo_output"))
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "method", "x") is None:
        args.method = ["cg-sense"]
    _quiet_prefect(args.verbose)
    try:
        return args.func(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    sys.exit(main())
