from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from diffrecon.results import read_results
from tests.conftest import make_acquisition


@pytest.fixture
def batch(tmp_path):
    good1 = write_fastmri(make_acquisition(n_slices=2, n_coils=6, ny=64, nx=64, seed=1),
                          tmp_path / "in" / "good1.h5")
    good2 = write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=2),
                          tmp_path / "in" / "good2.h5")
    data = good1.read_bytes()
    bad = tmp_path / "in" / "corrupt.h5"
    bad.write_bytes(data[: len(data) // 3])
    return [good1, bad, good2]


def test_batch_with_one_corrupt_file_completes_the_others(prefect_harness, batch, tmp_path):
    from diffrecon.flows.reconstruct import reconstruct_scans

    out = tmp_path / "out"
    config = ReconConfig(methods=["zero-filled", "cg-sense"], mask=MaskSpec(accel=2),
                         out_dir=str(out))
    records = reconstruct_scans([str(p) for p in batch], config)
    by = {(r.scan, r.method): r for r in records}
    assert len(records) == 6
    for scan in ("good1", "good2"):
        zf, cg = by[(scan, "zero-filled")], by[(scan, "cg-sense")]
        assert zf.state == cg.state == "done"
        assert cg.psnr > zf.psnr  # SENSE undoes the aliasing that zero filling leaves
        # ... and with it the folded copies that zero filling shows as bright structure
        # (measured: 184.5 / 171.0 pixels per slice, CG-SENSE 0)
        assert zf.invented_px > 100 and 0 <= cg.invented_px < zf.invented_px / 10
        assert cg.dc_residual is not None and cg.dc_residual < 0.1
        assert (out / f"{scan}_cg-sense.nii.gz").exists()
        assert cg.setting == "R=2 equispaced"
    for method in ("zero-filled", "cg-sense"):
        r = by[("corrupt", method)]
        assert r.state == "invalid"  # bad input: not worth a retry
        assert r.error.startswith("corrupt.h5: truncated or corrupt HDF5 file")
    saved = read_results(out / "results.json")
    assert saved == records
    fields = json.loads((out / "results.json").read_text())[0].keys()
    assert {"scan", "method", "psnr", "ssim", "nmse", "dc_residual", "invented_px", "seconds",
            "state", "error"} <= set(fields)


def test_cli_run_writes_results_and_prints_table(prefect_harness, batch, tmp_path, capsys):
    from diffrecon.cli import main

    out = tmp_path / "cli"
    rc = main(["run", str(batch[0]), "--method", "zero-filled", "--accel", "4", "--mask",
               "random", "--seed", "7", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "good1" in text and "zero-filled" in text and "R=4 random" in text
    (rec,) = read_results(out / "results.json")
    assert rec.state == "done" and rec.nmse is not None and rec.dc_residual is None
    # the same seed gives the same mask, hence the same numbers
    rc = main(["run", str(batch[0]), "--method", "zero-filled", "--accel", "4", "--mask",
               "random", "--seed", "7", "--out", str(out / "again")])
    (again,) = read_results(out / "again" / "results.json")
    assert again.psnr == pytest.approx(rec.psnr)
    assert np.isfinite(rec.psnr)


def test_cli_exit_code_is_nonzero_when_a_scan_fails(prefect_harness, batch, tmp_path):
    from diffrecon.cli import main

    assert main(["run", str(batch[1]), "--method", "zero-filled", "--out", str(tmp_path)]) == 1


def test_cli_rejects_unknown_method(capsys):
    from diffrecon.cli import main

    with pytest.raises(SystemExit):
        main(["run", "x.h5", "--method", "magic", "--out", "o"])
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_dds_in_the_flow_records_prior_nfe_and_progress(prefect_harness, batch, tmp_path):
    import nibabel as nib
    import torch

    from diffrecon.config import PriorRef
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.recon.diffusion.checkpoint import save_prior
    from diffrecon.recon.diffusion.networks import build_network
    from tests.recon.diffusion.test_checkpoint import tiny_config

    cfg = tiny_config(name="tiny-64").model_copy(update={"image_size": 64})
    torch.manual_seed(0)
    prior_dir = save_prior(tmp_path / "tiny-64", build_network(cfg.architecture, cfg.network),
                           cfg, "# tiny\n")
    config = ReconConfig(methods=["dds"], mask=MaskSpec(accel=2), out_dir=str(tmp_path / "o"),
                         diffusion=PriorRef(prior=str(prior_dir), nfe=3))
    (rec,) = reconstruct_scans([str(batch[2])], config)
    assert rec.state == "done", rec.error
    assert rec.prior == "tiny-64" and rec.nfe == 3
    assert rec.dc_residual is not None and rec.psnr is not None

    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # artifacts reach the API asynchronously
            arts = client.read_artifacts()
            progress = [a for a in arts if a.type == "progress"
                        and "dds on good2" in (a.description or "") and a.data == 100.0]
            if progress or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert progress

    # a scan of another size than the prior's: the network runs at the scan's own size
    other = ReconConfig(methods=["dds"], out_dir=str(tmp_path / "o2"),
                        diffusion=PriorRef(prior=str(prior_dir), nfe=3))
    big = write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=96, nx=90, seed=3),
                        tmp_path / "in" / "big.h5")
    (rec,) = reconstruct_scans([str(big)], other)
    assert rec.state == "done" and rec.nfe == 3
    assert nib.load(rec.output).shape[:2] == (90, 96)  # NIfTI (x, y): the scan's grid
    # ... or sampled on the prior's 64 x 64 grid of the same field of view, back on the scan's
    on_prior = other.model_copy(update={
        "out_dir": str(tmp_path / "o3"),
        "diffusion": PriorRef(prior=str(prior_dir), nfe=3, grid="prior")})
    (rec2,) = reconstruct_scans([str(big)], on_prior)
    assert rec2.state == "done" and nib.load(rec2.output).shape[:2] == (90, 96)
    assert not np.allclose(nib.load(rec.output).get_fdata(), nib.load(rec2.output).get_fdata())
    # --grid pixel needs the prior's pixel size: this one does not record it
    on_pixel = other.model_copy(update={
        "out_dir": str(tmp_path / "o4"),
        "diffusion": PriorRef(prior=str(prior_dir), nfe=3, grid="pixel")})
    (rec3,) = reconstruct_scans([str(big)], on_pixel)
    assert rec3.state == "failed" and "does not record the pixel size" in rec3.error


def test_ct_volume_through_the_flow_writes_hu(prefect_harness, tmp_path):
    import nibabel as nib

    from diffrecon.config import CTSpec
    from diffrecon.flows.reconstruct import reconstruct_scans
    from tests.io.test_dicom import write_series

    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    body = np.where(yy**2 + xx**2 < 0.6, 40.0, -1000.0)
    body[12:16, 10:20] = 700.0  # bone
    vol = np.repeat(body[:, :, None], 3, axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1])), str(tmp_path / "phantom.nii.gz"))
    write_series(tmp_path / "dicom", n=3)
    config = ReconConfig(modality="ct", methods=["fbp", "admm-tv"], out_dir=str(tmp_path / "o"),
                         ct=CTSpec(views=24))
    recs = reconstruct_scans([str(tmp_path / "phantom.nii.gz"), str(tmp_path / "dicom"),
                              str(tmp_path / "missing.nii.gz")], config)
    by = {(r.scan, r.method): r for r in recs}
    fbp_, tv = by[("phantom", "fbp")], by[("phantom", "admm-tv")]
    assert fbp_.state == tv.state == "done" and fbp_.setting == "24 views"
    assert tv.psnr > fbp_.psnr
    out = nib.load(tv.output)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, np.diag([1.5, 1.5, 3.0, 1]), atol=1e-6)
    hu = out.get_fdata()
    assert abs(np.median(hu[hu < -500]) + 1000) < 100 and hu.max() > 300  # air and bone in HU
    # scored in the CT window (BENCHMARKS.md units clipped to [0, 1], -1000..1000 HU)
    from diffrecon.recon import metrics

    fbp_hu = nib.load(fbp_.output).get_fdata().astype(np.float32)
    unit = lambda h: np.clip((h + 1000) / 2000, 0, 1).transpose(2, 1, 0)  # noqa: E731
    assert fbp_.psnr == pytest.approx(metrics.psnr(unit(fbp_hu), unit(vol), 1.0), abs=0.02)
    assert fbp_hu.min() < -1000  # FBP undershoots below air: the window matters
    assert by[("dicom", "fbp")].state == "done"
    assert by[("missing", "fbp")].state == "invalid"
    assert "missing.nii.gz: file does not exist" in by[("missing", "fbp")].error


