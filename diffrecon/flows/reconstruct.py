"""The batch flow: every scan in, the chosen outputs per method and one results table out.

One scan runs :func:`process_scan`, the same procedure for MRI and CT: prepare the
measurement (MRI: load, undersample, coil maps; CT: read the volume, simulate the
sinogram), then per method reconstruct, score, export and send. What differs between the
modalities is the task behind each step, chosen by a small adapter (:class:`MRISteps`,
:class:`CTSteps`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from diffrecon.common import console
from diffrecon.common.files import apply_permissions
from diffrecon.config import DaskSpec, ReconConfig
from diffrecon.io.errors import InvalidScanError
from diffrecon.io.records import scan_labels, short_hash
from diffrecon.recon.methods import METHODS
from diffrecon.results import ResultRecord, table_rows, write_results
from diffrecon.tasks import ct, mri
from diffrecon.tasks.caching import cached, scan_run_name
from diffrecon.tasks.common import ReconOutput, tag_limits_apply
from diffrecon.tasks.export import VolumeRef, export, scan_report, send_series, series_description

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner


def _prior_names(config: ReconConfig, method: str) -> str | None:
    """The prior(s) a method used, by the names the user gave (folder names for paths)."""
    if not METHODS[method].needs_prior:
        return None
    return " + ".join(Path(n).name for n in config.diffusion.prior_names(method))


@dataclass
class Prepared:
    """What a scan's methods start from: the measurement (a task's small reference), coil
    maps and the seconds they took (MRI), and what exports inherit from the source."""

    meas: Any
    maps: Any = None
    maps_seconds: float = 0.0
    source: dict = field(default_factory=dict)
    header: str | None = None
    maps_error: str | None = None  # why coil maps could not be estimated (MRI)


class MRISteps:
    """MRI: load the raw file, undersample it (retrospectively when fully sampled), coil
    maps when a method needs them; SENSE-based methods and QA."""

    modality = "mri"

    def __init__(self, config: ReconConfig) -> None:
        self.config, self.store = config, config.store_root
        # the tasks with their results persisted in this store (content-keyed cache)
        self.prepare_scan, self.reconstruct_task = cached(
            (mri.prepare_scan, tag_limits_apply(mri.reconstruct)), self.store)

    def prepare(self, path: str, name: str) -> Prepared:
        c = self.config
        needs_maps = any(METHODS[m].coil_maps for m in c.methods)
        scan = self.prepare_scan(path, self.store, name, c.deidentify, c.mask, c.device,
                                 c.coil_compression, c.coil_method if needs_maps else None,
                                 c.calib)
        meas = scan.meas.model_copy(update={"name": name})
        if scan.maps_error:  # no usable calibration: only the methods that need maps fail
            get_run_logger().error("%s: %s", name, scan.maps_error)
        return Prepared(meas, maps=scan.maps, maps_seconds=scan.maps_seconds,
                        source=scan.source_attrs, header=scan.header,
                        maps_error=scan.maps_error)

    def reconstruct(self, p: Prepared, method: str) -> ReconOutput:
        if METHODS[method].coil_maps and p.maps_error:
            raise ValueError(p.maps_error)
        maps = p.maps if METHODS[method].coil_maps else None
        return self.reconstruct_task(p.meas, maps, method, self.config)


class CTSteps:
    """CT: read the volume (NIfTI or DICOM), simulate its sinogram; CT methods and QA."""

    modality = "ct"

    def __init__(self, config: ReconConfig) -> None:
        self.config, self.store = config, config.store_root
        self.prepare_ct, self.reconstruct_ct = cached(
            (ct.prepare_ct, tag_limits_apply(ct.reconstruct_ct)), self.store)

    def prepare(self, path: str, name: str) -> Prepared:
        meas = self.prepare_ct(path, self.config.ct, self.store, name, self.config.deidentify)
        meas = meas.model_copy(update={"name": name})
        return Prepared(meas, source=meas.source_attrs)

    def reconstruct(self, p: Prepared, method: str) -> ReconOutput:
        c = self.config
        diffusion = c.diffusion if METHODS[method].needs_prior else None
        return self.reconstruct_ct(p.meas, method, c.ct, self.store, c.device, diffusion,
                                   c.slice_batch)


STEPS = {"mri": MRISteps, "ct": CTSteps}


def _send(name: str, method: str, files: list[str], config: ReconConfig
          ) -> tuple[str | None, str | None]:
    """Send the method's DICOM series (the image's, then its std map's when there is one)
    when the config asks for it: (sent, error), the lines joined by "; ". A failed send
    leaves the series on disk and says where. A series already sent to the same destination
    (``<series>.sent.json`` beside it, written right after the send, matches its content)
    is not sent again: a rerun after a killed run does not send twice."""
    if "pacs" not in config.outputs:
        return None, None
    sent: list[str] = []
    for folder in (f for f in files if f.endswith("_dicom")):
        line, error = _send_series(name, method, folder, config)
        if error is not None:
            return "; ".join(sent) or None, error
        sent.append(line)
    return "; ".join(sent) or None, None


def _send_series(name: str, method: str, folder: str, config: ReconConfig
                 ) -> tuple[str | None, str | None]:
    import json

    from diffrecon.common.files import atomic_path, path_digest

    marker = Path(folder + ".sent.json")
    receipt = {"destination": config.pacs, "series": path_digest(folder)}
    try:
        old = json.loads(marker.read_text()) if marker.exists() else {}
        if old.get("destination") == receipt["destination"] \
                and old.get("series") == receipt["series"]:
            return old["sent"], None
        sent = send_series(name, method, folder, config.pacs, config.pacs_secret)
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({**receipt, "sent": sent}))
        return sent, None
    except Exception as exc:
        from diffrecon.io.pacs import redact

        error = f"PACS send failed ({redact(str(exc))}); the series stays on disk at {folder}"
        get_run_logger().error("%s of %s: %s", method, name, error)
        return None, error


def process_scan(path: str, config: ReconConfig, name: str) -> list[ResultRecord]:
    """All methods of the config on one scan (MRI or CT) named ``name`` (its unique label:
    outputs, records and run names); a failure becomes a 'failed' record ('invalid' for bad
    input) and the other methods go on."""
    apply_permissions(config.permissions)  # also on a Dask worker
    steps = STEPS[config.modality](config)
    record = {"scan": name, "modality": config.modality}
    console.status(f"{name}: loading ...")
    try:
        prepared = steps.prepare(path, name)
    except Exception as exc:  # the scan cannot be used: every method fails with its reason
        get_run_logger().error("scan %s failed: %s", name, exc)
        console.status(f"{name}: {'invalid' if isinstance(exc, InvalidScanError) else 'failed'}",
                       done=True)
        state = "invalid" if isinstance(exc, InvalidScanError) else "failed"
        return [ResultRecord(**record, method=m, state=state, error=str(exc))
                for m in config.methods]
    setting = prepared.meas.setting
    records: list[ResultRecord] = []
    images, stds = {}, {}
    for method in config.methods:
        console.status(f"{name}: {method} ...")
        try:
            out = steps.reconstruct(prepared, method)
            images[method] = out.image
            stds[method] = out.std
            qa = out.qa
            prior = _prior_names(config, method)
            # the coil maps are shared by the methods that use them: their time apart
            maps_seconds = prepared.maps_seconds if METHODS[method].coil_maps else None
            volume = VolumeRef(name=name, method=method, modality=config.modality,
                               image=out.image, affine=prepared.meas.affine,
                               description=series_description(method, prior, setting),
                               source=prepared.source, header=prepared.header, std=out.std)
            files = export(volume, config.outputs, config.out_dir, config.store_root,
                           config.deidentify)
            sent, error = _send(name, method, files, config)
            records.append(ResultRecord(**record, method=method, setting=setting,
                                        seconds=out.seconds, maps_seconds=maps_seconds,
                                        nfe=out.nfe, samples=out.samples,
                                        prior=prior,
                                        output=files[0] if files else None, sent=sent,
                                        error=error, state="failed" if error else "done",
                                        **qa))
            psnr = "" if records[-1].psnr is None else f", PSNR {records[-1].psnr:.2f} dB"
            console.status(f"{name}: {method} {records[-1].state} in "
                           f"{records[-1].seconds:.1f} s{psnr}", done=True)
        except Exception as exc:
            get_run_logger().error("%s on %s failed: %s", method, name, exc)
            console.status(f"{name}: {method} failed", done=True)
            records.append(ResultRecord(**record, method=method, setting=setting,
                                        state="failed", error=str(exc)))
    scan_report(name, config.modality, records, images, config.store_root, stds)
    return records


@task(cache_policy=NO_CACHE, task_run_name=scan_run_name("scan"))
def reconstruct_scan(path: str, config: ReconConfig, label: str) -> list[ResultRecord]:
    """One scan as one task, for scale-out: its own tasks run inside it on the worker."""
    try:
        from distributed import get_worker

        worker = get_worker().name
    except (ImportError, ValueError):  # not on a Dask worker
        worker = None
    return [r.model_copy(update={"worker": str(worker)}) if worker is not None else r
            for r in process_scan(path, config, label)]


def dask_runner(spec: DaskSpec) -> DaskTaskRunner:
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


def _scale_out(paths: list[str], config: ReconConfig, names: list[str]
               ) -> list[list[ResultRecord]]:
    """Every scan as a task on the Dask cluster, each holding one GPU resource."""
    import dask

    with dask_runner(config.dask) as runner, dask.annotate(resources={"GPU": 1}):
        futures = [runner.submit(reconstruct_scan, {"path": str(p), "config": config,
                                                    "label": n})
                   for p, n in zip(paths, names, strict=True)]
        return [f.result() for f in futures]


def check_priors(config: ReconConfig) -> None:
    """Every prior the config's methods need exists (a shipped name or a checkpoint folder):
    a PriorLoadError naming it before any scan is touched, not per scan after the work."""
    from diffrecon.recon.diffusion.registry import resolve_prior_path

    for method in config.methods:
        if METHODS[method].needs_prior:
            for name in config.diffusion.prior_names(method):
                resolve_prior_path(name)


def results_key(names: list[str]) -> str:
    """The results table's artifact key, one per batch (``results-<scan>`` for one scan,
    else ``results-<n>-scans-<hash of the names>``), so each batch's table stays visible."""
    import re

    tag = names[0] if len(names) == 1 else f"{len(names)}-scans-{short_hash('/'.join(names))}"
    return re.sub(r"[^a-z0-9-]+", "-", f"results-{tag}".lower()).strip("-")[:100]


