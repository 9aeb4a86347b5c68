"""Errors raised for bad inputs: each names the file and the problem.

An error that a parameter's value causes (a window longer than every run, fractions that do
not sum to 1) lists that parameter in ``settings``: the library does not know the config, so a
workflow step that took the value from a config key names the key (``with_note``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class InputError(ValueError):
    """An input file (or config value) is unusable; the message says which and why.

    ``settings``: the parameters whose values caused the problem (or would solve it), if any.
    """

    def __init__(self, path: str | Path | None, problem: str, *, settings: Sequence[str] = ()):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.settings = tuple(settings)
        super().__init__(problem if path is None else f"{path}: {problem}")

    def with_note(self, note: str) -> InputError:
        """The same error with ``note`` after the problem, in parentheses."""
        return InputError(self.path, f"{self.problem} ({note})", settings=self.settings)


class SettingError(ValueError):
    """A parameter's value is not allowed; the message says what is allowed and what was provided.

    ``settings`` holds the parameter's name.
    """

    def __init__(self, setting: str, problem: str):
        self.problem = problem
        self.settings = (setting,)
        super().__init__(problem)

    def with_note(self, note: str) -> SettingError:
        """The same error with ``note`` after the problem, in parentheses."""
        return SettingError(self.settings[0], f"{self.problem} ({note})")