def test_methods_must_fit_the_modality():
    with pytest.raises(ValueError, match="method\\(s\\) cg-sense not available for CT"):
        ReconConfig(modality="ct", methods=["cg-sense"])


def test_report_artifact_per_scan_with_an_embedded_preview(prefect_harness, batch, tmp_path):
    import shutil
    import time

    from prefect.client.orchestration import get_client

    from diffrecon.flows.reconstruct import reconstruct_scans

    scan = tmp_path / "Report_Scan.h5"  # a name no other test uses (artifact keys are global)
    shutil.copy(batch[0], scan)
    records = reconstruct_scans([str(scan)], ReconConfig(methods=["zero-filled", "cg-sense"],
                                                         mask=MaskSpec(accel=2),
                                                         out_dir=str(tmp_path / "rep")))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # artifacts reach the API asynchronously
            arts = client.read_artifacts()
            reports = [a for a in arts if a.key == "report-report-scan"]
            if reports or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    (report,) = reports
    assert report.type == "markdown"
    assert "| cg-sense | R=2 equispaced |" in report.data
    # the QA columns, invented structure among them (zero filling's folded copies)
    assert "| PSNR | SSIM | DC residual | invented px | mean std |" in report.data
    zf = next(r for r in records if r.method == "zero-filled")
    assert zf.invented_px > 100
    assert (f"| zero-filled | R=2 equispaced | {zf.psnr:.2f} | {zf.ssim:.3f} | - | "
            f"{zf.invented_px:.0f} | - |") in report.data
    assert "![preview](data:image/png;base64," in report.data
    table = next(a for a in arts if a.key == "results-report-scan")  # one key per batch
    assert table.type == "table"


def test_all_outputs_and_a_qa_file_per_scan(prefect_harness, batch, tmp_path):
    import h5py
    import pydicom

    from diffrecon.flows.reconstruct import reconstruct_scans

    out = tmp_path / "all"
    (rec,) = reconstruct_scans([str(batch[2])], ReconConfig(
        methods=["cg-sense"], mask=MaskSpec(accel=2), out_dir=str(out),
        outputs=["nifti", "dicom", "png", "h5"], deidentify=True))
    assert rec.output.endswith(".nii.gz")
    dcm = sorted((out / "good2_cg-sense_dicom").glob("*.dcm"))
    assert len(dcm) == 1
    ds = pydicom.dcmread(str(dcm[0]))
    assert ds.SeriesDescription == "cg-sense, R=2 equispaced" and ds.Modality == "MR"
    assert ds.PatientName == "ANONYMOUS"
    with h5py.File(out / "good2_cg-sense.h5") as f:
        assert f["reconstruction"].shape == (1, 64, 64) and f.attrs["method"] == "cg-sense"
    assert (out / "good2_cg-sense.png").stat().st_size > 100
    (qa,) = read_results(out / "good2_qa.json")
    assert qa.psnr == rec.psnr


