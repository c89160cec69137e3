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
