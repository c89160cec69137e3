"""The batch flow: every scan in, the chosen outputs per method and one results table out."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from diffrecon.config import DaskSpec, ReconConfig
from diffrecon.io.errors import InvalidScanError
from diffrecon.io.records import scan_label
from diffrecon.recon.methods import METHODS
from diffrecon.results import ResultRecord, table_rows, write_results
from diffrecon.tasks import mri
from diffrecon.tasks.caching import cached, scan_run_name
from diffrecon.tasks.export import export, scan_report, send_series, series_description


def _prior_names(config: ReconConfig, method: str) -> str | None:
    """The prior(s) a method used, by the names the user gave (folder names for paths)."""
    if not METHODS[method].needs_prior:
        return None
    return " + ".join(Path(n).name for n in config.diffusion.prior_names(method))


def _send(name: str, method: str, files: list[str], config: ReconConfig
          ) -> tuple[str | None, str | None]:
    """Send the method's DICOM series when the config asks for it: (sent, error). A failed
    send leaves the series on disk and says where."""
    if "pacs" not in config.outputs:
        return None, None
    folder = next(f for f in files if f.endswith("_dicom"))
    try:
        return send_series(name, method, folder, config.pacs), None
    except Exception as exc:
        error = f"PACS send failed ({exc}); the series stays on disk at {folder}"
        get_run_logger().error("%s of %s: %s", method, name, error)
        return None, error


def process_scan(path: str, config: ReconConfig) -> list[ResultRecord]:
    """All methods of the config on one scan; a failure becomes a 'failed' record."""
    name = scan_label(path, config.name_by)
    store = config.store_root
    load, prepare, coil_maps, reconstruct, quality = cached(
        (mri.load_scan, mri.prepare_measurement, mri.estimate_coil_maps, mri.reconstruct,
         mri.quality), store)
    records: list[ResultRecord] = []
    try:
        scan = load(path, store, name).model_copy(update={"name": name})
        meas = prepare(scan, config.mask, store, config.device, config.coil_compression)
        maps = None
        maps_seconds = 0.0
        if any(METHODS[m].coil_maps for m in config.methods):
            t0 = time.perf_counter()
            maps = coil_maps(meas, store, config.coil_method, config.device)
            maps_seconds = time.perf_counter() - t0
    except Exception as exc:  # the scan cannot be used: every method fails with its reason
        get_run_logger().error("scan %s failed: %s", name, exc)
        state = "invalid" if isinstance(exc, InvalidScanError) else "failed"
        return [
            ResultRecord(scan=name, method=m, state=state, error=str(exc))
            for m in config.methods
        ]
    images = {}
    for method in config.methods:
        try:
            out = reconstruct(meas, maps if METHODS[method].coil_maps else None, method, config)
            images[method] = out.image
            qa = quality(meas, out, maps if METHODS[method].coil_maps else None, store)
            desc = series_description(method, out.prior, meas.setting)
            files = export(name, method, out.image, meas.affine, "mri", config.outputs,
                           config.out_dir, store, desc, config.deidentify, scan.source_attrs,
                           scan.header)
            sent, error = _send(name, method, files, config)
            seconds = out.seconds + (maps_seconds if METHODS[method].coil_maps else 0.0)
            records.append(
                ResultRecord(scan=name, method=method, setting=meas.setting, seconds=seconds,
                             output=files[0] if files else None, nfe=out.nfe, prior=out.prior,
                             sent=sent, error=error, state="failed" if error else "done", **qa)
            )
        except Exception as exc:
            get_run_logger().error("%s on %s failed: %s", method, name, exc)
            records.append(
                ResultRecord(scan=name, method=method, setting=meas.setting, state="failed",
                             error=str(exc))
            )
    scan_report(name, "mri", records, images, store)
    return records


def process_ct_volume(path: str, config: ReconConfig) -> list[ResultRecord]:
    """CT: simulate the sinogram of a volume, reconstruct with each method."""
    from diffrecon.tasks import ct

    name = scan_label(path, config.name_by)
    store = config.store_root
    prepare_ct, reconstruct_ct, quality_ct = cached(
        (ct.prepare_ct, ct.reconstruct_ct, ct.quality_ct), store)
    try:
        meas = prepare_ct(path, config.ct, store, name).model_copy(update={"name": name})
    except Exception as exc:
        get_run_logger().error("CT volume %s failed: %s", name, exc)
        state = "invalid" if isinstance(exc, InvalidScanError) else "failed"
        return [ResultRecord(scan=name, modality="ct", method=m, state=state, error=str(exc))
                for m in config.methods]
    records, images = [], {}
    for method in config.methods:
        try:
            diffusion = config.diffusion if METHODS[method].needs_prior else None
            image, seconds, nfe = reconstruct_ct(meas, method, config.ct, store, config.device,
                                                 diffusion, config.slice_batch)
            prior = _prior_names(config, method)
            images[method] = image
            qa = quality_ct(meas, image, store)
            files = export(meas.name, method, image, meas.affine, "ct", config.outputs,
                           config.out_dir, store, series_description(method, prior,
                                                                     meas.setting),
                           config.deidentify, meas.source_attrs)
            sent, error = _send(meas.name, method, files, config)
            records.append(ResultRecord(scan=meas.name, modality="ct", method=method,
                                        setting=meas.setting, seconds=seconds, nfe=nfe,
                                        prior=prior,
                                        output=files[0] if files else None, sent=sent,
                                        error=error, state="failed" if error else "done", **qa))
        except Exception as exc:
            get_run_logger().error("%s on %s failed: %s", method, name, exc)
            records.append(ResultRecord(scan=name, modality="ct", method=method,
                                        setting=meas.setting, state="failed", error=str(exc)))
    scan_report(meas.name, "ct", records, images, store)
    return records


@task(cache_policy=NO_CACHE, task_run_name=scan_run_name("scan"))
def reconstruct_scan(path: str, config: ReconConfig) -> list[ResultRecord]:
    """One scan as one task, for scale-out: its own tasks run inside it on the worker."""
    try:
        from distributed import get_worker

        worker = get_worker().name
    except (ImportError, ValueError):  # not on a Dask worker
        worker = None
    process = process_ct_volume if config.modality == "ct" else process_scan
    return [r.model_copy(update={"worker": str(worker)}) if worker is not None else r
            for r in process(path, config)]


def dask_runner(spec: DaskSpec):
    """prefect-dask's DaskTaskRunner for a DaskSpec: an existing scheduler, or a local
    (CUDA) cluster whose workers each offer the resource GPU=1."""
    from prefect_dask import DaskTaskRunner

    if spec.address:
        return DaskTaskRunner(address=spec.address)
    if spec.cuda:
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                              cluster_kwargs={"resources": {"GPU": 1}})
    return DaskTaskRunner(cluster_kwargs={"n_workers": spec.n_workers, "threads_per_worker": 1,
                                          "processes": spec.processes,
                                          "resources": {"GPU": 1}})


def _scale_out(paths: list[str], config: ReconConfig) -> list[list[ResultRecord]]:
    """Every scan as a task on the Dask cluster, each holding one GPU resource."""
    import dask

    with dask_runner(config.dask) as runner, dask.annotate(resources={"GPU": 1}):
        futures = [runner.submit(reconstruct_scan, {"path": str(p), "config": config})
                   for p in paths]
        return [f.result() for f in futures]


@flow(name="reconstruct-scans")
def reconstruct_scans(paths: list[str], config: ReconConfig) -> list[ResultRecord]:
    """Reconstruct every scan with every method of ``config``; write results.json.

    A bad scan fails its own tasks with the reader's message and the others complete.
    With ``config.dask`` the scans run in parallel on a Dask cluster.
    """
    records: list[ResultRecord] = []
    process = process_ct_volume if config.modality == "ct" else process_scan
    out = Path(config.out_dir)
    if config.dask is not None:
        per_scan = _scale_out(paths, config)
    else:
        per_scan = [process(str(path), config) for path in paths]
    for scan_records in per_scan:
        if scan_records:  # the QA file of each scan, beside its images
            write_results(scan_records, out / f"{scan_records[0].scan}_qa.json")
        records.extend(scan_records)
    write_results(records, out / "results.json")
    create_table_artifact(
        table=table_rows(records),
        key="reconstruction-results",
        description=f"{len(paths)} scan(s), methods {', '.join(config.methods)}",
    )
    return records