def test_ct_diffusion_methods_in_the_flow(prefect_harness, tmp_path):
    """DDS, DDS + TV-z and perpendicular priors (without and with TV-z) on a CT volume
    through the flow (tiny random priors: the plumbing, counts and names; quality is the
    benchmarks' job)."""
    import nibabel as nib
    import torch

    from diffrecon.config import CTSpec, PriorRef
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.recon.diffusion.checkpoint import save_prior
    from diffrecon.recon.diffusion.networks import build_network
    from tests.recon.diffusion.test_checkpoint import tiny_config

    dirs = {}
    for name, orientation in (("ct-ax-32", "axial"), ("ct-cor-32", "coronal")):
        cfg = tiny_config(name=name, modality="ct").model_copy(
            update={"image_size": 32, "orientation": orientation})
        torch.manual_seed(0)
        dirs[orientation] = save_prior(tmp_path / name, build_network(cfg.architecture,
                                                                     cfg.network), cfg, "# t\n")
    yy, xx = np.meshgrid(np.linspace(-1, 1, 30), np.linspace(-1, 1, 30), indexing="ij")
    body = np.where(yy**2 + xx**2 < 0.6, 40.0, -1000.0)
    vol = np.repeat(body[:, :, None], 6, axis=2).astype(np.float32)  # 6 axial slices
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1])), str(tmp_path / "ph.nii.gz"))
    config = ReconConfig(modality="ct", methods=["dds", "dds-3d-tv", "dds-perpendicular",
                                                 "dds-perpendicular-tv", "dds-tv"],
                         out_dir=str(tmp_path / "o"), ct=CTSpec(views=8, size=32),
                         diffusion=PriorRef(prior=str(dirs["axial"]),
                                            aux_prior=str(dirs["coronal"]), nfe=3))
    recs = {r.method: r for r in reconstruct_scans([str(tmp_path / "ph.nii.gz")], config)}
    assert all(r.state == "done" for r in recs.values()), [r.error for r in recs.values()]
    assert recs["dds"].nfe == 3 and recs["dds-3d-tv"].nfe == 3 and recs["dds-tv"].nfe == 3
    # dds-tv: the in-plane TV (the CT ADMM-TV weight, 1.0) changes the DDS result
    a, b = (nib.load(recs[m].output).get_fdata() for m in ("dds", "dds-tv"))
    assert np.abs(a - b).max() > 1.0  # HU
    # A A B: two axial steps on 6 slices, one coronal step on 32 coronal slices, per slice
    for m in ("dds-perpendicular", "dds-perpendicular-tv"):
        assert recs[m].nfe == (2 * 6 + 32) // 6
        assert recs[m].prior == "ct-ax-32 + ct-cor-32"
    # the TV along z changes the perpendicular result (same priors, same seed)
    a, b = (nib.load(recs[m].output).get_fdata() for m in ("dds-perpendicular",
                                                           "dds-perpendicular-tv"))
    assert np.abs(a - b).max() > 1.0  # HU
    out = nib.load(recs["dds-perpendicular"].output)
    assert out.shape == (32, 32, 6)  # padded to the prior's size (air), geometry kept:
    np.testing.assert_allclose(nib.affines.apply_affine(out.affine, [1, 1, 0]),
                               nib.affines.apply_affine(np.diag([1.5, 1.5, 3.0, 1]), [0, 0, 0]),
                               atol=1e-6)  # the input's first voxel sits one voxel in
    # slice-wise DDS runs the 32 x 32 prior at the scan's own 30 x 30
    other = config.model_copy(update={"methods": ["dds"], "ct": CTSpec(views=8),
                                      "out_dir": str(tmp_path / "o2")})
    (rec,) = reconstruct_scans([str(tmp_path / "ph.nii.gz")], other)
    assert rec.state == "done" and nib.load(rec.output).shape == (30, 30, 6)


def test_hashed_scan_names_keep_file_names_out_of_the_server(prefect_harness, tmp_path):
    import time

    from prefect.client.orchestration import get_client

    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.io.records import scan_label

    good = write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64),
                         tmp_path / "Doe_Jane_19700101.h5")
    bad = tmp_path / "Roe_Rich_19800202.h5"
    bad.write_bytes(good.read_bytes()[:400])
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2), name_by="hash",
                         out_dir=str(tmp_path / "o"))
    g, b = reconstruct_scans.with_options(flow_run_name="hashed-batch")(
        [str(good), str(bad)], config)
    label = scan_label(good, "hash")
    assert g.scan == label and label.startswith("scan-") and len(label) == 15
    assert g.state == "done" and g.output.endswith(f"{label}_zero-filled.nii.gz")
    assert b.state == "invalid" and b.error.startswith(f"{scan_label(bad, 'hash')}: ")
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # the error log reaches the API asynchronously
            logs = client.read_logs()
            if any(scan_label(bad, "hash") in entry.message for entry in logs) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        names = [t.name for t in client.read_task_runs()] + \
            [r.name for r in client.read_flow_runs()]
    assert any(scan_label(bad, "hash") in entry.message for entry in logs)
    assert f"prepare-{label}" in names
    text = " ".join(names + [entry.message for entry in logs])
    assert "Doe_Jane" not in text and "Roe_Rich" not in text


def test_cli_volume_options_reach_the_sampler_settings():
    """--real-object, --pattern and the TV-z settings end up in the run's PriorRef, which is
    what run_diffusion hands to DDS3DConfig (and what the cache key includes)."""
    from diffrecon.cli import _prior_ref, build_parser

    args = build_parser().parse_args(
        ["run", "vol.nii.gz", "--out", "o", "--method", "dds-perpendicular", "--real-object",
         "--prior-aux", "brain-t1-coronal-128", "--pattern", "AB", "--z-tv-rho", "0.1",
         "--compile"])
    ref = _prior_ref(args)
    assert (ref.real_object, ref.pattern, ref.tv_rho, ref.aux_prior, ref.compile) == \
        (True, "AB", 0.1, "brain-t1-coronal-128", True)
    plain = _prior_ref(build_parser().parse_args(["run", "vol.nii.gz", "--out", "o"]))
    assert plain.real_object is False and plain.compile is False


def test_volume_methods_get_every_sampler_setting(monkeypatch):
    """run_diffusion hands the PriorRef's settings, --gamma included, to the volume
    sampler's DDS3DConfig (gamma was once dropped there: volume DC was always noiseless),
    and --compile to the loading of both priors."""
    import torch

    from diffrecon.cli import _prior_ref, build_parser
    from diffrecon.recon.diffusion import registry, run
    from diffrecon.tasks import common

    seen, loads = {}, []
    real_resolve = registry.resolve_prior

    def recording_resolve(name, device="cpu", compile=False):
        loads.append((name, compile))
        return real_resolve(name, device=device)

    monkeypatch.setattr(registry, "resolve_prior", recording_resolve)
    monkeypatch.setattr(common, "_PRIORS", {})

    def fake_sampler(priors, op, y, cfg, progress):
        seen["cfg"], seen["priors"] = cfg, [p.name for p in priors]
        return torch.zeros(y.shape, dtype=torch.complex64)

    monkeypatch.setattr(run, "dds_volume_sample", fake_sampler)
    monkeypatch.setattr(common, "_progress_artifact", lambda what: None)
    args = build_parser().parse_args(
        ["run", "vol.nii.gz", "--out", "o", "--method", "dds-3d-tv", "--gamma", "3",
         "--nfe", "7", "--eta", "0.5", "--cg-iters", "4", "--z-tv-lam", "0.02",
         "--z-tv-rho", "0.1", "--real-object", "--compile",
         "--prior-aux", "brain-t1-coronal-128"])
    y = torch.zeros(4, 128, 128, dtype=torch.complex64)
    for method, rho, priors in (("dds-3d-tv", 0.1, 1), ("dds-perpendicular", 0.0, 2),
                                ("dds-perpendicular-tv", 0.1, 2)):
        common.run_diffusion(method, lambda a, b: None, y, _prior_ref(args), torch.device("cpu"),
                          "vol", 2, "mri", (128, 128))
        cfg = seen["cfg"]
        assert (cfg.gamma, cfg.nfe, cfg.eta, cfg.cg_iters, cfg.lam, cfg.real,
                cfg.slice_batch) == (3.0, 7, 0.5, 4, 0.02, True, 2)
        assert cfg.rho == rho
        assert seen["priors"] == ["brain-t1-axial-128", "brain-t1-coronal-128"][:priors]
    assert loads == [("brain-t1-axial-128", True), ("brain-t1-coronal-128", True)]
    # the second prior is part of both perpendicular methods' cache key
    for method in ("dds-perpendicular", "dds-perpendicular-tv"):
        assert "aux_digest" in common.diffusion_settings(_prior_ref(args), method)
    assert "aux_digest" not in common.diffusion_settings(_prior_ref(args), "dds-3d-tv")


