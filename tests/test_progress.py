"""fmriflow.progress: whole lines with the count and the time left where stderr is a log file."""

from __future__ import annotations

import contextlib
import io

import pytest

from fmriflow import progress as progress_module


def test_progress_in_a_log_is_whole_lines_with_the_time_left(monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        seen = list(progress_module.progress(range(4), desc="folds", unit="fold"))
    assert seen == [0, 1, 2, 3]
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("folds:   0%") and "0/4" in lines[0]
    assert lines[-1].startswith("folds: 100%") and "4/4" in lines[-1]
    # "[elapsed<left, rate]": tqdm's estimate of the time left
    assert all("<" in line and "fold" in line for line in lines[1:])


def test_progress_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(progress_module.DISABLE_ENV, "0")
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        assert sum(progress_module.progress(range(3), desc="x")) == 3
    assert log.getvalue() == ""


def test_progress_in_a_log_writes_a_line_per_interval_not_per_item(monkeypatch):
    """A fast loop in a log gives its first and last state, not a line per item (tqdm's mininterval)."""
    monkeypatch.setenv(progress_module.INTERVAL_ENV, "3600")
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        assert sum(progress_module.progress(range(1000), desc="steps")) == sum(range(1000))
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "0/1000" in lines[0] and "1000/1000" in lines[1]


def test_progress_interval_must_be_seconds(monkeypatch):
    monkeypatch.setenv(progress_module.INTERVAL_ENV, "soon")
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(ValueError, match="FMRIFLOW_PROGRESS_INTERVAL.*'soon'"):
        progress_module.progress(range(3), desc="x")
