"""BrainSymphony's probe rows: the stored embeddings against the model's modules computed here (the gate's
formula by hand), subjects without a connectome on the fMRI-only path, and the SC-only row equal to
scikit-learn's GridSearchCV on the subjects that have a connectome, on the baselines' folds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from fmriflow.datasets.regions import REGION_MASK, SAMPLES
from fmriflow.errors import InputError
from fmriflow.finetune.probe import fit_predict as probe_fit_predict
from fmriflow.finetune.run import features_step, setup_step
from fmriflow.finetune.settings import FinetuneSettings, TrainSettings
from fmriflow.finetune.symphony import features_step as symphony_features
from fmriflow.models.brainsymphony import create_brainsymphony
from fmriflow.sc.connectome import ConnectomeInfo, write_connectome
from test_finetune_probe import _gridsearch, _read

REGIONS, TRS, SUBJECTS, WINDOWS, FOLDS, SEED, PERMUTATIONS = 8, 40, 24, 2, 3, 4, 2
NO_SC = ("01", "06", "13", "20")  # subjects without a connectome: the fMRI-only path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """24 subjects of two windows, a structural effect in responders' first three regions, a random tiny model."""
    root = tmp_path_factory.mktemp("symphony_probe")
    rng = np.random.default_rng(3)
    labels = np.arange(SUBJECTS) % 2
    subject = np.repeat(np.arange(SUBJECTS), WINDOWS)
    names = [f"{i:02d}" for i in range(SUBJECTS)]
    regions = [f"r{i}" for i in range(REGIONS)]
    dataset = root / "dataset"
    dataset.mkdir()
    np.save(dataset / SAMPLES, rng.standard_normal((len(subject), REGIONS, TRS)).astype(np.float32))
    np.save(dataset / REGION_MASK, np.ones((len(subject), REGIONS), dtype=bool))
    pd.DataFrame({"sample": range(len(subject)), "run": [names[s] for s in subject], "subject": [names[s] for s in subject],
                  "split": "train", "start_tr": 0, "tr": 2.0}).to_csv(dataset / "index.tsv", sep="\t", index=False)
    pd.DataFrame({"region": regions}).to_csv(dataset / "scaling.tsv", sep="\t", index=False)
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in names], "response": labels}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    xyz = rng.uniform(-50, 50, (REGIONS, 3))
    pd.DataFrame({"index": range(1, REGIONS + 1), "name": regions, "x": xyz[:, 0], "y": xyz[:, 1],
                  "z": xyz[:, 2]}).to_csv(root / "atlas.tsv", sep="\t", index=False)
    for s, name in enumerate(names):
        if name in NO_SC:
            continue
        noise = rng.standard_normal((REGIONS, REGIONS))
        sc = (noise + noise.T) / 2 - 1.0
        sc[:3, :3] += 0.5 * labels[s]
        np.fill_diagonal(sc, 0.0)
        write_connectome(root / "sc" / f"sub-{name}_connectome.tsv", sc, regions, ConnectomeInfo("simulated", "test"),
                         inputs=[dataset / "index.tsv"])
    torch.manual_seed(0)
    model = create_brainsymphony("tiny", REGIONS, window=TRS)
    torch.save({"task": "brainsymphony", "model_config": dataclasses.asdict(model.config), "n_regions": REGIONS,
                "model": model.state_dict()}, root / "symphony.pt")
    from fmriflow.models.brainlm import BrainLM, BrainLMConfig

    config = BrainLMConfig(hidden=4, n_layers=1, n_heads=2, decoder_hidden=4, decoder_layers=1, decoder_heads=2,
                           max_timepoints=TRS)
    torch.save({"model": BrainLM(config, xyz.astype(np.float32)).state_dict(), "model_config": dataclasses.asdict(config)},
               root / "model.pt")
    features_step(str(dataset), str(root / "model.pt"), str(root / "atlas.tsv"), str(root / "features"), seed=SEED)
    symphony_features(str(root / "symphony.pt"), str(dataset), str(root / "symphony"), sc_dir=str(root / "sc"))
    settings = FinetuneSettings(target="response", folds=FOLDS, repeats=1, variants=(), baselines=(), probe=False,
                                permutations=PERMUTATIONS, attribution=False, seed=SEED, bootstrap=20,
                                train=TrainSettings(embed_dim=4, resnet_width=2, batch_size=4, max_epochs=1))
    setup_step("agnostic", str(dataset), str(root / "features"), str(root / "participants.tsv"), str(root / "model.pt"),
               str(root / "atlas.tsv"), str(root / "out"), settings, workers=1, symphony_dir=str(root / "symphony"),
               symphony_fusion="late")
    return root, model.eval(), labels, np.array(names), subject


