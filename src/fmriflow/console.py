"""Snakemake's console output kept readable at thousands of runs.

A group step declares every run's file as an input, so that Snakemake rebuilds any that is
missing or outdated; its job line then lists them all (hundreds of kilobytes at 1,000 subjects),
and so does its ``reason``. With ``printshellcmds`` (both profiles) Snakemake 9 also prints
"Shell command: None" for every job of a ``script:`` or ``run:`` rule. ``ConsoleFilter`` shortens
what the terminal shows, on the terminal's handler only: the plan itself, the logs of the jobs and
other log handlers (logger plugins) see every file.
"""

from __future__ import annotations

import logging

# what Snakemake puts on its log records (snakemake_interface_logger_plugins.common.LogEvent values)
SHELLCMD, JOB_INFO, JOB_ERROR = "shellcmd", "job_info", "job_error"

MAX_FILES = 6  # files shown of a longer list: the first few, a count, the last
MAX_REASON = 1000  # characters of a job's reason


def shorten_files(files: list[str], limit: int = MAX_FILES) -> list[str]:
    """The first ``limit - 1`` files, how many are left out, and the last one."""
    files = list(files)
    if len(files) <= limit:
        return files
    return [*files[: limit - 1], f"... ({len(files) - limit} more) ...", files[-1]]


def shorten_text(text: str, limit: int = MAX_REASON) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters; `snakemake --summary` lists every file)"


def _event(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    return str(getattr(event, "value", event or ""))


class ConsoleFilter(logging.Filter):
    """Drops "Shell command: None" (the job of a script: or run: rule has no shell command)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_event(record) == SHELLCMD and getattr(record, "shellcmd", "") is None)


class ShortFormatter(logging.Formatter):
    """Formats a copy of each job record whose long file lists and reason are shortened, with the
    handler's own formatter; the record itself, which other handlers read, is left as it came."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if _event(record) in (JOB_INFO, JOB_ERROR):
            record = logging.makeLogRecord(record.__dict__)
            for key in ("input", "output"):
                files = getattr(record, key, None)
                if isinstance(files, (list, tuple)) and len(files) > MAX_FILES:
                    setattr(record, key, shorten_files(files))
            if isinstance(getattr(record, "reason", None), str):
                record.reason = shorten_text(record.reason)
        return self.inner.format(record)


def install(logger_name: str = "snakemake.logging") -> None:
    """Put ``ConsoleFilter`` and ``ShortFormatter`` on the text handlers of Snakemake's logger (once)."""
    for handler in logging.getLogger(logger_name).handlers:
        if not isinstance(handler, logging.StreamHandler) or isinstance(handler.formatter, ShortFormatter):
            continue
        handler.addFilter(ConsoleFilter())
        if handler.formatter is not None:
            handler.setFormatter(ShortFormatter(handler.formatter))
