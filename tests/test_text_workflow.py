"""The text rules in the plan (workflow/rules/text.smk): off by default; text.enabled plans vq-align,
its ablation (align_weight 0) and lm-finetune with the config's settings; a bad text section stops
the plan with the keys named. Then a real run of both tasks on a small demo to the report, its
artefacts checked against independent computations (scikit-learn on the predictions the run wrote,
numpy on the validation windows) and their provenance sidecars against the files' own checksums."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_workflow import demo_config, make_demo, planned_jobs, run_snakemake

TEXT = {"enabled": True, "template": "sex: {sex}; age: {age}", "target": "age", "prompt": "sex: {sex}; age:"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    return make_demo(tmp_path_factory.mktemp("textdemo"), atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=23)


def test_text_rules_are_opt_in_and_planned_with_their_settings(demo, tmp_path):
    results = tmp_path / "results"
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, results), "--dry-run"))
    assert not {"vq_align", "lm_finetune"} & set(off)
    proc = run_snakemake(tmp_path, demo_config(demo, results, text=TEXT), "--dry-run", "--printshellcmds")
    on = planned_jobs(proc)
    assert on["vq_align"] == 2 and on["lm_finetune"] == 1
    commands = [line for line in proc.stdout.splitlines() if "fmriflow.train" in line and "--task" in line]
    ablation = next(c for c in commands if "vq-align_ablation" in c)
    aligned = next(c for c in commands if "vq-align_aligned" in c and "--task vq-align" in c)
    lm = next(c for c in commands if "--task lm-finetune" in c)
    assert "--align-weight 0.0" in ablation and "--align-weight 0.5" in aligned
    assert "--text-template 'sex: {sex}; age: {age}'" in aligned
    assert "--target age" in lm and "--text-prompt 'sex: {sex}; age:'" in lm and "vq-align_aligned/model.pt" in lm
    # the report reads the text runs (Snakemake shows the last of its long input list: the language model's scores)
    report = proc.stdout[proc.stdout.index("rule report:"):]
    assert "lm-finetune_target-age/lm_metrics.tsv" in report[:report.index("output:")]


def test_text_section_needs_a_target_and_one_text_source(demo, tmp_path):
    results = tmp_path / "results"
    proc = run_snakemake(tmp_path, demo_config(demo, results, text={**TEXT, "column": "site"}), "--dry-run")
    assert proc.returncode != 0
    assert "exactly one of text.template and text.column" in proc.stdout + proc.stderr


def test_tracked_params_of_a_template_survive_snakemake_wildcards():
    from snakemake.io import apply_wildcards

    from fmriflow.smk import tracked_params

    params = tracked_params({"text": {"template": "sex: {sex}; age: { age}", "empty": {}}, "list": ["{a}"]})
    shown = {k: apply_wildcards(v, {}) for k, v in params.items() if k.startswith("_shape")}
    decoded = dict(text.split("=", 1) for text in shown.values())
    assert {k: json.loads(v) for k, v in decoded.items()} == {
        "text.template": "sex: {sex}; age: { age}", "text.empty": {}, "list": ["{a}"]}


# The real run: 6 subjects (3 training, 3 held out at fractions 0.5/0.25/0.25), 20-TR windows every 10 TRs
# of 60-volume runs (fewer leave 24P too few degrees of freedom after censoring), a few steps of each tiny
# model; pretraining and fine-tuning off (not this test's subject: test_workflow.py runs them).
TINY_TEXT = {**TEXT, "num_workers": 0, "warmup_steps": 1, "checkpoint_every": 4,
             # reversal_gate 0: the weight is the schedule's alone, so the log shows the config reached the run (with
             # the default gate, 6 steps may end with the classifier at chance and the weight at 0)
             "vq_align": {"model": "tiny", "align_weight": 0.5, "reversal_gate": 0.0, "restart_every": 2, "batch_size": 4,
                          "max_steps": 6, "lr": 1.0e-3},
             "lm_finetune": {"model": "tiny", "batch_size": 4, "max_steps": 6, "lr": 3.0e-3}}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, atlas_dir):
    work = tmp_path_factory.mktemp("textrun")
    demo = make_demo(work / "demo", atlas_dir, n_subjects=6, n_trs=60, bold_res=2, seed=29)
    results = work / "results"
    config = demo_config(demo, results, pretrain={"enabled": False}, finetune={"enabled": False},
                         dataset={"window": 20, "stride": 10, "fractions": [0.5, 0.25, 0.25], "stratify": None},
                         text=TINY_TEXT)
    proc = run_snakemake(work, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return demo, results


def test_text_run_reaches_the_report_with_both_tasks(text_run):
    _, results = text_run
    text = results / "text"
    for run in ("vq-align_aligned", "vq-align_ablation"):
        metrics = pd.read_csv(text / run / "metrics.csv").dropna(subset=["recon_r2"])
        assert len(metrics) and metrics["step"].iloc[-1] == TINY_TEXT["vq_align"]["max_steps"]
    weights = {run: pd.read_csv(text / f"vq-align_{run}" / "metrics.csv").dropna(subset=["recon_r2"])["reversal_weight"]
               for run in ("aligned", "ablation")}
    # Ganin & Lempitsky's schedule at the last trained step (5 of 6), align_weight 0.5, ungated (reversal_gate 0)
    assert (weights["ablation"] == 0).all()
    assert weights["aligned"].iloc[-1] == pytest.approx(0.5 * (2 / (1 + math.exp(-10 * 5 / 6)) - 1), rel=1e-6)
    html = (results / "report" / "fmriflow_report.html").read_text()
    assert 'id="text-vq"' in html and 'id="text-lm"' in html
    # the report shows the language model's MAE as the run scored it
    lm = pd.read_csv(text / "lm-finetune_target-age" / "lm_metrics.tsv", sep="\t").set_index("predictor")
    assert f"{lm.loc['lm', 'mae']:.2f} [" in html and f"{lm.loc['ridge_on_codes', 'mae']:.2f} [" in html


def test_text_run_scores_match_sklearn_on_its_predictions(text_run):
    """lm_metrics.tsv against scikit-learn's MAE on the predictions.tsv the run wrote, the training mean
    against the participants' ages of the dataset's training subjects, and each subject's predictions
    against its answers: the median of the numbers in its sampled answers (lm), the mean of its
    windows' greedy answers (lm_greedy)."""
    from sklearn.metrics import mean_absolute_error

    demo, results = text_run
    lm_dir = results / "text" / "lm-finetune_target-age"
    metrics = pd.read_csv(lm_dir / "lm_metrics.tsv", sep="\t").set_index("predictor")
    per = pd.read_csv(lm_dir / "predictions.tsv", sep="\t", dtype={"subject": str})
    ages = pd.read_csv(demo / "bids" / "participants.tsv", sep="\t").assign(
        subject=lambda t: t["participant_id"].str[4:]).set_index("subject")["age"]
    splits = pd.read_csv(next((results / "dataset").rglob("splits.tsv")), sep="\t", dtype={"subject": str})
    train_mean = ages[splits.loc[splits["split"] == "train", "subject"]].mean()
    held = splits.loc[splits["split"] != "train", "subject"]
    assert sorted(per["subject"]) == sorted(held) and np.allclose(per["truth"], ages[per["subject"]])
    for predictor, column, file, pool in (("lm", "prediction", "samples.tsv", "median"),
                                          ("lm_greedy", "greedy_prediction", "answers.tsv", "mean")):
        answers = pd.read_csv(lm_dir / file, sep="\t", dtype={"subject": str, "answer": str})
        numbers = answers["answer"].fillna("").str.extract(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))")[0].astype(float)
        assert int(numbers.isna().sum()) == metrics.loc[predictor, "unparseable_answers"]
        by_subject = numbers.groupby(answers["subject"]).agg(pool)
        scored = per[per[column].notna()]
        assert np.allclose(scored[column], by_subject[scored["subject"]])
    for predictor, column in (("lm", "prediction"), ("lm_greedy", "greedy_prediction"),
                              ("ridge_on_codes", "ridge_prediction")):
        rows, row = per[per[column].notna()], metrics.loc[predictor]
        assert row["train_mean"] == pytest.approx(train_mean)
        assert row["mae"] == pytest.approx(mean_absolute_error(rows["truth"], rows[column]))
        constant = np.full(len(rows), train_mean)
        assert row["mae_mean_baseline"] == pytest.approx(mean_absolute_error(rows["truth"], constant))
        assert row["mae_ci_low"] <= row["mae"] <= row["mae_ci_high"]


