"""`fmriflow timings`: per-rule wall seconds from Snakemake's metadata records, checked by hand."""

from __future__ import annotations

import base64
import json

import pytest

from fmriflow import timings
from fmriflow.cli import main


def _record(folder, output, rule, job, start, end, incomplete=False, split=False):
    """A Snakemake metadata record, named as Snakemake names it (long names split into '@' folders)."""
    name = base64.urlsafe_b64encode(output.encode()).decode()
    parts = ["@" + name[:10], name[10:]] if split else [name]
    path = folder.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rule": rule, "job_hash": job, "starttime": start, "endtime": end,
                                "incomplete": incomplete, "input": []}))


@pytest.fixture
def metadata(tmp_path):
    folder = tmp_path / "metadata"
    # an earlier run's job, outside --since
    _record(folder, "results/old.tsv", "bids", 1, 50.0, 60.0)
    # two outputs of one job: it runs from the first start to the last end
    _record(folder, "results/a/x.tsv", "denoise", 11, 100.0, 130.0)
    _record(folder, "results/a/x.json", "denoise", 11, 100.5, 131.0, split=True)
    _record(folder, "results/b/x.tsv", "denoise", 12, 120.0, 140.0)
    _record(folder, "results/c.pt", "finetune", 21, 140.0, 200.0)
    _record(folder, "results/d.pt", "finetune", 22, 150.0, 150.0, incomplete=True)  # still running: ignored
    bench = tmp_path / "benchmarks" / "finetune"
    bench.mkdir(parents=True)
    (bench / "setup-a.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n60.0\t0:01:00\t812.5\t900\n")
    (bench / "setup-b.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n5.0\t0:00:05\t97.0\t100\n")
    return folder


def test_jobs_group_outputs_and_rules_sum_their_jobs(metadata):
    records = timings.read_metadata(metadata, since=100.0)
    assert set(records["output"]) == {"results/a/x.tsv", "results/a/x.json", "results/b/x.tsv", "results/c.pt"}
    job_table = timings.jobs(records)
    assert len(job_table) == 3
    table = timings.rule_table(job_table, timings.read_benchmarks(metadata.parent / "benchmarks")).set_index("rule")
    # denoise: jobs of 31 s (100 -> 131) and 20 s (120 -> 140), span 100 -> 140
    assert table.loc["denoise", "jobs"] == 2
    assert table.loc["denoise", "busy_s"] == pytest.approx(31 + 20)
    assert table.loc["denoise", "longest_s"] == pytest.approx(31)
    assert table.loc["denoise", "span_s"] == pytest.approx(40)
    assert table.loc["finetune", "busy_s"] == pytest.approx(60)
    assert table.loc["finetune", "max_rss_mb"] == pytest.approx(812.5)
    assert list(table.index) == ["finetune", "denoise"]  # most busy first
    assert "bids" not in table.index


def test_the_command_prints_the_run_wall_time(metadata, capsys):
    assert main(["timings", "--metadata", str(metadata), "--since", "100",
                 "--benchmarks", str(metadata.parent / "benchmarks")]) == 0
    out = capsys.readouterr().out
    assert "3 jobs, 100 s wall" in out  # 100 (first start) -> 200 (last end)
    assert "812" in out
    assert main(["timings", "--metadata", str(metadata.parent / "absent")]) == 1
