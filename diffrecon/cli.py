"""The ``diffrecon`` command: thin, parses arguments and calls flows."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffrecon.config import ReconConfig

DEMO_PRIOR = "brain-t1-axial-128"


def _checked(field: str, value: object, **others: object) -> object:
    """``value`` as PriorRef checks ``field`` (with ``others`` set); an argparse type's
    helper: a bad value is a usage error with the config's own message."""
    from pydantic import ValidationError

    from diffrecon.config import PriorRef

    try:
        return getattr(PriorRef(**{field: value}, **others), field)
    except ValidationError as exc:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise argparse.ArgumentTypeError(why) from None


def _points(text: str) -> list[tuple]:
    """--std-aliasing 'F:W[:S][:PATTERN],...' -> the points as the config checks them."""
    return _checked("std_aliasing", [i.strip() for i in text.split(",") if i.strip()])


def _model_file(text: str) -> dict | str:
    """--std-model: 'prior' (read by _prior_ref, for --prior) or an error model file, read
    and checked as the config checks it (a bad file is a usage error naming it)."""
    return text if text == "prior" else _checked("std_model", text, samples=2)


# the sampler flags of `run` and the PriorRef fields they set (defaults and help come from
# PriorRef, whose defaults come from the samplers' settings: each default lives in one place)
_SAMPLER_FLAGS = (("--pattern", "pattern", str), ("--z-tv-lam", "tv_lam", float),
                  ("--z-tv-rho", "tv_rho", float), ("--nfe", "nfe", int),
                  ("--eta", "eta", float), ("--cg-iters", "cg_iters", int),
                  ("--gamma", "gamma", float), ("--dps-steps", "dps_steps", int),
                  ("--dps-step-size", "dps_step_size", float),
                  ("--sampler-seed", "seed", int), ("--plane-tv-lam", "plane_tv_lam", float),
                  ("--tv-iters", "tv_iters", int), ("--grid", "grid", str),
                  ("--samples", "samples", int), ("--branch-steps", "branch_steps", int),
                  ("--std-scale", "std_scale", float),
                  ("--std-threshold", "std_threshold", float),
                  ("--std-aliasing", "std_aliasing", _points),
                  ("--std-model", "std_model", _model_file))
_SAMPLER_SWITCHES = (("--real-object", "real_object"), ("--compile", "compile"))


def _quiet_prefect(verbose: bool) -> None:
    # INFO reaches the server (the UI's log tab); the console shows warnings unless -v
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
                          "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _die_with_parent() -> None:
    """In a child before exec: the kernel kills it (SIGKILL) when the thread that started
    it dies, so a killed ``diffrecon`` leaves no orphan behind (Linux; elsewhere a no-op)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _temporary_server() -> None:
    """With no Prefect server configured (PREFECT_API_URL unset), start Prefect's temporary
    server now, from the main thread, tied to this process: it dies with us, even when we
    are killed with SIGKILL (Prefect's own exit hook only runs on a clean exit)."""
    import functools
    import os
    import subprocess

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    # Prefect waits 20 s for it by default; cold starts on a 2-core node took 27-34 s
    # (benchmarks/cli_overhead.py) and the run failed: wait up to 90 s unless set
    timeout = {} if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ else \
        {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90}
    popen = subprocess.Popen
    subprocess.Popen = functools.partial(popen, preexec_fn=_die_with_parent)
    try:
        with temporary_settings(timeout):
            SubprocessASGIServer().start()  # the instance Prefect's client then uses
    finally:
        subprocess.Popen = popen


def _methods(values: list[str], modality: str = "mri") -> list[str]:
    from diffrecon.config import CT_METHODS, MRI_METHODS

    allowed = CT_METHODS if modality == "ct" else MRI_METHODS
    out: list[str] = []
    for v in values:
        for m in v.split(","):
            m = m.strip()
            if m not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown method {m!r} for {modality.upper()}; choose from "
                    f"{', '.join(allowed)}"
                )
            if m not in out:
                out.append(m)
    return out


def _run_flow(paths: list[str], config: ReconConfig) -> int:
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.results import format_table

    _temporary_server()
    # a batch with a failed scan ends as a failed flow run; its records are the state's data
    state = reconstruct_scans(paths, config, fail_run=True, return_state=True)
    records = state.result(raise_on_failure=False)
    if isinstance(records, ValueError | FileNotFoundError):  # bad settings, found before work
        raise records
    if not isinstance(records, list):
        print(f"diffrecon: error: the run did not finish: {state.message or records}",
              file=sys.stderr)
        return 1
    print(format_table(records))
    print(f"\nresults: {Path(config.out_dir) / 'results.json'}")
    for r in records:
        if r.output:
            print(f"image:   {r.output}")
    return 0 if all(r.state == "done" for r in records) else 1


