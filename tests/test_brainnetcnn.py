"""BrainNetCNN: shapes, parameter count against the closed form, the E2E filter against a loop,
and a planted FC edge effect learnt through the fine-tuning trainer (permuted labels: chance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmriflow import evaluation
from fmriflow.finetune.settings import TrainSettings
from fmriflow.finetune.trainer import build, fit, predict
from fmriflow.models.brainnetcnn import BrainNetCNN, BrainNetCNNConfig, EdgeToEdge


def test_shapes():
    torch.manual_seed(0)
    config = BrainNetCNNConfig(e2e=(4, 6), e2n=8, n2g=16, hidden=(12, 5), n_outputs=3)
    model = BrainNetCNN(10, config).eval()
    fc = torch.randn(7, 10, 10)
    assert EdgeToEdge(1, 4, 10)(fc.unsqueeze(1)).shape == (7, 4, 10, 10)
    assert model.forward_features(fc).shape == (7, 16)
    assert model(fc).shape == (7, 3)


@pytest.mark.parametrize("regions, config", [(200, BrainNetCNNConfig()),
                                             (9, BrainNetCNNConfig(e2e=(3,), e2n=5, n2g=7, hidden=(), n_outputs=2))])
def test_parameter_count_matches_the_closed_form(regions, config):
    r = regions
    e2e_in = (1, *config.e2e[:-1])
    # E2E a -> b: a row and a column filter of a*b*R weights each, one bias per output channel
    expected = sum(2 * a * b * r + b for a, b in zip(e2e_in, config.e2e))
    expected += config.e2e[-1] * config.e2n * r + config.e2n  # E2N: 1 x R filters
    expected += config.e2n * config.n2g * r + config.n2g  # N2G: R x 1 filters
    widths = (config.n2g, *config.hidden, config.n_outputs)
    expected += sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    assert sum(p.numel() for p in BrainNetCNN(r, config).parameters()) == expected
    if regions == 200:  # the paper's sizes on a 200-region atlas
        assert expected == 2 * 32 * 200 + 32 + 2 * 32 * 32 * 200 + 32 + 32 * 64 * 200 + 64 \
            + 64 * 256 * 200 + 256 + 256 * 128 + 128 + 128 * 30 + 30 + 30 + 1


def test_edge_to_edge_matches_a_loop_over_the_cross_shaped_filter():
    torch.manual_seed(1)
    c_in, c_out, r = 2, 3, 5
    layer = EdgeToEdge(c_in, c_out, r)
    a = torch.randn(2, c_in, r, r)
    with torch.no_grad():
        out = layer(a).numpy()
    rows = layer.row.weight.detach().numpy()[:, :, 0, :]  # (O, C, R): weight of A[c, i, k]
    cols = layer.col.weight.detach().numpy()[:, :, :, 0]  # (O, C, R): weight of A[c, k, j]
    bias = layer.row.bias.detach().numpy()
    x = a.numpy()
    expected = np.zeros((2, c_out, r, r))
    for b in range(2):
        for o in range(c_out):
            for i in range(r):
                for j in range(r):
                    total = bias[o]
                    for c in range(c_in):
                        for k in range(r):
                            total += rows[o, c, k] * x[b, c, i, k] + cols[o, c, k] * x[b, c, k, j]
                    expected[b, o, i, j] = total
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _planted(n: int, regions: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric noise FC; group 1 has two edges of one region raised by 2.5 noise sd."""
    y = np.tile([0.0, 1.0], n // 2)
    fc = rng.normal(0, 0.2, (n, regions, regions))
    fc = (fc + fc.transpose(0, 2, 1)) / np.sqrt(2)
    for i, j in ((3, 11), (3, 5)):
        fc[:, i, j] += 0.5 * y
        fc[:, j, i] = fc[:, i, j]
    fc[:, np.arange(regions), np.arange(regions)] = 0
    return fc.astype(np.float32), y


def test_learns_a_planted_edge_effect_and_not_permuted_labels():
    rng = np.random.default_rng(0)
    regions, n_fit, n_val, n_test = 16, 160, 40, 100
    fc, y = _planted(n_fit + n_val + n_test, regions, rng)
    ts = np.zeros((len(y), 4), np.float32)  # ignored by the FC-only variant
    fit_rows, val_rows = np.arange(n_fit), np.arange(n_fit, n_fit + n_val)
    test_rows = np.arange(n_fit + n_val, len(y))
    settings = TrainSettings(batch_size=16, max_epochs=30, min_epochs=10, patience=10, lr=1e-3)
    assert isinstance(build("brainnetcnn", 4, settings, n_regions=regions).net, BrainNetCNN)
    auroc = {}
    for control, labels in (("real", y), ("permuted", y.copy())):
        if control == "permuted":
            labels[:n_fit + n_val] = rng.permutation(labels[:n_fit + n_val])
        model, target, info = fit("brainnetcnn", "classification", ts, fc, labels, fit_rows, val_rows, settings, seed=0)
        scores = predict(model, target, ts, fc, test_rows, settings)
        auroc[control] = evaluation.compute("classification", y[test_rows], scores)["auroc"]
    assert auroc["real"] > 0.9, auroc
    assert abs(auroc["permuted"] - 0.5) < 0.2, auroc


def test_a_fold_runs_brainnetcnn_beside_the_baselines_into_one_table():
    import pandas as pd

    from fmriflow.finetune import cohort as cohorts
    from fmriflow.finetune import crossval
    from fmriflow.finetune.settings import FinetuneSettings

    rng = np.random.default_rng(1)
    regions, n_subjects, windows = 12, 24, 2
    subjects = [f"{i:02d}" for i in range(n_subjects)]
    labels = pd.Series(np.tile([0.0, 1.0], n_subjects // 2), index=subjects)
    fc, _ = _planted(n_subjects * windows, regions, rng)  # a plumbing test: rows 2i, 2i+1 are subject i's windows
    y = np.repeat(labels.to_numpy(), windows)
    rows_of = {s: np.arange(i * windows, (i + 1) * windows) for i, s in enumerate(subjects)}
    cohort = cohorts.Cohort(labels, "classification", pd.DataFrame(index=subjects), ())
    ts = np.zeros((len(y), 4), np.float32)
    subject_ts = {s: np.zeros(4) for s in subjects}  # constant embeddings: the probes predict the training mean
    inputs = crossval.Inputs(cohort, np.arange(len(y)), rows_of, fc, {"pretrained": ts, "random": ts}, y,
                             {s: fc[r].mean(axis=0) for s, r in rows_of.items()},
                             {"pretrained": subject_ts, "random": subject_ts})
    settings = FinetuneSettings(variants=("brainnetcnn",), permutations=2, bootstrap=10,
                                train=TrainSettings(batch_size=8, max_epochs=2, patience=2))
    fold = crossval.make_fold(inputs, "agnostic", 0, 0, 0, subjects[:18], subjects[18:], 0.2)
    results = crossval.Results(cohort)
    crossval.run_fold(fold, inputs, settings, results, attribute=None)
    tables = results.tables(settings)
    assert set(tables["metrics.tsv"]["variant"]) == {"brainnetcnn", "logistic", "ridge", "permuted_logistic", "probe",
                                                     "probe_random"}
    probe = tables["predictions.tsv"].query("variant == 'probe'")["score"]
    assert np.allclose(probe, 0.5)  # the training mean of 9 subjects of each class
    assert (tables["predictions.tsv"].groupby("variant")["subject"].nunique() == 6).all()
    log = tables["training_log.tsv"].set_index("variant")
    assert {"best_epoch", "C", "alpha", "penalty_edge", "inner_auroc"} <= set(log.columns)
    assert np.isfinite(log.loc["logistic", "C"]) and np.isfinite(log.loc["ridge", "alpha"])
