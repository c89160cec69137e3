"""The artifact store: arrays addressed by content digest, written atomically.

Heavy arrays never travel through Prefect: a task writes them here and returns an
``ArrayRef`` (URI, digest, shape, dtype). The root is a local directory by default or
any fsspec URL for shared storage.
"""

from __future__ import annotations

import hashlib
import io
import uuid

import numpy as np
from pydantic import BaseModel


class ArrayRef(BaseModel):
    uri: str
    digest: str
    shape: tuple[int, ...]
    dtype: str


def array_digest(a: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes (C order)."""
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(tuple(a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: str) -> None:
        import fsspec

        self.root = str(root).rstrip("/")
        self.fs, self._path = fsspec.core.url_to_fs(self.root)

    def _path_for(self, digest: str) -> str:
        return f"{self._path}/{digest[:2]}/{digest}.npy"

    def put(self, array: np.ndarray) -> ArrayRef:
        a = np.asarray(array)
        digest = array_digest(a)
        path = self._path_for(digest)
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.fs.open(tmp, "wb") as f:
                f.write(buf.getvalue())
            self.fs.mv(tmp, path)
        uri = self.fs.unstrip_protocol(path) if hasattr(self.fs, "unstrip_protocol") else path
        return ArrayRef(uri=uri, digest=digest, shape=tuple(a.shape), dtype=str(a.dtype))

    def get(self, ref: ArrayRef) -> np.ndarray:
        import fsspec

        with fsspec.open(ref.uri, "rb") as f:
            a = np.load(io.BytesIO(f.read()), allow_pickle=False)
        if array_digest(a) != ref.digest:
            raise OSError(f"artifact {ref.uri} is corrupt (digest mismatch)")
        return a
