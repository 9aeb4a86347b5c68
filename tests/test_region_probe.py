"""Region-level read-outs of BrainSymphony (fmriflow.finetune.region_probe): network identification
cross-validated by region (against scikit-learn's own cross-validation, separable and random
embeddings), incoming attention per region and network, and reconstruction R^2 per region
(against sklearn.metrics.r2_score on the hidden entries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmriflow.finetune.region_probe import (incoming_attention_table, network_identification, reconstruction_r2,
                                            region_embeddings)
from fmriflow.models.brainsymphony import create_brainsymphony

pytestmark = pytest.mark.usefixtures("torch_one_thread")

R, T = 10, 40


def _labels(n: int = 70, k: int = 7) -> np.ndarray:
    return np.arange(n) % k


def test_network_identification_separable_and_random():
    rng = np.random.default_rng(0)
    labels = _labels()
    centres = 5 * rng.standard_normal((7, 16))
    separable = centres[labels] + 0.1 * rng.standard_normal((70, 16))
    metrics, table = network_identification(separable, labels, n_folds=5, seed=0)
    assert metrics["accuracy"] == 1.0 and metrics["chance"] == pytest.approx(1 / 7)
    assert sorted(table["fold"].unique()) == list(range(5)) and len(table) == 70  # each region tested once
    noise = rng.standard_normal((70, 16))
    metrics, _ = network_identification(noise, labels, n_folds=5, seed=0)
    assert metrics["accuracy"] < 0.45


def test_network_identification_matches_sklearn_cross_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    labels = _labels()
    emb = rng.standard_normal((7, 8))[labels] + rng.standard_normal((70, 8))
    metrics, table = network_identification(emb, labels, n_folds=5, seed=3)
    expected = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), emb, labels,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=3))
    np.testing.assert_array_equal(table["predicted"], expected)
    assert metrics["accuracy"] == pytest.approx(np.mean(expected == labels))


def test_region_embeddings_and_incoming_attention():
    torch.manual_seed(0)
    model = create_brainsymphony("tiny", R, modalities="both")
    x = np.random.default_rng(0).standard_normal((5, R, T)).astype(np.float32)
    sc = np.random.default_rng(1).standard_normal((5, R, R)).astype(np.float32)
    sc = (sc + sc.transpose(0, 2, 1)) / 2
    emb = region_embeddings(model, x, batch_size=2)
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(x)).regions.mean(0).numpy()
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    assert region_embeddings(model, sc=sc).shape == (R, 32)
    networks = np.arange(R) % 3
    regions, by_network = incoming_attention_table(model, x, networks, [f"r{i}" for i in range(R)], batch_size=2)
    with torch.no_grad():
        maps = model.spatial_attention(torch.from_numpy(x))  # (B, layers, heads, R, R)
    np.testing.assert_allclose(regions["incoming_attention"], maps.mean(dim=(0, 1, 2, 3)).numpy(), atol=1e-6)
    assert regions["incoming_attention"].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(by_network["incoming_attention"],
                               [regions["incoming_attention"][networks == k].mean() for k in range(3)])


def test_reconstruction_r2_per_region():
    from sklearn.metrics import r2_score

    torch.manual_seed(0)
    model = create_brainsymphony("tiny", R, modalities="fmri", spatial_mask_ratio=0.3)
    x = np.random.default_rng(2).standard_normal((6, R, T)).astype(np.float32)
    r2 = reconstruction_r2(model, x, seed=4, batch_size=6)
    with torch.no_grad():
        out = model(torch.from_numpy(x), generator=torch.Generator().manual_seed(4))
    hidden, pred = out.entry_mask.numpy(), out.pred_x.numpy()
    for r in range(R):
        assert r2[r] == pytest.approx(r2_score(x[:, r][hidden[:, r]], pred[:, r][hidden[:, r]]), rel=1e-4, abs=1e-6)
