"""Tagged tasks keep their tags only where a concurrency limit exists for one of them."""

from __future__ import annotations


def test_gpu_tag_only_where_a_limit_exists(prefect_harness):
    from prefect.client.orchestration import get_client

    from diffrecon.tasks import mri
    from diffrecon.tasks.common import tag_limits_apply

    def drop(client) -> None:
        if any(c.tag == "gpu" for c in client.read_concurrency_limits(limit=100, offset=0)):
            client.delete_concurrency_limit_by_tag("gpu")

    assert mri.reconstruct.tags == {"gpu"}
    with get_client(sync_client=True) as client:
        drop(client)
        assert tag_limits_apply(mri.reconstruct, recheck_seconds=0).tags == set()
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
        try:
            assert tag_limits_apply(mri.reconstruct, recheck_seconds=0).tags == {"gpu"}
            # within the recheck interval the answer is remembered (no round trip)
            drop(client)
            assert tag_limits_apply(mri.reconstruct, recheck_seconds=3600).tags == {"gpu"}
            assert tag_limits_apply(mri.reconstruct, recheck_seconds=0).tags == set()
        finally:
            drop(client)
