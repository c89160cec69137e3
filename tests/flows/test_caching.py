"""Content-keyed caching through a real Prefect run: nothing that finished is recomputed,
and a changed parameter recomputes only what it touches (counted from task-run states)."""

from __future__ import annotations

from collections import Counter

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from tests.conftest import make_acquisition


def _run(paths, config, n_tasks: int = 5) -> tuple[list, Counter]:
    """Run the batch flow; count its task runs that really executed (state Completed, not
    Cached). Task runs reach the API through events, so wait until all are recorded."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from diffrecon.flows.reconstruct import reconstruct_scans

    state = reconstruct_scans(paths, config, return_state=True)
    records = state.result()
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flt)
            done = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(done) >= n_tasks or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(done) == n_tasks, [(r.name, r.state) for r in runs]
    executed = Counter(r.name.split("-")[0] for r in done if r.state.name == "Completed")
    return records, executed


def test_rerun_recomputes_nothing_and_a_changed_parameter_only_what_it_touches(
        prefect_harness, tmp_path):
    scan = write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=5),
                         tmp_path / "scan.h5")
    config = ReconConfig(methods=["zero-filled", "cg-sense"], mask=MaskSpec(accel=2),
                         out_dir=str(tmp_path / "out"))
    first, ran = _run([str(scan)], config)
    # prepare (load, undersample, coil maps), one run per method (QA inside), exports
    assert ran == Counter({"prepare": 1, "cg": 1, "zero": 1, "export": 2})
    assert all(r.psnr is not None for r in first) and first[1].dc_residual is not None

    again, ran = _run([str(scan)], config)
    assert [(r.psnr, r.ssim, r.dc_residual) for r in again] == \
        [(r.psnr, r.ssim, r.dc_residual) for r in first]
    # only the cheap exports run; everything else (QA included) comes from the cache
    assert ran == Counter({"export": 2})

    changed, ran = _run([str(scan)], config.model_copy(update={"lam": 0.05}))
    assert ran == Counter({"cg": 1, "export": 2})  # CG-SENSE (and its QA) only
    assert changed[1].psnr != first[1].psnr and changed[0].psnr == first[0].psnr

    # another mask recomputes from prepare on; a new input file (same name, other
    # content) is a new scan
    _, ran = _run([str(scan)], config.model_copy(update={"mask": MaskSpec(accel=3)}))
    assert ran == Counter({"prepare": 1, "cg": 1, "zero": 1, "export": 2})
    _, ran = _run([str(scan)], config.model_copy(update={"coil_method": "sigpy"}))
    assert ran == Counter({"prepare": 1, "cg": 1, "export": 2})  # zero-filled needs no maps
    write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=6),
                  tmp_path / "scan.h5")
    _, ran = _run([str(scan)], config)
    assert ran["prepare"] == 1 and ran["cg"] == 1
