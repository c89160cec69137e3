"""A progress line for operators at a terminal: which scan and method is running, and the
diffusion steps, rewritten in place on stderr. Quiet when stderr is not a terminal (a
deployment, a Dask worker, a log file) unless DIFFRECON_PROGRESS=on; DIFFRECON_PROGRESS=off
silences it everywhere. It never carries more than the scan's label."""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    mode = os.environ.get("DIFFRECON_PROGRESS", "auto")
    if mode in ("on", "off"):
        return mode == "on"
    return sys.stderr.isatty()


def status(text: str, done: bool = False) -> None:
    """Show ``text`` on the progress line; ``done`` keeps it (a new line follows)."""
    if enabled():
        sys.stderr.write("\r\x1b[K" + text + ("\n" if done else ""))
        sys.stderr.flush()


def steps(what: str, i: int, n: int) -> None:
    """``what: step i/n`` with a bar, for sampler steps."""
    if enabled():
        filled = round(20 * i / max(n, 1))
        status(f"{what}: [{'#' * filled}{'.' * (20 - filled)}] step {i}/{n}")
