"""Scale-out: a batch over a local Dask cluster of two workers (each offering GPU=1)."""

from __future__ import annotations

from diffrecon.config import DaskSpec, MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from diffrecon.results import read_results
from tests.conftest import make_acquisition


def test_batch_on_two_dask_workers(prefect_harness, tmp_path):
    from diffrecon.flows.reconstruct import reconstruct_scans

    paths = [str(write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64, seed=i),
                               tmp_path / "in" / f"s{i}.h5")) for i in range(4)]
    config = ReconConfig(methods=["zero-filled", "cg-sense"], mask=MaskSpec(accel=2),
                         out_dir=str(tmp_path / "out"),
                         dask=DaskSpec(n_workers=2, processes=False))
    records = reconstruct_scans(paths, config)
    assert [(r.scan, r.method, r.state) for r in records] == [
        (f"s{i}", m, "done") for i in range(4) for m in ("zero-filled", "cg-sense")]
    assert len({r.worker for r in records}) == 2  # both workers reconstructed scans
    assert all(r.psnr > 20 for r in records if r.method == "cg-sense")
    # the same records as a sequential run, bar the worker
    assert [r.worker for r in read_results(tmp_path / "out" / "results.json")] == \
        [r.worker for r in records]
    seq = reconstruct_scans(paths, config.model_copy(update={"dask": None,
                                                             "out_dir": str(tmp_path / "o2")}))
    assert [round(r.psnr, 6) for r in seq] == [round(r.psnr, 6) for r in records]
    assert all(r.worker is None for r in seq)