def test_embeddings_follow_the_modules_and_the_gate_formula(cohort):
    root, model, _, names, subject = cohort
    stored = {k: np.load(root / "symphony" / f"{k}.npy") for k in ("fmri", "sc", "fused", "gate", "samples")}
    x = torch.from_numpy(np.load(root / "dataset" / SAMPLES))
    with torch.no_grad():
        f = model.functional.distil(*model.functional.streams(x)[:3]).mean(1).numpy()
    np.testing.assert_allclose(stored["fmri"], f, atol=1e-5)
    has = ~np.isin(names[subject], NO_SC)
    assert np.isnan(stored["sc"][~has]).all() and np.isnan(stored["gate"][~has]).all()
    np.testing.assert_array_equal(stored["fused"][~has], stored["fmri"][~has])  # the fMRI-only path
    # the gate by hand: g = sigmoid(W [f; s] + b), fused = g f + (1 - g) s
    w, b = (p.detach().numpy().astype(np.float64) for p in (model.gate.gate.weight, model.gate.gate.bias))
    fs = np.concatenate([stored["fmri"][has], stored["sc"][has]], axis=1).astype(np.float64)
    g = 1 / (1 + np.exp(-(fs @ w.T + b)))
    np.testing.assert_allclose(stored["fused"][has], g * stored["fmri"][has] + (1 - g) * stored["sc"][has], atol=1e-5)
    np.testing.assert_allclose(stored["gate"][has], g.mean(1), atol=1e-5)
    # one structural embedding per subject, whatever the window
    for s in set(names[subject][has]):
        rows = stored["sc"][names[subject] == s]
        np.testing.assert_array_equal(rows[0], rows[1])


def test_sc_row_equals_gridsearchcv_on_subjects_with_a_connectome(cohort):
    root, _, labels, names, subject = cohort
    preds = _read(root / "out" / "predictions.tsv")
    sc = np.load(root / "symphony" / "sc.npy").astype(np.float64)
    x = np.stack([sc[names[subject] == s].mean(0) for s in names])
    has = ~np.isin(names, NO_SC)
    for k, (train, test) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(names, labels)):
        train, test = train[has[train]], test[has[test]]
        ours = preds[(preds["variant"] == "probe_symphony_sc") & (preds["fold"] == k)].set_index("subject")
        assert sorted(ours.index) == sorted(names[test])  # the set-up's folds, less the subjects without SC
        if k == 0:  # the reference search is slow (tight tolerance): one fold
            expected, _ = _gridsearch(x[train], labels[train], x[test])
            np.testing.assert_allclose(ours.loc[names[test], "score"], expected, atol=1e-4)
    fused = preds[preds["variant"] == "probe_symphony_fused"]
    assert sorted(fused["subject"]) == sorted(names)  # every subject: the fused or the fMRI-only path


def test_rows_controls_cis_and_the_subject_table(cohort):
    root, *_ = cohort
    metrics = _read(root / "out" / "metrics.tsv").set_index("variant")
    for name, n in (("probe_symphony_fmri", SUBJECTS), ("probe_symphony_sc", SUBJECTS - len(NO_SC)),
                    ("probe_symphony_fused", SUBJECTS)):
        for row in (name, f"permuted_{name}"):
            assert metrics.loc[row, "n_subjects"] == n
            assert metrics.loc[row, "auroc_ci_low"] <= metrics.loc[row, "auroc_pooled"] <= metrics.loc[row, "auroc_ci_high"]
    preds = _read(root / "out" / "predictions.tsv")
    assert sorted(preds.loc[preds["variant"] == "permuted_probe_symphony_sc", "permutation"].unique()) == [0, 1]
    table = _read(root / "out" / "symphony_subjects.tsv").set_index("subject")
    assert sorted(table.index[~table["connectome"]]) == list(NO_SC)
    assert (table.loc[list(NO_SC), "path"] == "fmri only (no connectome)").all()
    assert table["gate_functional"].dropna().between(0, 1).all() and table["gate_functional"].notna().sum() == 20


