"""Fine-tuning protocol pieces: metrics against closed forms, subject folds, baselines, IG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow import baselines, evaluation
from fmriflow.errors import InputError
from fmriflow.finetune import cohort as cohorts
from fmriflow.finetune.attribution import integrated_gradients


def test_classification_metrics_match_the_confusion_matrix_formulas():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.6, 0.1, 0.7, 0.2, 0.3, 0.05, 0.45])
    tp, fn, fp, tn = 3, 1, 1, 5
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    # AUROC = P(score of a positive > score of a negative), counted over all 24 pairs
    auroc = np.mean([p > n for p in s[y == 1] for n in s[y == 0]])
    m = evaluation.compute("classification", y, s)
    assert m["mcc"] == pytest.approx(mcc)
    assert m["auroc"] == pytest.approx(auroc)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_regression_metrics_closed_form():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    s = np.array([1.5, 1.5, 3.5, 3.0])
    m = evaluation.compute("regression", y, s)
    assert m["mse"] == pytest.approx(np.mean([0.25, 0.25, 0.25, 1.0]))
    assert m["mae"] == pytest.approx(np.mean([0.5, 0.5, 0.5, 1.0]))
    dy, ds = y - y.mean(), s - s.mean()
    assert m["pearson_r"] == pytest.approx((dy @ ds) / np.sqrt((dy @ dy) * (ds @ ds)))


def test_summary_has_fold_mean_and_a_ci_around_the_pooled_value():
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(4):
        y = np.repeat([0, 1], 10)
        rows.append(pd.DataFrame({"setup": "agnostic", "variant": "m", "repeat": 0, "fold": fold,
                                  "subject": [f"{fold}-{i}" for i in range(20)], "label": y,
                                  "score": np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 20), 0, 1)}))
    preds = pd.concat(rows)
    table = evaluation.summarise(preds, "classification", n_boot=200)
    row = table.iloc[0]
    folds = [evaluation.compute("classification", f.label, f.score)["mcc"] for _, f in preds.groupby("fold")]
    assert row["mcc_mean"] == pytest.approx(np.mean(folds))
    assert row["mcc_sd"] == pytest.approx(np.std(folds, ddof=1))
    assert row["mcc_ci_low"] <= row["mcc_pooled"] <= row["mcc_ci_high"]
    assert row["n_subjects"] == 80


def test_summary_treats_each_permutation_of_a_fold_as_its_own_fold():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 5)
    preds = pd.DataFrame([{"setup": "s", "variant": "permuted_m", "repeat": 0, "permutation": k, "fold": f,
                           "subject": f"{f}-{i}", "label": y[i], "score": rng.random()}
                          for k in range(3) for f in range(2) for i in range(10)])
    row = evaluation.summarise(preds, "classification", n_boot=50).iloc[0]
    assert row["n_folds"] == 6 and row["n_subjects"] == 20
    folds = [matthews_corrcoef(g.label, g.score > 0.5) for _, g in preds.groupby(["permutation", "fold"])]
    assert row["mcc_mean"] == pytest.approx(np.mean(folds))
    assert row["mcc_pooled"] == pytest.approx(matthews_corrcoef(preds.label, preds.score > 0.5))


def _participants(tmp_path, n=20, missing=()):
    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)],
                          "response": [i % 2 for i in range(n)],
                          "drug": ["A" if i < n // 2 else "B" for i in range(n)],
                          "site": ["s1" if i % 4 < 2 else "s2" for i in range(n)]}).astype({"response": object})
    for i in missing:
        table.loc[i, "response"] = "n/a"
    path = tmp_path / "participants.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_folds_split_subjects_disjointly_and_stratified(tmp_path):
    cohort = cohorts.load_cohort(_participants(tmp_path), "response")
    assert cohort.task == "classification"
    assert cohorts.setup_names(cohort, "drug", "site") == ["agnostic", "drug-A", "drug-B", "site-s1", "site-s2"]
    plan = cohorts.folds(cohort, "agnostic", 5, seed=0)
    tests = [s for _, test in plan for s in test]
    assert sorted(tests) == sorted(cohort.labels.index)  # every subject tested exactly once
    for train, test in plan:
        assert not set(train) & set(test)
        assert cohort.labels.loc[test].sum() == 2  # 2 responders of 4 in each fold
    drug = cohorts.folds(cohort, "drug-A", 5, seed=0, drug_column="drug")
    assert {s for tr, te in drug for s in tr + te} == set(cohort.table.index[cohort.table.drug == "A"])
    (train, test), = cohorts.folds(cohort, "site-s2", 5, seed=0, site_column="site")
    assert set(cohort.table.loc[test, "site"]) == {"s2"} and set(cohort.table.loc[train, "site"]) == {"s1"}
    fit, val = cohorts.inner_split(cohort, train, 0.2, seed=0)
    assert not set(fit) & set(val) and sorted(fit + val) == train


def test_missing_labels_are_an_error_naming_the_file_or_dropped_on_request(tmp_path):
    path = _participants(tmp_path, missing=(3, 7))
    with pytest.raises(InputError, match=r"participants\.tsv.*'response' has no label for subjects \['03', '07'\]"):
        cohorts.load_cohort(path, "response")
    cohort = cohorts.load_cohort(path, "response", missing_labels="drop")
    assert cohort.dropped == ("03", "07") and len(cohort.labels) == 18


def test_logistic_baseline_finds_a_distributed_edge_effect_and_permuted_labels_do_not():
    rng = np.random.default_rng(0)
    n, r = 40, 30
    y = np.repeat([0, 1], n // 2)
    fc = rng.normal(0, 0.1, (n, r, r))
    rows, cols = np.triu_indices(r, k=1)
    planted = rng.choice(len(rows), 40, replace=False)  # 40 edges among 435 (L2: effects spread over edges)
    fc[:, rows[planted], cols[planted]] += 0.2 * y[:, None]  # +0.1 after symmetrising, 1.4 noise sd
    fc = (fc + fc.transpose(0, 2, 1)) / 2
    x = baselines.upper_triangle(fc)
    assert x.shape == (n, r * (r - 1) // 2)
    order = rng.permutation(n)
    train, test = order[:30], order[30:]
    scores, chosen = baselines.fit_predict("logistic", "classification", x[train], y[train], x[test])
    assert evaluation.compute("classification", y[test], scores)["auroc"] > 0.9
    assert set(chosen) == {"C", "penalty_edge", "inner_auroc"}
    perm = rng.permutation(y[train])
    scores, _ = baselines.fit_predict("ridge", "classification", x[train], perm, x[test])
    assert ((scores >= 0) & (scores <= 1)).all()


class _Linear(torch.nn.Module):
    """f(t, c) = sum(w_t * t) + sum(w_c * c): IG is exactly w * x (baseline 0)."""

    def __init__(self, wt, wc):
        super().__init__()
        self.wt, self.wc = wt, wc

    def forward(self, t, c):
        return ((t * self.wt).sum(dim=(1, 2)) + (c * self.wc).sum(dim=(1, 2)))[:, None]


def test_integrated_gradients_per_region_against_the_closed_form():
    g = torch.Generator().manual_seed(0)
    wt, wc = torch.randn(5, 8, generator=g), torch.randn(5, 5, generator=g)
    ts, fc = np.random.default_rng(1).normal(size=(3, 5, 8)), np.random.default_rng(2).normal(size=(3, 5, 5))
    a_ts, a_fc = integrated_gradients(_Linear(wt, wc), ts, fc, n_steps=8, batch_size=2)
    exact_ts = np.abs(wt.numpy() * ts).sum(axis=2)
    exact_fc = np.abs(wc.numpy() * fc)
    np.testing.assert_allclose(a_ts, exact_ts, rtol=1e-4)
    np.testing.assert_allclose(a_fc, (exact_fc.sum(axis=2) + exact_fc.sum(axis=1)) / 2, rtol=1e-4)


def test_planted_attribution_auc_matches_roc_auc_of_the_ranking():
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from fmriflow.finetune.summary import planted_attribution

    rng = np.random.default_rng(0)
    planted = rng.random(40) < 0.25
    total = rng.gamma(2.0, size=40) + 1.5 * planted  # planted regions get more, with overlap
    regions = pd.DataFrame({"region": np.arange(1, 41)[::-1], "total": total[::-1]})  # any row order
    truth = pd.DataFrame({"index": np.arange(1, 41), "planted": planted})
    out = planted_attribution(regions, truth)
    assert out["auc"] == pytest.approx(roc_auc_score(planted, total))
    assert out["n_planted"] == planted.sum() and out["region_share"] == pytest.approx(planted.mean())
    assert out["attribution_share"] == pytest.approx(total[planted].sum() / total.sum())
    assert out["p_value"] < 0.01
    with pytest.raises(ValueError, match="no row for regions"):
        planted_attribution(regions, truth.iloc[:30])


def test_settings_defaults_are_the_schema_defaults():
    from pathlib import Path

    import yaml

    from fmriflow.finetune.settings import FinetuneSettings

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml")
                            .read_text())
    section = schema["properties"]["finetune"]["properties"]
    # place the job, or choose the encoder and how its windows are prepared (inputs of the job); not settings
    sizing = {"enabled", "setups", "gpus", "workers", "mem_mb", "runtime", "encoder", "scaling"}
    defaults = FinetuneSettings().as_config()
    assert set(defaults) == set(section) - sizing
    assert defaults == {k: tuple(v["default"]) if isinstance(v["default"], list) else v["default"]
                        for k, v in section.items() if k not in sizing}


def test_settings_from_a_config_section_record_the_section_as_given():
    from fmriflow.finetune.settings import FinetuneSettings, TrainSettings

    section = {"variants": ["ts_only", "concat"], "lr": 0.5, "device": "cuda", "seed": 7, "gpus": 1}
    settings = FinetuneSettings.from_config(section)
    assert settings.variants == ("ts_only", "concat") and settings.seed == 7
    assert settings.train == TrainSettings(lr=0.5, device="cuda")
    assert settings.folds == FinetuneSettings().folds  # a key the section lacks: the schema's default
    assert settings.provenance() == section  # the sidecars' Config, unknown keys included
    assert FinetuneSettings(seed=7).provenance()["seed"] == 7