def _prior_ref(args: argparse.Namespace):
    from diffrecon.config import PriorRef

    ct = getattr(args, "modality", "mri") == "ct"
    prior = args.prior or ("ct-axial-128" if ct else "brain-t1-axial-128")
    aux = args.prior_aux or ("ct-coronal-128" if ct else None)
    flags = [(flag, field) for flag, field, _ in _SAMPLER_FLAGS] + list(_SAMPLER_SWITCHES)
    return PriorRef(prior=prior, aux_prior=aux,
                    **{field: getattr(args, flag[2:].replace("-", "_")) for flag, field in flags})


def _pacs(dest: str | None) -> str | None:
    """The PACS destination without user-info: credentials typed into the URL are moved to
    the environment of this process (DIFFRECON_PACS_USER / _PASSWORD), with a warning, so
    they are never printed, logged or stored with the run."""
    from diffrecon.io.pacs import (
        PASSWORD_ENV,
        USER_ENV,
        parse_destination,
        redact,
        split_credentials,
    )

    if dest is None:
        return None
    url, login = split_credentials(dest)
    if login is not None:
        os.environ[USER_ENV], os.environ[PASSWORD_ENV] = login
        print(f"diffrecon: warning: credentials in --pacs {redact(dest)} moved out of the URL; "
              f"prefer {USER_ENV} / {PASSWORD_ENV} or --pacs-secret", file=sys.stderr)
    parse_destination(url)  # a bad destination: one line, before any work
    if url.lower().startswith("http://"):
        print(f"diffrecon: warning: --pacs {url} is plain http: the series (and any login) "
              "travel unencrypted; use https", file=sys.stderr)
    return url


def _dask_spec(text: str | None):
    from diffrecon.config import DaskSpec

    if text is None:
        return None
    if text == "cuda":
        return DaskSpec(cuda=True)
    if "://" in text:
        return DaskSpec(address=text)
    if text.isdigit() and int(text) > 0:
        return DaskSpec(n_workers=int(text))
    raise ValueError(f"--dask {text}: give a number of workers, a scheduler address "
                     "(tcp://host:8786) or 'cuda'")


def _config(args: argparse.Namespace, **extra: object) -> ReconConfig:
    """The ReconConfig of the options `run` and `inbox` share, checked before any work (the
    priors too)."""
    from diffrecon.config import CTSpec, MaskSpec, ReconConfig
    from diffrecon.flows.reconstruct import check_priors

    if args.method is None:
        args.method = ["fbp"] if args.modality == "ct" else ["cg-sense"]
    config = ReconConfig(
        modality=args.modality,
        ct=CTSpec(views=args.views, limited_angle=args.limited_angle, size=args.ct_size,
                  series_uid=args.series_uid),
        methods=_methods(args.method, args.modality),
        diffusion=_prior_ref(args),
        mask=MaskSpec(kind=args.mask, accel=args.accel, seed=args.seed),
        device=args.device,
        coil_compression=args.coils,
        calib=args.calib,
        outputs=_outputs(args.outputs),
        pacs=_pacs(args.pacs),
        pacs_secret=args.pacs_secret,
        deidentify=args.deidentify,
        slice_batch=args.slice_batch,
        name_by=args.name_by,
        permissions=args.permissions,
        **extra,
    )
    check_priors(config)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args, out_dir=str(args.out), store=args.store, dask=_dask_spec(args.dask))
    return _run_flow([str(p) for p in args.files], config)