def test_dds_tv_settings_reach_its_sampler_and_its_cache_key():
    """--plane-tv-lam / --tv-iters reach DDSTVConfig; without --plane-tv-lam dds-tv takes
    the modality's ADMM-TV weight, which is then part of its cache key."""
    from diffrecon.cli import _prior_ref, build_parser
    from diffrecon.recon.diffusion.settings import DDSTVConfig
    from diffrecon.tasks.mri import method_settings

    args = build_parser().parse_args(["run", "s.h5", "--out", "o", "--method", "dds-tv",
                                      "--plane-tv-lam", "0.5", "--tv-iters", "3",
                                      "--nfe", "7"])
    cfg = _prior_ref(args).sampler_config("dds-tv", tv_lam=9.0)
    assert type(cfg) is DDSTVConfig and (cfg.tv_lam, cfg.tv_iters, cfg.nfe) == (0.5, 3, 7)
    plain = _prior_ref(build_parser().parse_args(["run", "s.h5", "--out", "o"]))
    assert plain.sampler_config("dds-tv", tv_lam=2e-4).tv_lam == 2e-4
    a = method_settings({"method": "dds-tv", "config": ReconConfig(methods=["dds-tv"])})
    b = method_settings({"method": "dds-tv", "config": ReconConfig(methods=["dds-tv"],
                                                                   tv_lam=3e-4)})
    assert a["tv_lam"] == 1e-4 and b["tv_lam"] == 3e-4

def test_two_files_with_one_stem_never_share_an_output(prefect_harness, tmp_path):
    """a/scan.h5 and b/scan.h5 (different patients) in one batch: each gets its own label
    (stem + hash of its path), outputs and QA file; nothing is overwritten."""
    import nibabel as nib

    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.io.records import scan_labels, short_hash

    a = write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=32, nx=32, seed=1),
                      tmp_path / "a" / "scan.h5")
    b = write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=32, nx=32, seed=2),
                      tmp_path / "b" / "scan.h5")
    c = write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=32, nx=32, seed=3),
                      tmp_path / "b" / "other.h5")
    labels = scan_labels([a, b, c])
    assert labels == [f"scan-{short_hash(str(a.resolve()))}",
                      f"scan-{short_hash(str(b.resolve()))}", "other"]
    with pytest.raises(ValueError, match="more than once"):
        scan_labels([a, tmp_path / "a" / ".." / "a" / "scan.h5"])
    out = tmp_path / "o"
    records = reconstruct_scans([str(a), str(b), str(c)],
                                ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2),
                                            out_dir=str(out)))
    assert [r.scan for r in records] == labels
    outputs = [r.output for r in records]
    assert len(set(outputs)) == 3 and all(Path(o).exists() for o in outputs)
    # each image is its own scan's (different seeds give different images)
    imgs = [np.asarray(nib.load(o).dataobj) for o in outputs]
    assert not np.allclose(imgs[0], imgs[1])
    assert {p.name for p in out.glob("*_qa.json")} == {f"{n}_qa.json" for n in labels}


