"""Injected faults: I/O errors are retried, invalid input is not, CUDA out-of-memory halves
the slice batch (the fault raised on the CPU by a wrapped solver)."""

from __future__ import annotations

import numpy as np
import torch

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from tests.conftest import make_acquisition


def test_io_fault_is_retried_and_bad_input_is_not(prefect_harness, tmp_path, monkeypatch):
    import diffrecon.io as dio
    from diffrecon.flows.reconstruct import reconstruct_scans

    good = write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=32, nx=32), tmp_path / "g.h5")
    bad = tmp_path / "b.h5"
    bad.write_bytes(good.read_bytes()[:500])
    real, calls = dio.load_scan, []

    def flaky(path):
        calls.append(str(path))
        if str(path) == str(good) and calls.count(str(good)) == 1:
            raise OSError("stale NFS file handle")  # the first read of the good scan fails
        return real(path)

    monkeypatch.setattr(dio, "load_scan", flaky)
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2),
                         out_dir=str(tmp_path / "out"))
    g, b = reconstruct_scans([str(good), str(bad)], config)
    assert g.state == "done" and calls.count(str(good)) == 2  # retried once, then fine
    assert b.state == "invalid" and calls.count(str(bad)) == 1  # bad input: no retry
    assert "truncated or corrupt HDF5 file" in b.error


def test_cuda_out_of_memory_halves_the_slice_batch(prefect_harness, tmp_path, monkeypatch):
    from diffrecon.flows.reconstruct import reconstruct_scans
    from diffrecon.recon import classical

    scan = write_fastmri(make_acquisition(n_slices=6, n_coils=4, ny=64, nx=64, seed=5),
                         tmp_path / "s.h5")
    real, batches = classical.cg_sense, []

    def small_gpu(k, *args, **kwargs):
        batches.append(k.shape[0])
        if k.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(k, *args, **kwargs)

    monkeypatch.setattr(classical, "cg_sense", small_gpu)
    config = ReconConfig(methods=["cg-sense"], mask=MaskSpec(accel=2), slice_batch=6,
                         out_dir=str(tmp_path / "a"))
    (rec,) = reconstruct_scans([str(scan)], config)
    assert rec.state == "done", rec.error
    assert batches == [6, 3, 1, 1, 1, 1, 1, 1]  # halved twice, finished batches kept
    # the same image as one batch of all slices on a machine with enough memory
    monkeypatch.setattr(classical, "cg_sense", real)
    (ref,) = reconstruct_scans([str(scan)], config.model_copy(
        update={"slice_batch": None, "out_dir": str(tmp_path / "b")}))
    import nibabel as nib

    a = np.asarray(nib.load(rec.output).dataobj)
    b = np.asarray(nib.load(ref.output).dataobj)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(b.max()))