def cmd_inbox(args: argparse.Namespace) -> int:
    from diffrecon.flows.inbox import InboxBusyError, process_inbox

    config = _config(args)
    _temporary_server()
    try:
        summary = process_inbox(args.inbox, args.out, config, force=args.force,
                                max_attempts=args.max_attempts, settle_seconds=args.settle)
    except InboxBusyError as exc:
        print(f"diffrecon: {exc}", file=sys.stderr)
        return 3
    for s in summary:
        print(f"{s['scan']:32s} {s['state']:12s} {s.get('reason') or ''}")
    print(f"{len(summary)} scan(s) processed; ledger: {Path(args.out) / 'ledger.sqlite'}")
    last = {s["scan"]: s["state"] for s in summary}  # a dead run's claim, then the retry
    return 0 if all(state not in ("failed", "running") for state in last.values()) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from diffrecon.config import OUTPUTS
    from diffrecon.flows.export import export_results
    from diffrecon.results import read_results

    to = _outputs(args.to)
    wrong = [t for t in to if t not in OUTPUTS]
    if wrong or not to:
        raise ValueError(f"--to {args.to}: choose from {', '.join(OUTPUTS)}")
    identity = {kw: getattr(args, kw) for kw in ("PatientName", "PatientID",
                                                 "StudyInstanceUID", "AccessionNumber",
                                                 "StudyDate") if getattr(args, kw)}
    images: list[Path] = []
    for item in args.results:
        if item.is_dir():
            if not (item / "results.json").exists():
                raise FileNotFoundError(f"{item}: no results.json in this folder")
            images += [Path(r.output) for r in read_results(item / "results.json")
                       if r.output and r.state == "done"]
        elif item.exists():
            images.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    _temporary_server()
    results = export_results([str(i) for i in images], to,
                             str(args.out) if args.out else None, _pacs(args.pacs),
                             args.source, args.deidentify, args.modality, args.description,
                             identity, args.pacs_secret)
    failed = 0
    for out in results:  # one bad image or a failed send does not stop the rest
        image = Path(out["image"])
        if out["state"] != "done":
            print(f"{image}: export failed: {out['error']}", file=sys.stderr)
            failed += 1
            continue
        for path in out["paths"]:
            print(f"{image.name}: wrote {path}")
        if out["sent"]:
            print(f"{image.name}: sent {out['sent']}")
    return 1 if failed else 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from diffrecon.daemon import default_socket, serve

    return serve(args.socket or default_socket())


