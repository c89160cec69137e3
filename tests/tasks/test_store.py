from __future__ import annotations

import numpy as np
import pytest

from diffrecon.tasks.store import ArtifactStore, array_digest


def test_put_get_roundtrip_by_content(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    a = (np.arange(24).reshape(2, 3, 4) + 1j).astype(np.complex64)
    ref = store.put(a)
    assert ref.shape == (2, 3, 4) and ref.dtype == "complex64"
    assert ref.digest == array_digest(a)
    np.testing.assert_array_equal(store.get(ref), a)
    assert store.put(a.copy()) == ref  # same content, same address
    assert store.put(a.astype(np.complex128)).digest != ref.digest
    assert not list((tmp_path / "store").rglob("*.tmp"))


def test_corrupt_artifact_is_detected(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ref = store.put(np.ones(10))
    path = next(tmp_path.rglob("*.npy"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="digest mismatch"):
        store.get(ref)


def test_fsspec_memory_url():
    store = ArtifactStore("memory://diffrecon-test")
    ref = store.put(np.eye(3))
    assert ref.uri.startswith("memory://")
    np.testing.assert_array_equal(store.get(ref), np.eye(3))
