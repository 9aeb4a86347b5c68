"""Glue for the Snakemake scripts: send a step's messages and warnings to its log."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def logged(log_path: str) -> Iterator[logging.Logger]:
    """Route stdout, stderr, warnings and logging of the block to ``log_path``.

    A failure is written to the log with its traceback and re-raised, so Snakemake
    marks the job failed and removes its outputs.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            yield logging.getLogger("fmriflow")
        except Exception:
            traceback.print_exc(file=fh)
            fh.flush()
            print(f"fmriflow: step failed, see {log_path}", file=sys.__stderr__)
            raise
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