def test_every_flag_has_help_and_run_and_inbox_have_examples():
    import argparse

    from diffrecon.cli import build_parser

    missing, examples = [], {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif not a.help and not isinstance(a, argparse._HelpAction):
                missing.append(" ".join([*path, *(a.option_strings or [a.dest])]))
        examples[" ".join(path)] = parser.epilog or ""

    walk(build_parser(), [])
    assert missing == []
    assert "diffrecon run " in examples["run"] and "diffrecon inbox " in examples["inbox"]


def test_2d_undersampled_scans_calibrate_from_their_block_or_still_give_zero_filled(
        prefect_harness, tmp_path):
    """An acquired 2D random mask with a 16 x 16 centre: the setting says the sampled
    fraction, CG-SENSE calibrates from the block (and from --calib); without a sampled
    centre the maps fail with the reason and zero-filled still runs."""
    from diffrecon.cli import _calib
    from diffrecon.flows.reconstruct import reconstruct_scans

    acq = make_acquisition(n_slices=1, n_coils=6, ny=72, nx=60, seed=4)
    rng = np.random.default_rng(1)
    mask = rng.random((72, 60)) < 0.3
    mask[36 - 8: 36 + 8, 30 - 8: 30 + 8] = True
    good = acq.__class__(**{**acq.__dict__, "kspace": acq.kspace * mask, "mask": mask})
    write_fastmri(good, tmp_path / "in" / "poisson.h5")
    hole = mask.copy()
    hole[30:42, 25:35] = False
    bad = acq.__class__(**{**acq.__dict__, "kspace": acq.kspace * hole, "mask": hole})
    write_fastmri(bad, tmp_path / "in" / "nocentre.h5")
    config = ReconConfig(methods=["zero-filled", "cg-sense"], out_dir=str(tmp_path / "o"))
    recs = reconstruct_scans([str(tmp_path / "in" / n) for n in ("poisson.h5",
                                                                 "nocentre.h5")], config)
    by = {(r.scan, r.method): r for r in recs}
    fraction = f"{100 * mask.mean():.1f}"
    assert by["poisson", "cg-sense"].setting == f"as acquired, {fraction} % of k-space, 2D"
    assert by["poisson", "cg-sense"].state == "done"
    assert by["poisson", "cg-sense"].psnr > by["poisson", "zero-filled"].psnr + 3
    assert by["nocentre", "zero-filled"].state == "done"
    assert by["nocentre", "cg-sense"].state == "failed"
    assert by["nocentre", "cg-sense"].error.startswith("coil maps: ")
    assert _calib("12") == (12, 12) and _calib("12x10") == (12, 10)
    small = config.model_copy(update={"calib": (12, 10), "out_dir": str(tmp_path / "o2")})
    (zf, cg) = reconstruct_scans([str(tmp_path / "in" / "poisson.h5")], small)
    assert cg.state == "done" and cg.psnr > zf.psnr + 3
    big = config.model_copy(update={"calib": (20, 20), "out_dir": str(tmp_path / "o3")})
    (zf, cg) = reconstruct_scans([str(tmp_path / "in" / "poisson.h5")], big)
    assert zf.state == "done" and "larger than the fully sampled" in cg.error


def test_ct_size_resamples_a_larger_field_of_view(prefect_harness, tmp_path):
    """--ct-size 32 on a 64 x 64 slice: the whole field of view at twice the pixel size (a
    marker near the edge survives, the centre stays where it was in mm), not a centre crop."""
    import nibabel as nib

    from diffrecon.config import CTSpec
    from diffrecon.flows.reconstruct import reconstruct_scans

    yy, xx = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    body = np.where(yy**2 + xx**2 < 0.9, 40.0, -1000.0)
    body[4:10, 30:34] = 1000.0  # bone near the edge of the field of view
    vol = np.repeat(body[:, :, None], 2, axis=2).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-63.0, -63.0, 0.0]
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "big.nii.gz"))
    config = ReconConfig(modality="ct", methods=["fbp"], out_dir=str(tmp_path / "o"),
                         ct=CTSpec(views=64, size=32))
    (rec,) = reconstruct_scans([str(tmp_path / "big.nii.gz")], config)
    out = nib.load(rec.output)
    assert rec.state == "done" and out.shape == (32, 32, 2)
    np.testing.assert_allclose(np.abs(np.diag(out.affine))[:2], [4.0, 4.0], atol=1e-6)
    centre_in = nib.affines.apply_affine(aff, [31.5, 31.5, 0])
    centre_out = nib.affines.apply_affine(out.affine, [15.5, 15.5, 0])
    np.testing.assert_allclose(centre_in, centre_out, atol=1e-6)
    hu = out.get_fdata()
    assert hu[:, :, 0].max() > 400  # the edge marker is still in the image
    assert rec.psnr > 20


def test_one_mask_per_slice_seeded_as_the_benchmarks_draw_them(prefect_harness, tmp_path):
    """BENCHMARKS.md draws each slice's mask from crc32(scan/slice/R/kind): the flow does the
    same (random masks differ between slices); an explicit --seed fixes every slice's."""
    from diffrecon.common.seeds import benchmark_seed
    from diffrecon.recon.masks import make_mask
    from diffrecon.tasks import mri
    from diffrecon.tasks.store import ArtifactStore

    path = write_fastmri(make_acquisition(n_slices=3, n_coils=4, ny=48, nx=40),
                         tmp_path / "vol.h5")
    from prefect import flow

    store = str(tmp_path / "store")

    @flow
    def load():  # load_scan logs to the run logger
        return mri.load_scan(str(path), store)

    scan = load()
    meas = mri.prepare_measurement(scan, MaskSpec(kind="random", accel=4), store, "cpu")
    masks = ArtifactStore(store).get(meas.mask)
    assert masks.shape == (3, 1, 48, 40)
    for z in range(3):
        expected = make_mask("random", (48, 40), 4, benchmark_seed("vol", z, "4/random"))
        np.testing.assert_array_equal(masks[z, 0], expected.numpy())
    assert not np.array_equal(masks[0], masks[1])
    fixed = mri.prepare_measurement(scan, MaskSpec(kind="random", accel=4, seed=7), store,
                                    "cpu")
    m = ArtifactStore(store).get(fixed.mask)
    assert np.array_equal(m[0], m[1]) and np.array_equal(m[1], m[2])


def test_samples_give_a_std_map_its_qa_and_outputs(prefect_harness, batch, tmp_path):
    """--samples 3 on MRI (dds) and CT (dds, dds-3d-tv): the record says 3 samples and
    the std's QA, the std NIfTI sits beside the image (CT in HU: the CT-unit std times the
    2000 HU window), the report shows the std tile, and one sample stays today's run."""
    import time

    import nibabel as nib
    import torch
    from prefect.client.orchestration import get_client

    from diffrecon.config import CTSpec, PriorRef
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.recon.diffusion.checkpoint import save_prior
    from diffrecon.recon.diffusion.networks import build_network
    from tests.recon.diffusion.test_checkpoint import tiny_config

    dirs = {}
    for name, modality in (("mr-samples-64", "mri"), ("ct-samples-32", "ct")):
        cfg = tiny_config(name=name, modality=modality).model_copy(
            update={"image_size": 64 if modality == "mri" else 32})
        torch.manual_seed(0)
        dirs[modality] = save_prior(tmp_path / name, build_network(cfg.architecture,
                                                                   cfg.network), cfg, "# t\n")
    out = tmp_path / "o"
    scan = tmp_path / "Samples_Scan.h5"  # artifact keys are global: a name of its own
    scan.write_bytes(batch[2].read_bytes())
    config = ReconConfig(methods=["dds"], mask=MaskSpec(accel=4), out_dir=str(out),
                         outputs=["nifti", "png"], diffusion=PriorRef(
                             prior=str(dirs["mri"]), nfe=3, samples=3, std_threshold=0.01))
    (rec,) = reconstruct_scans([str(scan)], config)
    assert rec.state == "done", rec.error
    assert rec.samples == 3 and rec.nfe == 3
    assert 0 < rec.std_mean < rec.std_p99 and 0 < rec.std_above <= 1
    std = nib.load(out / "Samples_Scan_dds_std.nii.gz").get_fdata()
    image = nib.load(rec.output).get_fdata()
    assert std.shape == image.shape and std.max() > 0
    (single,) = reconstruct_scans([str(scan)], config.model_copy(update={
        "out_dir": str(tmp_path / "one"), "diffusion": PriorRef(prior=str(dirs["mri"]),
                                                               nfe=3)}))
    assert single.samples == 1 and single.std_mean is None
    assert not (tmp_path / "one" / "Samples_Scan_dds_std.nii.gz").exists()
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # artifacts reach the API asynchronously
            reports = [a for a in client.read_artifacts() if a.key == "report-samples-scan"]
            if reports or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert any("dds | dds std" in r.data for r in reports)

    yy, xx = np.meshgrid(np.linspace(-1, 1, 30), np.linspace(-1, 1, 30), indexing="ij")
    body = np.where(yy**2 + xx**2 < 0.6, 40.0, -1000.0)
    vol = np.repeat(body[:, :, None], 4, axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1])), str(tmp_path / "ph.nii.gz"))
    ct = ReconConfig(modality="ct", methods=["dds", "dds-3d-tv"], out_dir=str(tmp_path / "ct"),
                     ct=CTSpec(views=8, size=32),
                     diffusion=PriorRef(prior=str(dirs["ct"]), nfe=3, samples=2))
    recs = {r.method: r for r in reconstruct_scans([str(tmp_path / "ph.nii.gz")], ct)}
    assert all(r.state == "done" and r.samples == 2 and r.std_mean > 0
               for r in recs.values()), [r.error for r in recs.values()]
    std_hu = nib.load(tmp_path / "ct" / "ph_dds_std.nii.gz").get_fdata()
    # the std in CT units is in the store (float32 (4, 32, 32), non-negative): x 2000 in HU
    stored = [np.load(f) for f in Path(ct.store_root).rglob("*.npy")]
    assert any(np.allclose(np.sort(std_hu.ravel()), np.sort(2000 * u.ravel()), atol=1e-2)
               for u in stored if u.shape == (4, 32, 32) and u.min() >= 0 and u.max() > 0)