def _network_blocks(tokens: np.ndarray, networks: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of centred tokens per pair of networks (upper triangle), in float64 numpy."""
    k = networks.max() + 1
    out = []
    for t in tokens.astype(np.float64):
        c = t - t.mean(0)
        unit = c / np.linalg.norm(c, axis=1, keepdims=True)
        sim = unit @ unit.T
        out.append([sim[np.ix_(networks == p, networks == q)].mean() for p in range(k) for q in range(p, k)])
    return np.array(out)


def test_network_readout_and_its_gated_fusion(cohort, tmp_path):
    """readout networks: each modality's token similarity per pair of networks (against numpy), fused =
    [g fMRI ; (1 - g) SC] with the gate's share g; without a connectome g = 1 (SC half zero)."""
    root, model, _, names, subject = cohort
    labels = np.array(["b", "a", "a", "c", "b", "c", "a", "b"])  # any labels; coded in sorted order
    table = tmp_path / "networks.tsv"
    pd.DataFrame({"name": [f"r{i}" for i in range(REGIONS)][::-1], "network": labels[::-1]}).to_csv(
        table, sep="\t", index=False)
    stored = symphony_features(str(root / "symphony.pt"), str(root / "dataset"), str(tmp_path / "out"),
                               sc_dir=str(root / "sc"), networks=str(table))
    codes = np.unique(labels, return_inverse=True)[1]
    x = torch.from_numpy(np.load(root / "dataset" / SAMPLES))
    has = ~np.isin(names[subject], NO_SC)
    sc = np.stack([pd.read_csv(next((root / "sc").glob(f"sub-{s}_*.tsv")), sep="\t").to_numpy(np.float32)
                   for s in names[subject][has]])
    with torch.no_grad():
        emb = model.embed(x[has], torch.from_numpy(sc))
        regions_all = model.embed(x).regions.numpy()
    fmri = _network_blocks(regions_all, codes)
    np.testing.assert_allclose(stored["fmri"], fmri, atol=1e-5)
    np.testing.assert_allclose(stored["sc"][has], _network_blocks(emb.nodes.numpy(), codes), atol=1e-5)
    assert np.isnan(stored["sc"][~has]).all()
    g = stored["gate"][has][:, None]
    np.testing.assert_allclose(stored["fused"][has], np.concatenate([g * fmri[has], (1 - g) * stored["sc"][has]], 1),
                               atol=1e-5)
    np.testing.assert_allclose(stored["fused"][~has], np.concatenate([fmri[~has], 0 * fmri[~has]], 1), atol=1e-5)
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"name": ["r0"], "network": ["a"]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match="no network for dataset region"):
        symphony_features(str(root / "symphony.pt"), str(root / "dataset"), str(tmp_path / "bad"),
                          sc_dir=str(root / "sc"), networks=str(bad))


def test_fused_row_is_the_inner_cv_weighted_mean_of_the_unimodal_rows(cohort):
    """brainsymphony.fusion late: per fold, fused = w fMRI row + (1 - w) SC row with the w its
    log records (the fMRI row alone without a connectome); the permuted control is refitted the same way."""
    root, *_ = cohort
    preds = _read(root / "out" / "predictions.tsv").set_index(["variant", "fold", "subject"])["score"]
    log = _read(root / "out" / "training_log.tsv")
    for k in range(FOLDS):
        w = log[(log["variant"] == "probe_symphony_fused") & (log["fold"] == k)]["w_fmri"].item()
        assert w in np.round(np.linspace(0, 1, 11), 1)
        fused, fmri = preds.loc[("probe_symphony_fused", k)], preds.loc[("probe_symphony_fmri", k)]
        sc = preds.loc[("probe_symphony_sc", k)].reindex(fused.index)
        expected = np.where(sc.notna(), w * fmri.loc[fused.index] + (1 - w) * sc, fmri.loc[fused.index])
        np.testing.assert_allclose(fused, expected, atol=1e-12)
    controls = log[log["variant"] == "permuted_probe_symphony_fused"]
    assert len(controls) == FOLDS * PERMUTATIONS and controls["probe"].eq("late fusion").all()


