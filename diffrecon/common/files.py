"""Files in one place: atomic writes (temporary name in the same folder, then rename) and
content digests of files and folders."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the process umask of each ``permissions`` setting: outputs hold patient data, so by
# default only their owner may read them (files 0600, folders 0700)
UMASKS = {"private": 0o077, "group": 0o027, "world": 0o022}


def apply_permissions(permissions: str) -> None:
    """Set the process umask so everything written from now on (outputs, the ledger, the
    artifact store, staging files) gets the permissions asked for."""
    os.umask(UMASKS[permissions])


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension, so writers that go by it
    still work); on success it is renamed onto ``path``, on failure removed. The parent
    folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.{os.getpid()}.tmp{suffix}")
    for stale in path.parent.glob(glob.escape(f".{stem}.") + "*" + glob.escape(f".tmp{suffix}")):
        if stale != tmp:  # left by a killed writer
            stale.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``folder``; on success it replaces ``folder``
    whole (a reader sees the old folder or the new one, never a partial one: a DICOM series
    killed half-written stays hidden as ``.NAME.PID.partial`` and is removed by the next
    write), on failure it is removed."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(glob.escape(f".{folder.name}.") + "*.partial"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer
    stage = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    stage.mkdir()
    try:
        yield stage
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        if folder.exists():
            os.rename(folder, old)
        os.rename(stage, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def path_digest(path: str | Path, names: tuple[str, ...] | None = None) -> str:
    """sha256 of a file's bytes, or of a folder's file names and bytes (a DICOM series;
    only ``names`` where given, e.g. a prior's config and weights)."""
    p = Path(path)
    h = hashlib.sha256()
    if names is not None:
        files = [p / n for n in names]
    else:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
