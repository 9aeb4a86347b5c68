"""Progress of long steps, with the time left, in the terminal and in the job's log.

``progress(iterable, desc=...)`` is tqdm. On a terminal it draws tqdm's usual bar. In a job,
where ``fmriflow.smk.logged`` sends stderr to the log file, a redrawn bar would be one line of
carriage returns, so updates are written as whole lines at most every ``LOG_INTERVAL`` seconds,
to the log and to the terminal that started the job (Snakemake's), where a user sees them
between Snakemake's own lines.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_INTERVAL = 15.0  # seconds between two progress lines in a log
DISABLE_ENV = "FMRIFLOW_PROGRESS"  # "0": no progress output at all
INTERVAL_ENV = "FMRIFLOW_PROGRESS_INTERVAL"  # seconds between two lines in a log, instead of LOG_INTERVAL


class _Lines:
    """A file for tqdm that turns each redraw into one line, written to every target."""

    def __init__(self, targets: list[TextIO]):
        self.targets = targets
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:  # closing redraws the last state: once is enough
            self.last = line
            for target in self.targets:
                target.write(line + "\n")

    def flush(self) -> None:
        for target in self.targets:
            target.flush()


def _is_tty(stream: TextIO | None) -> bool:
    try:
        return bool(stream) and stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", **kwargs) -> tqdm:
    """tqdm over ``iterable`` (or a manual bar with ``total``), drawn for where stderr goes.

    ``disable=True`` (e.g. on every rank but the first) shows nothing, as ``FMRIFLOW_PROGRESS=0`` does.
    """
    disable = bool(kwargs.pop("disable", False)) or os.environ.get(DISABLE_ENV, "1") == "0"
    if _is_tty(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
    targets = [sys.stderr]
    if sys.__stderr__ is not None and sys.__stderr__ is not sys.stderr:
        targets.append(sys.__stderr__)  # the terminal of the Snakemake run, besides the job's log
    interval = _log_interval()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=_Lines(targets),
                mininterval=interval, maxinterval=interval, ncols=100, ascii=True, **kwargs)


def _log_interval() -> float:
    value = os.environ.get(INTERVAL_ENV)
    if value is None:
        return LOG_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0; {value!r} was provided")
    return seconds