def test_mean_fusion_averages_the_two_unimodal_probes(cohort, tmp_path):
    """brainsymphony.fusion mean (the default): per fold, fused = (fMRI probe + SC probe) / 2, each probe refitted
    here on the subject-mean embeddings (the fMRI probe alone for a subject without a connectome); no inner CV."""
    root, _, labels, names, subject = cohort
    settings = FinetuneSettings(target="response", folds=FOLDS, repeats=1, variants=(), baselines=(), probe=False,
                                permutations=1, attribution=False, seed=SEED, bootstrap=20)
    setup_step("agnostic", str(root / "dataset"), str(root / "features"), str(root / "participants.tsv"),
               str(root / "model.pt"), str(root / "atlas.tsv"), str(tmp_path / "mean"), settings,
               symphony_dir=str(root / "symphony"))  # the default fusion
    preds = _read(tmp_path / "mean" / "predictions.tsv")
    log = _read(tmp_path / "mean" / "training_log.tsv")
    means = {k: np.load(root / "symphony" / f"{k}.npy").astype(np.float64) for k in ("fmri", "sc")}
    fmri = {s: means["fmri"][names[subject] == s].mean(0) for s in names}
    sc = {s: means["sc"][names[subject] == s].mean(0) for s in names if s not in NO_SC}
    y = pd.Series(labels, index=names)
    for k, (train, test) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(names, labels)):
        train, test = list(names[train]), list(names[test])
        p_f, _ = probe_fit_predict("classification", fmri, y, train, test, SEED)
        with_sc = [s for s in test if s in sc]
        p_s, _ = probe_fit_predict("classification", sc, y, [s for s in train if s in sc], with_sc, SEED)
        expected = pd.Series(p_f, index=test)
        expected[with_sc] = (expected[with_sc] + p_s) / 2
        ours = preds[(preds["variant"] == "probe_symphony_fused") & (preds["fold"] == k)].set_index("subject")
        np.testing.assert_allclose(ours.loc[test, "score"], expected[test], atol=1e-12)
    fused_log = log[log["variant"].isin(["probe_symphony_fused", "permuted_probe_symphony_fused"])]
    assert len(fused_log) == 2 * FOLDS and fused_log["probe"].eq("mean fusion").all()
    assert fused_log["w_fmri"].eq(0.5).all() and fused_log["inner_auroc"].isna().all()


def test_early_fusion_is_one_probe_on_the_fused_features(cohort, tmp_path):
    root, _, labels, names, subject = cohort
    settings = FinetuneSettings(target="response", folds=FOLDS, repeats=1, variants=(), baselines=(), probe=False,
                                permuted_control=False, attribution=False, seed=SEED, bootstrap=20)
    args = ("agnostic", str(root / "dataset"), str(root / "features"), str(root / "participants.tsv"),
            str(root / "model.pt"), str(root / "atlas.tsv"), str(tmp_path / "early"), settings)
    setup_step(*args, symphony_dir=str(root / "symphony"), symphony_fusion="early")
    preds = _read(tmp_path / "early" / "predictions.tsv")
    fused = np.load(root / "symphony" / "fused.npy").astype(np.float64)
    x = np.stack([fused[names[subject] == s].mean(0) for s in names])
    # the dispatch is what is checked here: the frozen probe itself is checked against GridSearchCV in
    # test_finetune_probe (on this fixture's fused features scikit-learn's refit differs by up to 0.07 at fold 0)
    embeddings = dict(zip(names, x))
    for k, (train, test) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(names, labels)):
        ours = preds[(preds["variant"] == "probe_symphony_fused") & (preds["fold"] == k)].set_index("subject")
        expected, _ = probe_fit_predict("classification", embeddings, pd.Series(labels, index=names),
                                        list(names[train]), list(names[test]), SEED)
        np.testing.assert_allclose(ours.loc[names[test], "score"], expected, atol=1e-12)
    with pytest.raises(InputError, match="brainsymphony.fusion"):
        setup_step(*args, symphony_dir=str(root / "symphony"), symphony_fusion="middle")