def test_samples_and_std_scale_reach_the_volume_sampler(monkeypatch):
    """--samples 3 draws volumes with seeds S, S+1, S+2; the std over them times
    --std-scale is what the task gets (a fake sampler returns its seed everywhere: the
    std of 4, 5, 6 is 1, so the map is exactly the scale)."""
    import torch

    from diffrecon.cli import _prior_ref, build_parser
    from diffrecon.recon.diffusion import run
    from diffrecon.tasks import common

    seeds = []

    def fake_sampler(priors, op, y, cfg, progress):
        seeds.append(cfg.seed)
        return torch.full(y.shape, float(cfg.seed), dtype=torch.complex64)

    monkeypatch.setattr(run, "dds_volume_sample", fake_sampler)
    monkeypatch.setattr(common, "_progress_artifact", lambda what: None)
    args = build_parser().parse_args(
        ["run", "vol.nii.gz", "--out", "o", "--method", "dds-3d-tv", "--samples", "3",
         "--std-scale", "2.5", "--sampler-seed", "4"])
    y = torch.zeros(2, 128, 128, dtype=torch.complex64)
    x, std, _, _ = common.run_diffusion("dds-3d-tv", lambda a, b: None, y, _prior_ref(args),
                                        torch.device("cpu"), "vol", None, "mri", (128, 128))
    assert seeds == [4, 5, 6]
    assert torch.allclose(x, torch.full_like(x, 5.0))
    assert torch.allclose(std, torch.full((2, 128, 128), 2.5))


def _scaled_pattern_sampler(monkeypatch, seed: int) -> tuple:
    """The volume sampler replaced: sample k (seed S + k) is S + k times one random complex
    (2, 128, 128) pattern, so K samples' mean and spread are known exactly; no progress
    artifact. Returns the pattern (numpy, complex64 tensor)."""
    import torch

    from diffrecon.recon.diffusion import run
    from diffrecon.tasks import common

    rng = np.random.default_rng(seed)
    p = rng.standard_normal((2, 128, 128)) + 1j * rng.standard_normal((2, 128, 128))
    pattern = torch.from_numpy(p).to(torch.complex64)
    monkeypatch.setattr(run, "dds_volume_sample",
                        lambda priors, op, y, cfg, progress: cfg.seed * pattern)
    monkeypatch.setattr(common, "_progress_artifact", lambda what: None)
    return p, pattern


def test_the_aliasing_term_joins_the_std_map_at_the_scans_sampled_fraction(monkeypatch):
    """--std-aliasing 0.25:0:2,0.75:8:4 at a sampled fraction of 0.5 (every other line):
    the map is --std-scale x 3 x sqrt(std^2 + 4 G * |A^H A m - m|^2), m the mean, G the
    Gaussian local mean (numpy's FFT and scipy's filter as the references); MRI only: a CT
    run keeps the spread alone."""
    import torch
    from scipy.ndimage import gaussian_filter

    from diffrecon.cli import _prior_ref, build_parser
    from diffrecon.recon.operators import Sense
    from diffrecon.tasks import common
    from tests.recon.diffusion.test_samples import _np_normal

    p, pattern = _scaled_pattern_sampler(monkeypatch, 0)
    args = build_parser().parse_args(
        ["run", "vol.h5", "--out", "o", "--method", "dds-3d-tv", "--samples", "3",
         "--std-scale", "2.5", "--sampler-seed", "4", "--std-aliasing", "0.25:0:2,0.75:8:4"])
    ref = _prior_ref(args)
    assert ref.std_aliasing == [(0.25, 0.0, 2.0, None), (0.75, 8.0, 4.0, None)]
    both = build_parser().parse_args(["run", "v.h5", "--out", "o", "--std-aliasing",
                                      "0.5:8:equispaced,0.5:1:1.5:random"])
    assert _prior_ref(both).std_aliasing == [(0.5, 8.0, 1.0, "equispaced"),
                                             (0.5, 1.0, 1.5, "random")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "v.h5", "--out", "o", "--std-aliasing", "0.5"])
    half = torch.zeros(128, 128)
    half[::2] = 1
    ones = torch.ones(2, 1, 128, 128, dtype=torch.complex64)
    y = torch.zeros(2, 1, 128, 128, dtype=torch.complex64)
    x, std, _, _ = common.run_diffusion("dds-3d-tv", lambda a, b: Sense(ones[a:b], half), y,
                                        ref, torch.device("cpu"), "vol", 1, "mri", (128, 128))
    from diffrecon.recon.uncertainty import ALIAS_SIGMA

    alias2 = np.abs(_np_normal(5 * p, half.numpy()) - 5 * p) ** 2
    alias2 = np.stack([gaussian_filter(a, ALIAS_SIGMA, mode="nearest") for a in alias2])
    expect = 2.5 * 3 * np.sqrt(np.abs(p) ** 2 + 4 * alias2)
    assert np.allclose(std.numpy(), expect, rtol=1e-4, atol=1e-4)
    ct = ref.model_copy(update={"prior": "ct-axial-128"})
    _, std_ct, _, _ = common.run_diffusion("dds-3d-tv", lambda a, b: None, y, ct,
                                           torch.device("cpu"), "vol", None, "ct", (128, 128))
    assert np.allclose(std_ct.numpy(), 2.5 * np.abs(p), rtol=1e-4, atol=1e-4)