@flow(name="reconstruct-scans")
def reconstruct_scans(paths: list[str], config: ReconConfig, names: list[str] | None = None,
                      fail_run: bool = False, results_table: bool = True
                      ) -> list[ResultRecord] | State:
    """Reconstruct every scan with every method of ``config``; write results.json.

    Each scan is named by a label unique in the batch (``names``, else
    :func:`~diffrecon.io.records.scan_labels`: the file stem, with a short hash of the path
    when two files share a stem), so no two scans write to one path. A bad scan fails its
    own tasks with the reader's message and the others complete. With ``config.dask`` the
    scans run in parallel on a Dask cluster. With ``fail_run`` a batch with a failed or
    invalid scan ends as a Failed flow run (its message the reasons; the records are the
    state's data: call with ``return_state=True``), so the UI shows it red. Without
    ``results_table`` the batch makes no results-table artifact (the inbox's one-scan runs:
    each scan's report artifact holds the same table, the night's run its summary).
    """
    apply_permissions(config.permissions)
    check_priors(config)
    records: list[ResultRecord] = []
    out = Path(config.out_dir)
    names = list(names) if names is not None else scan_labels(paths, config.name_by)
    if len(set(names)) != len(names) or len(names) != len(paths):
        raise ValueError(f"scan names must be unique, one per scan: {names}")
    if config.dask is not None:
        per_scan = _scale_out(paths, config, names)
    else:
        per_scan = [process_scan(str(path), config, name)
                    for path, name in zip(paths, names, strict=True)]
    for scan_records in per_scan:
        if scan_records:  # the QA file of each scan, beside its images
            write_results(scan_records, out / f"{scan_records[0].scan}_qa.json")
        records.extend(scan_records)
    write_results(records, out / "results.json")
    if results_table:
        create_table_artifact(
            table=table_rows(records),
            key=results_key(names),
            description=f"{len(paths)} scan(s), methods {', '.join(config.methods)}",
        )
    bad = [r for r in records if r.state != "done"]
    if fail_run and bad:
        reasons = sorted({f"{r.scan} {r.method}: {r.state} ({r.error})" for r in bad})
        return Failed(message=f"{len(bad)} of {len(records)} reconstructions not done: "
                              + "; ".join(reasons)[:1500], data=records)
    return records
