"""Slice batches with CUDA out-of-memory halving, for every method whose slices are
independent."""

from __future__ import annotations

from collections.abc import Callable

import torch


def in_slice_batches(fn: Callable[[int, int], torch.Tensor], n: int, batch: int | None,
                     on_retry: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``fn(a, b)`` over slices [a, b) in batches of ``batch`` (None: all at once), joined.

    On CUDA out-of-memory the cache is emptied and the failed batch retried with half as
    many slices (down to one); finished batches are kept. ``on_retry(failed, next)`` is
    told the batch sizes (for a log line).
    """
    size = batch or n
    parts, a = [], 0
    while a < n:
        b = min(n, a + size)
        try:
            parts.append(fn(a, b))
            a = b
        except torch.cuda.OutOfMemoryError:
            if b - a == 1:
                raise
            size = max(1, (b - a) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if on_retry is not None:
                on_retry(b - a, size)
    return parts[0] if len(parts) == 1 else torch.cat(parts)