def test_the_error_model_makes_the_std_map_for_its_prior_only(monkeypatch, tmp_path, capsys):
    """--std-model FILE: the std map is recon.uncertainty.error_model_map of the mean and
    the spread (times --std-scale) with the points for the run's method, the model's
    content in the cache key; 'prior' reads the shipped brain prior's; a model without
    points for the method warns; refused: a bad file at
    parse time naming it, a model fitted for another prior and a CT run (before sampling),
    std_model with std_aliasing or without samples > 1, 'prior' for a prior without one."""
    import json

    import torch

    from diffrecon.cli import _prior_ref, build_parser
    from diffrecon.config import PriorRef
    from diffrecon.recon.diffusion import run
    from diffrecon.recon.diffusion.checkpoint import folder_digest
    from diffrecon.recon.diffusion.registry import resolve_prior_path
    from diffrecon.recon.diffusion.run import sample_statistics
    from diffrecon.recon.operators import Sense
    from diffrecon.recon.uncertainty import error_model_map
    from diffrecon.tasks import common
    from tests.recon.diffusion.test_samples import _model, _point

    digest = folder_digest(resolve_prior_path("brain-t1-axial-128"))
    model = _model([_point(0.5, [0.3, 0.5, -0.2, 0.4, -0.6], -1.5, 2.0)],
                   fitted={"prior_digest": digest})
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    p, pattern = _scaled_pattern_sampler(monkeypatch, 1)
    args = build_parser().parse_args(
        ["run", "vol.h5", "--out", "o", "--method", "dds-3d-tv", "--samples", "3",
         "--std-scale", "1.5", "--sampler-seed", "4", "--std-model", str(path)])
    ref = _prior_ref(args)
    assert ref.std_model["points"][0]["intercept"] == -1.5
    half = torch.zeros(128, 128)
    half[::2] = 1
    ones = torch.ones(2, 1, 128, 128, dtype=torch.complex64)
    y = torch.zeros(2, 1, 128, 128, dtype=torch.complex64)

    def recon(r, modality="mri"):
        return common.run_diffusion("dds-3d-tv", lambda a, b: Sense(ones[a:b], half), y, r,
                                    torch.device("cpu"), "vol", 1, modality, (128, 128))

    x, std, _, _ = recon(ref)
    mean, spread = sample_statistics(torch.stack([k * pattern for k in (4, 5, 6)], 1))
    want = 1.5 * error_model_map(Sense(ones, half), mean, spread, ref.std_model)
    assert torch.allclose(x, mean, atol=1e-5)
    assert torch.allclose(std, want, rtol=1e-4, atol=1e-6)

    sampler = run.dds_volume_sample
    monkeypatch.setattr(run, "dds_volume_sample",  # the refusals come before any sampling
                        lambda *a: pytest.fail("sampled before refusing"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**model, "fitted": {"prior_digest": "0" * 64}}))
    with pytest.raises(ValueError, match="std_model: fitted.prior_digest 000000000000... is "
                                         "not the digest of prior brain-t1-axial-128"):
        recon(ref.model_copy(update={"std_model": PriorRef(samples=2,
                                                           std_model=str(other)).std_model}))
    with pytest.raises(ValueError, match="std_model: the error model is for MRI"):
        recon(ref.model_copy(update={"prior": "ct-axial-128"}), "ct")
    monkeypatch.setattr(run, "dds_volume_sample", sampler)
    # points for another method only: used, with a warning naming both
    dds_fit = {**model, "points": [p | {"method": "dds"} for p in model["points"]]}
    with pytest.warns(UserWarning, match="std_model: fitted for dds, used for dds-3d-tv"):
        got = recon(ref.model_copy(update={"std_model": PriorRef(
            samples=2, std_model=dds_fit).std_model}))[1]
    assert torch.allclose(got, want)
    # fitted to samples of other settings (the shipped model records nfe, branch_steps,
    # eta): used, with a warning naming what differs
    tuned = {**model, "fitted": {"prior_digest": digest, "nfe": 50, "branch_steps": 14,
                                 "eta": 0.85}}
    with pytest.warns(UserWarning, match=r"^std_model: fitted to samples of other sampler "
                                         r"settings: branch_steps 0 \(fitted 14\), eta 1 "
                                         r"\(fitted 0.85\) \(the spread"):
        got = recon(ref.model_copy(update={"eta": 1.0, "std_model": PriorRef(
            samples=2, std_model=tuned).std_model}))[1]
    assert torch.allclose(got, want)
    # each method its own points: dds-3d-tv's here, not dds's
    mixed = {**model, "points": [p | {"method": "dds", "intercept": 3.0} for p in
                                 model["points"]] + [p | {"method": "dds-3d-tv"}
                                                     for p in model["points"]]}
    got = recon(ref.model_copy(update={"std_model": PriorRef(samples=2,
                                                             std_model=mixed).std_model}))[1]
    assert torch.allclose(got, want)
    # a model without fitted.prior_digest is taken as it is
    bare = PriorRef(samples=2, std_model={**model, "fitted": {}}).std_model
    assert torch.allclose(recon(ref.model_copy(update={"std_model": bare}))[1], want)
    path.write_text("[]")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "v.h5", "--out", "o", "--std-model", str(path)])
    assert f"{path}: an error model is a JSON object" in capsys.readouterr().err
    with pytest.raises(ValueError, match="std_model and std_aliasing: give one"):
        PriorRef(samples=2, std_model=model, std_aliasing=[(0.2, 1.0)])
    with pytest.raises(ValueError, match="std_model: needs samples > 1"):
        PriorRef(std_model=model)
    with pytest.raises(ValueError, match="std_model 'prior': .*brain-t1-coronal-128/"
                                         "error_model.json does not exist"):
        PriorRef(prior="brain-t1-coronal-128", samples=2, std_model="prior")
    assert PriorRef(samples=2, std_model="prior").std_model["fitted"]["prior_digest"] == digest
    k4 = common.diffusion_settings(PriorRef(samples=4), "dds")
    assert "std_model" not in k4["diffusion"]  # keys made before the error model
    with_model = common.diffusion_settings(PriorRef(samples=4, std_model=model), "dds")
    assert with_model != k4 and with_model["diffusion"]["std_model"]["points"][0][
        "coefficients"] == [0.3, 0.5, -0.2, 0.4, -0.6]


