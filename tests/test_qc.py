"""Run QC exclusion: thresholds from the qc config section, reasons named, n/a judged by none."""

import numpy as np
import pandas as pd

from fmriflow.qc import EXCLUSION_CRITERIA, exclusions, region_coverage


def test_each_criterion_excludes_with_its_reason():
    runs = pd.DataFrame({
        "run": ["a", "b", "c", "d", "e"],
        "mean_fd": [0.1, 0.6, 0.1, np.nan, 0.1],
        "max_fd": [0.4, 3.0, 0.4, 0.4, 0.4],
        "fraction_censored": [0.0, 0.6, 0.1, 0.0, 0.0],
        "remaining_time_s": [400.0, 100.0, 400.0, 400.0, 400.0],
        "degrees_of_freedom": [150, 20, 150, 150, 5],
        "median_tsnr": [60.0, 40.0, 25.0, 60.0, 60.0],
        "region_coverage": [0.99, 0.99, 0.99, 0.99, 0.7],
    })
    thresholds = {"max_mean_fd": 0.5, "max_fd": None, "max_fraction_censored": 0.5, "min_time": 240,
                  "min_degrees_of_freedom": 10, "min_tsnr": 30, "min_region_coverage": 0.8}
    out = exclusions(runs, thresholds)
    assert out["included"].tolist() == [True, False, False, True, False]
    assert out.loc[1, "exclusion_reasons"] == ("mean FD 0.6 mm > 0.5 mm; 60.0% of volumes censored > 50.0%; "
                                               "100 s left after censoring < 240 s")
    assert out.loc[2, "exclusion_reasons"] == "median tSNR 25 < 30"
    assert out.loc[3, "exclusion_reasons"] == "n/a"  # mean FD unknown: not judged
    assert out.loc[4, "exclusion_reasons"] == ("5 degrees of freedom left after denoising < 10; "
                                               "70.0% of atlas regions covered < 80.0%")
    # max_fd switched off: run b's 3 mm is not a reason; switching it on adds it
    assert "max FD" in exclusions(runs, {**thresholds, "max_fd": 2.0}).loc[1, "exclusion_reasons"]
    assert exclusions(runs, {k: None for k in EXCLUSION_CRITERIA})["included"].all()


def test_region_coverage():
    cov = pd.DataFrame({"index": [1, 2, 3, 4], "coverage": [1.0, 0.6, 0.2, 0.0], "used": [True, True, False, False]})
    assert region_coverage(cov) == {"region_coverage": 0.5, "mean_region_coverage": 0.45, "n_regions_dropped": 2}


def test_run_qc_step_keeps_subject_and_run_labels_as_text(tmp_path):
    """Labels such as '001' stay text in the group QC table (not the number 1)."""
    from fmriflow.io import read_tsv, write_tsv
    from fmriflow.steps import run_qc_step

    runs = ["sub-001_task-rest", "sub-010_task-rest"]
    qc_tables, cov_tables = [], []
    for k, run in enumerate(runs):
        qc_path, cov_path = tmp_path / f"{run}_qc.tsv", tmp_path / f"{run}_coverage.tsv"
        write_tsv(qc_path, pd.DataFrame([{"run": run, "subject": run[4:7], "mean_fd": 0.1 + k, "max_fd": 0.4}]))
        write_tsv(cov_path, pd.DataFrame({"index": [1, 2], "coverage": [1.0, 0.5], "used": [True, True]}))
        qc_tables.append(str(qc_path))
        cov_tables.append(str(cov_path))
    out = tmp_path / "desc-runs_qc.tsv"
    run_qc_step(runs, qc_tables, cov_tables, str(out), max_mean_fd=0.5)
    assert (tmp_path / "desc-runs_qc.tsv").read_text().splitlines()[1].split("\t")[1] == "001"
    table = read_tsv(out, dtype={"subject": str, "run": str})
    assert table["subject"].tolist() == ["001", "010"]
    assert table["run"].tolist() == runs
    assert table["included"].tolist() == [True, False]
