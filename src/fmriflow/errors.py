"""Errors raised for bad inputs: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """An input file (or config value) is unusable; the message says which and why."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