def test_grid_pixel_samples_at_the_pixel_size_the_prior_learnt(monkeypatch):
    """The shipped brain prior learnt 2 mm pixels: a 64 x 64 scan at 4 mm is sampled on
    128 x 128, a 96 x 80 scan at 1 x 1.5 mm on 48 x 60, a 2 mm scan at its own size; the
    image comes back on the scan's grid; a prior or scan without a pixel size is a clear
    error."""
    from types import SimpleNamespace

    import torch

    from diffrecon.config import PriorRef
    from diffrecon.recon.diffusion import run
    from diffrecon.recon.operators import Sense
    from diffrecon.tasks import common

    grids = []

    def fake_dds(prior, op, y, config, progress):
        x = op.adjoint(y)
        grids.append(tuple(x.shape[-2:]))
        return x

    monkeypatch.setattr(run, "dds_sample", fake_dds)
    monkeypatch.setattr(common, "_progress_artifact", lambda what: None)
    ref = PriorRef(nfe=2, grid="pixel")
    for shape, pixel, expect in (((64, 64), (4.0, 4.0), (128, 128)),
                                 ((96, 80), (1.0, 1.5), (48, 60)),
                                 ((96, 80), (2.0, 2.0), (96, 80))):
        y = torch.ones(1, 2, *shape, dtype=torch.complex64)
        maps = torch.full((1, 2, *shape), 0.5 ** 0.5, dtype=torch.complex64)
        def make_op(a, b, m=maps, s=shape):
            return Sense(m[a:b], torch.ones(s))

        x, *_ = common.run_diffusion("dds", make_op, y, ref, torch.device("cpu"), "s", None,
                                     "mri", shape, pixel_mm=pixel)
        assert grids[-1] == expect and tuple(x.shape) == (1, *shape)
    # a scan read from disk: its pixel size from the header's field of view, None without
    from dataclasses import replace

    from tests.conftest import make_acquisition

    acq = make_acquisition(n_slices=1, n_coils=2, ny=40, nx=30, seed=0)
    assert acq.pixel_mm == (2.0, 2.0)
    assert replace(acq, fov_mm=(60.0, 120.0, 3.0)).pixel_mm == (3.0, 2.0)
    assert replace(acq, fov_mm=(0.0, 0.0, 0.0)).pixel_mm is None
    unknown = SimpleNamespace(name="old-prior", config=SimpleNamespace(pixel_mm=None))
    with pytest.raises(ValueError, match="prior old-prior does not record the pixel size"):
        run.pixel_grid(unknown, (64, 64), (2.0, 2.0))
    with pytest.raises(ValueError, match="grid 'pixel' needs the scan's pixel size"):
        run.pixel_grid(SimpleNamespace(name="p", config=SimpleNamespace(pixel_mm=(2.0, 2.0))),
                       (64, 64), None)


def test_the_std_series_is_sent_after_the_image_and_never_twice(monkeypatch, tmp_path):
    """With a std map the PACS gets both series, the image's first; a rerun sends
    neither again (the receipts beside the folders); a failed std send keeps the image's
    line and says which series stays on disk."""
    from diffrecon.flows import reconstruct as rec

    folders = []
    for name in ("s_dds_dicom", "s_dds_std_dicom"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0001.dcm").write_bytes(name.encode())
        folders.append(str(tmp_path / name))
    calls = []

    def fake_send(name, method, folder, destination, secret=None):
        calls.append(Path(folder).name)
        if "fail" in destination and "std" in Path(folder).name:
            raise OSError("refused")
        return f"1 instances to {destination}"

    monkeypatch.setattr(rec, "send_series", fake_send)
    config = ReconConfig(outputs=["nifti", "pacs"], pacs="https://127.0.0.1:9/dicom-web",
                         out_dir=str(tmp_path))
    sent, error = rec._send("s", "dds", [str(tmp_path / "s_dds.nii.gz"), *folders], config)
    assert error is None and calls == ["s_dds_dicom", "s_dds_std_dicom"]
    line = "1 instances to https://127.0.0.1:9/dicom-web"
    assert sent == f"{line}; {line}"
    assert rec._send("s", "dds", folders, config) == (sent, None) and len(calls) == 2
    (tmp_path / "s_dds_std_dicom.sent.json").unlink()
    failing = config.model_copy(update={"pacs": "https://127.0.0.1:9/fail"})
    (tmp_path / "s_dds_dicom.sent.json").unlink()
    calls.clear()
    from prefect.logging import disable_run_logger

    with disable_run_logger():  # the error is logged through the run logger
        sent, error = rec._send("s", "dds", folders, failing)
    assert calls == ["s_dds_dicom", "s_dds_std_dicom"]
    assert sent == "1 instances to https://127.0.0.1:9/fail"
    assert error.endswith(f"the series stays on disk at {folders[1]}")


def test_the_std_settings_enter_the_cache_key_only_with_samples():
    """One sample: samples, std_scale and std_threshold do nothing, and keys made before
    they existed stay valid; with K > 1 each changes the key."""
    from diffrecon.config import PriorRef
    from diffrecon.tasks.common import diffusion_settings

    one = diffusion_settings(PriorRef(), "dds")
    assert not {"samples", "std_scale", "std_threshold"} & set(one["diffusion"])
    assert diffusion_settings(PriorRef(std_scale=2.0), "dds") == one
    k4 = diffusion_settings(PriorRef(samples=4), "dds")
    assert k4["diffusion"]["samples"] == 4
    assert diffusion_settings(PriorRef(samples=4, std_scale=2.0), "dds") != k4
    assert "std_aliasing" not in k4["diffusion"]  # keys made before the aliasing term
    assert diffusion_settings(PriorRef(std_aliasing=[(0.2, 1.0)]), "dds") == one
    assert diffusion_settings(PriorRef(samples=4, std_aliasing=[(0.2, 1.0)]), "dds") != k4
    with pytest.raises(ValueError, match=r"std_aliasing point \(1.5, 1.0\): the sampled"):
        PriorRef(std_aliasing=[(1.5, 1.0)])