def test_text_run_region_r2_matches_sklearn_on_the_validation_windows(text_run):
    """region_r2.tsv of the aligned run: scikit-learn's R^2 of the saved model's reconstructions of the
    validation windows, region by region (time points pooled over windows)."""
    import torch
    from sklearn.metrics import r2_score

    from fmriflow.datasets.regions import RegionWindowDataset
    from fmriflow.training.text_tasks import load_vq_align

    _, results = text_run
    run = results / "text" / "vq-align_aligned"
    model, _ = load_vq_align(str(run / "model.pt"))
    dataset_dir = next((results / "dataset").rglob("dataset_card.json")).parent
    val = RegionWindowDataset(dataset_dir, "val")
    x = torch.stack([val[i]["x"] for i in range(len(val))])
    with torch.no_grad():
        recon = model(x, torch.stack([val[i]["region_mask"] for i in range(len(val))])).reconstruction
    truth = x.double().permute(0, 2, 1).reshape(-1, x.shape[1]).numpy()
    predicted = recon.double().permute(0, 2, 1).reshape(-1, x.shape[1]).numpy()
    expected = r2_score(truth, predicted, multioutput="raw_values")
    table = pd.read_csv(run / "region_r2.tsv", sep="\t")
    assert np.allclose(table["r2"], expected, atol=1e-6, equal_nan=True)


def test_text_run_artefacts_have_provenance(text_run):
    """Every file the text rules wrote, except the training's own state and logs, is listed with its
    sha256 in a sidecar beside it; the language model's sidecar names the aligned model it read."""
    _, results = text_run
    checked = 0
    for path in sorted((results / "text").rglob("*")):
        if not path.is_file() or path.suffix == ".json" or path.name in ("checkpoint.pt", "train_log.csv") \
                or "/tensorboard/" in path.as_posix():
            continue
        records = [json.loads(s.read_text())["Provenance"] for s in path.parent.glob("*.json")]
        listed = {o["path"].rsplit("/", 1)[-1]: o["sha256"] for r in records
                  for o in [r.get("Output", {}), *r.get("Outputs", [])] if o}
        assert listed.get(path.name) == hashlib.sha256(path.read_bytes()).hexdigest(), path
        checked += 1
    assert checked >= 10  # model.pt, metrics.csv, region_r2.tsv x 2; model.pt, metrics.csv, 4 answer/score tables
    lm_sidecar = (results / "text" / "lm-finetune_target-age" / "model.json").read_text()
    assert re.search(r"vq-align_aligned/model\.pt", lm_sidecar)
