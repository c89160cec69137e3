"""Content-keyed caching: cache keys from input digests, the relevant configuration, the
prior's digest and the code version; results persisted as small JSON references.

Never Prefect's default hashing of task inputs (it would pickle and hash whole arrays):
every cached task gets a cache policy built here (:func:`content_key`), and its result
(a pydantic reference to arrays in the artifact store) is stored as JSON beside the
artifact store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from diffrecon.common.files import path_digest

if TYPE_CHECKING:
    from prefect import Task
    from prefect.cache_policies import CachePolicy
    from prefect.context import TaskRunContext
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of every diffrecon source file: a changed commit never
    reuses results computed by other code."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("diffrecon")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        ver = "0"
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return f"{ver}+{h.hexdigest()[:16]}"




def _jsonable(value: object):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def make_key(task_name: str, *parts: object) -> str:
    """One key from a task's name, the code version and the given parts."""
    payload = json.dumps([task_name, code_version(), *[_jsonable(p) for p in parts]],
                         sort_keys=True, default=str)
    return f"{task_name}-{hashlib.sha256(payload.encode()).hexdigest()}"


def key_fn(task_name: str, *names: str,
           derive: Callable[[dict[str, Any]], Any] | None = None
           ) -> Callable[[TaskRunContext, dict[str, Any]], str | None]:
    """A Prefect ``cache_key_fn`` keyed on the named parameters (string paths by their
    content) plus whatever ``derive(parameters)`` adds (e.g. the relevant config)."""

    def fn(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        parts = []
        for n in names:
            v = parameters.get(n)
            if n == "path" and isinstance(v, str):
                if not Path(v).exists():
                    return None  # nothing to key on: run (and fail with the reader's message)
                v = {"path": v, "digest": path_digest(v)}
            parts.append(v)
        if derive is not None:
            parts.append(derive(parameters))
        return make_key(task_name, *parts)

    return fn


def content_key(task_name: str, *names: str,
                derive: Callable[[dict[str, Any]], Any] | None = None) -> CachePolicy:
    """The cache policy of a cached task: :func:`key_fn` as a Prefect cache policy."""
    from prefect.cache_policies import CachePolicy

    return CachePolicy.from_cache_key_fn(key_fn(task_name, *names, derive=derive))


_STORAGE: dict = {}  # (location, API URL) -> the saved block
_CACHED: dict = {}  # (task, its options, storage block) -> the task persisting there


def result_storage(store_root: str) -> LocalFileSystem | RemoteFileSystem:
    """Where cached results (small JSON references) live: beside the artifact store.

    Prefect wants result storage saved as a block; it is saved under a name derived from
    the location, so every flow run on the same store finds the same results.
    """
    import fsspec
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    base = f"{store_root.rstrip('/')}/task-results"
    fs, _ = fsspec.core.url_to_fs(base)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        Path(base).mkdir(parents=True, exist_ok=True)
        base = str(Path(base).resolve())
        block = LocalFileSystem(basepath=base)
    else:
        block = RemoteFileSystem(basepath=base)
    from prefect.settings import PREFECT_API_URL

    key = (base, PREFECT_API_URL.value())
    if key not in _STORAGE:  # saved once per location and server in a process, not per scan
        name = "diffrecon-results-" + hashlib.sha256(base.encode()).hexdigest()[:16]
        block.save(name, overwrite=True)
        _STORAGE[key] = block
    return _STORAGE[key]


def cached(tasks: Iterable[Task[..., Any]], store_root: str) -> list[Task[..., Any]]:
    """The tasks with persisted JSON results in this store (their cache_key_fn decides reuse);
    made once per task, store and server in a process (``with_options`` costs ~7 ms)."""
    storage = result_storage(store_root)
    out = []
    for t in tasks:
        # the storage block is one object per resolved location and server (_STORAGE): a
        # relative store_root from another working folder is another key
        key = (t.fn, t.name, frozenset(t.tags), t.retries, t.cache_key_fn, id(storage))
        if key not in _CACHED:
            _CACHED[key] = t.with_options(persist_result=True, result_storage=storage,
                                          result_serializer="json")
        out.append(_CACHED[key])
    return out


def scan_run_name(prefix: str) -> Callable[[], str]:
    """A task-run name from the ``label`` parameter (the scan's label), else the ``path``
    parameter's file stem; never the whole path: folders may carry names that must not
    reach the UI."""

    def name() -> str:
        from prefect.runtime import task_run

        from diffrecon.io.records import scan_name

        params = task_run.parameters
        return f"{prefix}-{params.get('label') or scan_name(params['path'])}"

    return name
