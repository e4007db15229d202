"""Data errors that name the file and the problem, and the record of skipped inputs.

Every reader raises :class:`DataError` (a ``ValueError``, so the CLI reports it as bad input with
exit code 2). Batch tools (``prepare-data``) catch it per file, record a :class:`Skipped` and go on:
a skipped file is always reported, never silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class DataError(ValueError):
    """An input file cannot be used; the message starts with the file name."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@dataclass(frozen=True)
class Skipped:
    """One input (or one part of it) that was left out, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}
