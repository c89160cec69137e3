"""The one error type every reader raises for input it cannot accept."""

from __future__ import annotations

from pathlib import Path


class InvalidScanError(ValueError):
    """A scan file that cannot be read or fails validation.

    The message always starts with the file name, then says what is wrong, so a
    user (or a Prefect log) sees at once which scan to look at and why.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{Path(path).name}: {problem}")


# the largest array a scan may declare, in GiB (``DIFFRECON_MAX_SCAN_GB``; the CLI's
# --max-scan-gb sets it): a file's header is checked against it before anything is read
DEFAULT_MAX_SCAN_GB = 16.0


def max_scan_bytes() -> int:
    import os

    text = os.environ.get("DIFFRECON_MAX_SCAN_GB", "")
    try:
        gb = float(text) if text else DEFAULT_MAX_SCAN_GB
    except ValueError:
        raise ValueError(f"DIFFRECON_MAX_SCAN_GB={text!r} is not a number of GiB") from None
    return int(gb * 2**30)


def check_declared_size(path: str | Path, what: str, shape: tuple[int, ...],
                        itemsize: int) -> None:
    """Refuse a scan whose header declares an array larger than the memory budget, before
    any of it is read (a 1 kB file can declare 256 GiB of k-space)."""
    n = itemsize
    for d in shape:
        n *= max(int(d), 0)
    budget = max_scan_bytes()
    if n > budget:
        dims = " x ".join(str(int(d)) for d in shape)
        raise InvalidScanError(path, f"{what} declares {dims} values ({n / 2**30:.1f} GiB), "
                                     f"more than the memory budget of {budget / 2**30:.1f} GiB "
                                     "(DIFFRECON_MAX_SCAN_GB)")