def cmd_methods(args: argparse.Namespace) -> int:
    from diffrecon.flows.reconstruct import METHODS

    for m in METHODS.values():
        needs = [n for n, flag in (("coil maps (MRI)", m.coil_maps), ("a prior", m.needs_prior),
                                   ("a perpendicular prior (--prior-aux)", m.aux_prior))
                 if flag]
        print(f"{m.name:22s} {'/'.join(m.modalities):7s} {m.summary}"
              + (f"; needs {', '.join(needs)}" if needs else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from diffrecon.config import MaskSpec, ReconConfig
    from diffrecon.demo_data import write_demo_scan

    out = Path(args.out)
    scan = write_demo_scan(out / "input" / "mni152_demo.h5")
    print(f"sample scan (MNI152 T1 template, 12 simulated coils, fully sampled): {scan}")
    from diffrecon.config import PriorRef
    from diffrecon.flows.priors import list_priors

    shipped = {cfg.name for _, cfg, _ in list_priors() if cfg is not None}
    methods = ["zero-filled", "cg-sense"]
    if DEMO_PRIOR in shipped:
        methods += ["dds", "dds-tv"]
        print(f"DDS and dds-tv with the shipped prior {DEMO_PRIOR} (see its card.md for how it "
              "was trained)")
    config = ReconConfig(
        methods=methods,
        mask=MaskSpec(kind="equispaced", accel=4),
        out_dir=str(out),
        device=args.device,
        diffusion=PriorRef(prior=DEMO_PRIOR),
    )
    return _run_flow([str(scan)], config)


def cmd_train(args: argparse.Namespace) -> int:
    from diffrecon.flows.train import TrainConfig, train_prior, volume_files

    if args.min_snr is not None and args.min_snr <= 0:
        raise ValueError(f"--min-snr {args.min_snr:g}: give a positive gamma (e.g. 5)")
    files = volume_files(args.data, first=args.first)
    if not files:
        raise SystemExit(f"diffrecon train: no NIfTI volumes in {' '.join(args.data)}")
    out = Path(args.out)
    cfg = TrainConfig(
        name=args.name or out.name, modality=args.modality, orientation=args.orientation,
        size=args.size, steps=args.steps, batch_size=args.batch, lr=args.lr,
        checkpoint_every=args.checkpoint_every, seed=args.seed, augment=args.augment,
        jitter=args.jitter, patch=args.patch, patch_full=args.patch_full,
        positions=args.positions, base_channels=args.base_channels,
        channel_mult=tuple(int(m) for m in args.channel_mult.split(",")),
        n_samples=args.samples, network_note=args.network_note,
        sample_steps=args.sample_steps, data_description=args.data_description,
        data_licence=args.data_licence, prediction=args.prediction, min_snr=args.min_snr,
    )
    work = args.work or str(out.parent / f".{out.name}.train")
    print(f"training {cfg.name} on {len(files)} volumes ({args.modality}, {args.orientation}); "
          f"training state in {work}")
    _temporary_server()
    r = train_prior([str(f) for f in files], cfg, str(out), work, args.device, args.val_fraction)
    val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
    print(f"step {r['step']}: loss {r['final_loss']:.4f}, validation loss {val}, "
          f"{r['images_per_second']:.1f} images/s on {r['hardware']}, {r['seconds']:.0f} s")
    print(f"prior:   {r['prior']}\nsamples: {r['samples']}")
    return 0


def cmd_prior_list(args: argparse.Namespace) -> int:
    from diffrecon.flows.priors import PRIORS_DIR, card_facts, list_priors

    rows = list_priors(args.dir)
    if not rows:
        print(f"no priors in {args.dir or PRIORS_DIR}")
        return 0
    for folder, cfg, problem in rows:
        if cfg is None:
            print(f"{folder.name:28s} INVALID: {problem}")
        else:
            print(f"{cfg.name:28s} {cfg.modality:4s} {cfg.orientation or '-':9s} "
                  f"{cfg.image_size}x{cfg.image_size} {len(cfg.channels)}ch "
                  f"{cfg.architecture:22s} {folder}")
            facts = card_facts(folder)
            if facts:
                print("    " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    return 0


def cmd_prior_import(args: argparse.Namespace) -> int:
    from diffrecon.flows.priors import import_dds

    path = import_dds(args.file, args.kind, args.out, args.dtype)
    print(f"imported {args.file} as {path}")
    return 0


def cmd_prior_convert(args: argparse.Namespace) -> int:
    from diffrecon.flows.priors import convert_prior

    path = convert_prior(args.prior, args.out, args.weights_dtype)
    size = (path / "model.safetensors").stat().st_size
    print(f"wrote {path} ({args.weights_dtype} weights, {size / 2**20:.1f} MiB)")
    return 0


def _output_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--outputs", default=default,
                   help=f"comma list of nifti, dicom, png, h5, pacs (default {default})")
    p.add_argument("--pacs", default=None,
                   help="with --outputs ...,pacs: https://host:port/dicom-web (STOW-RS) or "
                        "dicom://AE_TITLE@host:port (C-STORE); credentials: --pacs-secret or "
                        "DIFFRECON_PACS_USER / DIFFRECON_PACS_PASSWORD, never in the URL")
    p.add_argument("--pacs-secret", default=None, metavar="BLOCK",
                   help="a Prefect Secret block holding the PACS login as 'user:password'")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM outputs: replace patient identifiers (basic profile)")
    p.add_argument("--name-by", choices=["stem", "hash"], default="stem",
                   help="name scans in runs, logs and outputs by file stem or a short hash")
    p.add_argument("--permissions", choices=["private", "group", "world"], default="private",
                   help="who may read the outputs (they hold patient data): the owner only "
                        "(default; files 0600, folders 0700), also the group, or everyone")


def _recon_args(p: argparse.ArgumentParser, outputs: str) -> None:
    """The options `run` and `inbox` share: modality, methods, sampling, priors and the
    sampler, outputs."""
    from diffrecon.config import CT_METHODS, MRI_METHODS, PriorRef

    p.add_argument("--modality", choices=["mri", "ct"], default="mri",
                   help="what the inputs are (default mri)")
    p.add_argument("--method", action="append", default=None,
                   help=f"MRI: {', '.join(MRI_METHODS)}; CT: {', '.join(CT_METHODS)} (repeat "
                        "or comma-separate; default cg-sense / fbp). What each does: "
                        "diffrecon methods")
    p.add_argument("--accel", type=float, default=4.0,
                   help="MRI: acceleration R for fully sampled input (default 4)")
    p.add_argument("--mask", default="equispaced",
                   choices=["equispaced", "random", "gaussian", "poisson"],
                   help="MRI: the retrospective sampling mask (default equispaced)")
    p.add_argument("--views", type=int, default=16,
                   help="CT: views over [0, 180) degrees (default 16)")
    p.add_argument("--limited-angle", type=float, default=None,
                   help="CT: views at 0, 1, ..., DEG-1 degrees instead")
    p.add_argument("--ct-size", type=int, default=None,
                   help="CT: slices to N x N first: larger ones resampled over their whole "
                        "field of view, smaller ones padded with air (the volume methods need "
                        "the prior's 128)")
    p.add_argument("--series-uid", default=None, metavar="UID|DIGITS",
                   help="CT: the series to read from a DICOM folder holding several (its UID "
                        "or the last digits the error shows)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--coils", type=int, default=None,
                   help="MRI: compress to this many virtual coils (SVD) before the coil maps")
    p.add_argument("--calib", type=_calib, default=None, metavar="N|NxM",
                   help="MRI: ESPIRiT calibration region (lines x columns) inside the fully "
                        "sampled centre (default: the largest centred block found)")
    _output_args(p, outputs)
    p.add_argument("--prior", default=None,
                   help="dds/dps and the volume methods: a shipped prior's name or a "
                        "checkpoint folder (default brain-t1-axial-128; CT: ct-axial-128)")
    p.add_argument("--prior-aux", default=None,
                   help="dds-perpendicular(-tv): the perpendicular prior (CT default "
                        "ct-coronal-128)")
    # the sampler flags: defaults and help from PriorRef, whose defaults come from the
    # samplers' settings (recon.diffusion.settings), so each default lives in one place
    for flag, field, kind in _SAMPLER_FLAGS:
        f = PriorRef.model_fields[field]
        p.add_argument(flag, type=kind, default=f.default, help=f.description
                       + ("" if f.default is None else f" (default {f.default})"))
    for flag, field in _SAMPLER_SWITCHES:
        p.add_argument(flag, action="store_true", help=PriorRef.model_fields[field].description)
    p.add_argument("--slice-batch", type=int, default=None,
                   help="slices reconstructed together (halved on CUDA out-of-memory)")


RUN_EXAMPLES = """examples:
  diffrecon run scan.h5 --out out --method cg-sense,dds-tv --accel 8
  diffrecon run chest_ct/ --modality ct --views 8 --ct-size 128 --method fbp,dds --out out
  diffrecon run *.h5 --out out --outputs nifti,dicom,pacs --pacs https://pacs:8042/dicom-web
"""
INBOX_EXAMPLES = """examples:
  diffrecon inbox /data/inbox --out /data/outbox --method cg-sense,dds-tv
  diffrecon inbox /data/inbox --out /data/outbox --outputs nifti,pacs \
      --pacs dicom://PACS@127.0.0.1:4242 --deidentify --name-by hash
"""


def _calib(text: str) -> tuple[int, int]:
    """``24`` or ``24x32`` -> (lines, columns)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--calib {text}: give N or NxM (e.g. 24 or 24x32)")
    return (int(parts[0]), int(parts[-1]))


def _outputs(text: str) -> list[str]:
    return [o.strip() for o in text.split(",") if o.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffrecon",
        description="MRI/CT reconstruction with diffusion priors, run as Prefect flows.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="reconstruct a batch of scans",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUN_EXAMPLES)
    r.add_argument("files", nargs="+", type=Path,
                   help="MRI: fastMRI/ISMRMRD .h5 or twix .dat; CT: NIfTI or DICOM folder")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--store", default=None, help="artifact store (default OUT/.artifacts)")
    r.add_argument("--seed", type=int, default=None,
                   help="mask seed for every slice (default: one mask per slice, BENCHMARKS.md's "
                        "crc32 of scan/slice/R/mask)")
    _recon_args(r, "nifti")
    r.add_argument("--dask", default=None, metavar="N|tcp://HOST:PORT|cuda",
                   help="scale out: a local Dask cluster of N workers, an existing scheduler, "
                        "or one worker per GPU (dask_cuda)")
    r.set_defaults(func=cmd_run)

    ib = sub.add_parser("inbox", help="reconstruct every new scan of an inbox (the nightly run)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=INBOX_EXAMPLES)
    ib.add_argument("inbox", help="folder the scanners drop scans into (one run at a time)")
    ib.add_argument("--out", required=True, help="outbox (outputs and ledger.sqlite)")
    ib.add_argument("--force", action="store_true", help="reprocess scans already done")
    ib.add_argument("--max-attempts", type=int, default=3,
                    help="attempts before a failing scan is left alone, or quarantined when "
                         "it stopped the worker (default 3)")
    ib.add_argument("--settle", type=float, default=30.0,
                    help="seconds without change before a scan counts as complete (default 30)")
    _recon_args(ib, "nifti,png")
    ib.set_defaults(func=cmd_inbox, seed=None)

    ex = sub.add_parser("export", help="export reconstructions to DICOM, a PACS, HDF5, NIfTI "
                                       "or PNG")
    ex.add_argument("results", nargs="+", type=Path,
                    help="reconstruction NIfTI files, or output folders with results.json")
    ex.add_argument("--to", required=True, help="comma list of dicom, pacs, h5, nifti, png")
    ex.add_argument("--out", type=Path, default=None,
                    help="folder for the files (default: beside each result)")
    ex.add_argument("--pacs", default=None, help="https://host:port/dicom-web (STOW-RS) or "
                                                 "dicom://AE_TITLE@host:port (C-STORE)")
    ex.add_argument("--pacs-secret", default=None, metavar="BLOCK",
                    help="a Prefect Secret block holding the PACS login as 'user:password' "
                         "(else DIFFRECON_PACS_USER / DIFFRECON_PACS_PASSWORD)")
    ex.add_argument("--modality", choices=["mri", "ct"], default=None,
                    help="only for images without a diffrecon QA record beside them")
    ex.add_argument("--description", default=None, help="SeriesDescription")
    ex.add_argument("--source", default=None,
                    help="the source scan (DICOM folder or raw MRI file): study and patient "
                         "attributes and the ISMRMRD header come from it")
    for flag, kw in (("--patient-name", "PatientName"), ("--patient-id", "PatientID"),
                     ("--study-uid", "StudyInstanceUID"), ("--accession", "AccessionNumber"),
                     ("--study-date", "StudyDate")):
        ex.add_argument(flag, dest=kw, default=None, help=f"DICOM {kw} (wins over --source)")
    ex.add_argument("--deidentify", action="store_true",
                    help="replace patient identifiers (DICOM basic profile)")
    ex.set_defaults(func=cmd_export)

    me = sub.add_parser("methods", help="list the reconstruction methods and what they need")
    me.set_defaults(func=cmd_methods)

    d = sub.add_parser("demo", help="the whole pipeline on a built-in sample scan")
    d.add_argument("--out", type=Path, default=Path("demo_output"),
                   help="output folder (default demo_output)")
    d.add_argument("--device", default="auto",
                   help="auto, cpu or cuda (default auto)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a diffusion prior on NIfTI volumes")
    t.add_argument("--data", nargs="+", required=True, help="NIfTI files or folders")
    t.add_argument("--first", type=int, default=None,
                   help="use only the first N volumes by name (e.g. 26 IXI training volumes)")
    t.add_argument("--modality", choices=["mri", "ct"], required=True,
                   help="mri (complex, 2 channels) or ct (HU, 1 channel)")
    t.add_argument("--orientation", choices=["axial", "coronal", "sagittal"], default="axial",
                   help="slice orientation the prior learns (default axial)")
    t.add_argument("--size", type=int, default=128,
                   help="image size N (N x N, default 128)")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--name", default=None, help="prior name (default: the folder name)")
    t.add_argument("--work", default=None,
                   help="training state folder (default: OUT's parent/.NAME.train)")
    t.add_argument("--steps", type=int, default=2000,
                   help="optimiser steps (default 2000)")
    t.add_argument("--batch", type=int, default=8,
                   help="images per step (default 8)")
    t.add_argument("--lr", type=float, default=2e-4,
                   help="AdamW learning rate (default 2e-4)")
    t.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between resumable checkpoints (default 500)")
    t.add_argument("--base-channels", type=int, default=16,
                   help="UNet channels at full resolution (default 16)")
    t.add_argument("--channel-mult", default="1,2,4,8",
                   help="channel multipliers per level (attention at the last level)")
    t.add_argument("--network-note", default="", help="why this network size (for the card)")
    t.add_argument("--samples", type=int, default=16, help="samples in the sheet")
    t.add_argument("--sample-steps", type=int, default=50,
                   help="sampler steps for the sample sheet (default 50)")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="volumes held out for the validation loss (default 0.1)")
    t.add_argument("--augment", action="store_true",
                   help="small rotations and scalings (for small data sets, e.g. CT)")
    t.add_argument("--jitter", action="store_true",
                   help="MRI: left-right flips (axial, coronal) and gamma jitter 0.8-1.25")
    t.add_argument("--patch", type=int, default=None, metavar="P",
                   help="patch training: P x P crops ((size/P)^2 per image) on most steps")
    t.add_argument("--patch-full", type=float, default=0.25, metavar="F",
                   help="with --patch: the share of steps on whole images (default 0.25)")
    t.add_argument("--positions", action="store_true",
                   help="give the network each pixel's position in the image (2 extra input "
                   "channels; for --patch, where the crop lies)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, sampling and initialisation (default 0)")
    t.add_argument("--data-description", default="",
                   help="what the data are, for the card")
    t.add_argument("--data-licence", default="",
                   help="the data's licence, for the card")
    t.add_argument("--prediction", choices=["epsilon", "v"], default="epsilon",
                   help="what the network learns to predict: the noise (default, as DDS's "
                        "checkpoints) or v; either samples the same way")
    t.add_argument("--min-snr", type=float, default=None, metavar="GAMMA",
                   help="min-SNR-GAMMA loss weighting (e.g. 5; default: uniform)")
    t.add_argument("--device", default="auto",
                   help="auto, cpu or cuda (default auto)")
    t.set_defaults(func=cmd_train)

    dm = sub.add_parser(
        "daemon", help="a warm process that runs the commands of shells with DIFFRECON_DAEMON "
                       "set (fixed cost about 1.5 s a command instead of 5-30 s)")
    dm.add_argument("--socket", type=Path, default=None,
                    help="Unix socket to listen on (default $XDG_RUNTIME_DIR/diffrecon/"
                         "daemon.sock, else ~/.cache/diffrecon/daemon.sock)")
    dm.set_defaults(func=cmd_daemon)

    pr = sub.add_parser("prior", help="list or import priors")
    psub = pr.add_subparsers(dest="prior_command", required=True)
    pl = psub.add_parser("list", help="the shipped priors (or those in --dir)")
    pl.add_argument("--dir", default=None,
                    help="a folder of priors instead of the shipped ones")
    pl.set_defaults(func=cmd_prior_list)
    pi = psub.add_parser("import-dds", help="convert a published DDS checkpoint")
    pi.add_argument("file", help="fastmri_knee_320_complex_1m.pt or AAPM256_1M.pt")
    pi.add_argument("--kind", required=True, choices=["mri-knee-320", "ct-aapm-256"],
                    help="which published checkpoint the file is")
    pi.add_argument("--out", required=True,
                    help="checkpoint folder to write")
    pi.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                    help="weights stored as float32 (default) or float16")
    pi.set_defaults(func=cmd_prior_import)
    pc = psub.add_parser("convert", help="store a prior's weights in another dtype")
    pc.add_argument("prior", help="a shipped prior's name or a checkpoint folder")
    pc.add_argument("--weights-dtype", required=True,
                    choices=["float32", "float16", "bfloat16", "int8"],
                    help="int8: per-output-channel int8 kernels (dequantised at load), "
                         "float16 biases and norms")
    pc.add_argument("--out", required=True, help="checkpoint folder to write")
    pc.set_defaults(func=cmd_prior_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    """``diffrecon``: in a warm daemon when DIFFRECON_DAEMON names one that listens, else
    in this process."""
    from diffrecon.daemon import SOCKET_ENV, forward

    argv = sys.argv[1:] if argv is None else list(argv)
    socket_path = os.environ.get(SOCKET_ENV)
    command = next((a for a in argv if not a.startswith("-")), None)
    if socket_path and command != "daemon":
        try:
            rc = forward(socket_path, argv)
        except ValueError as exc:  # another user's socket
            print(f"diffrecon: error: {exc}", file=sys.stderr)
            return 2
        if rc is not None:
            return rc
        print(f"diffrecon: warning: no daemon listens at {SOCKET_ENV}={socket_path}; "
              "running in this process", file=sys.stderr)
    return run_command(argv)


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command here (the daemon calls this for its clients)."""
    from pydantic import ValidationError

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_prefect(args.verbose)
    from diffrecon.common.files import apply_permissions

    apply_permissions(getattr(args, "permissions", "private"))  # outputs hold patient data
    try:
        return args.func(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except ValidationError as exc:  # a bad setting: one line per problem, no pydantic dump
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            print(f"diffrecon: error: {where + ': ' if where else ''}{msg}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # clear input errors, no traceback
        print(f"diffrecon: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
