"""Fine-tuning over worker processes: the same tables for any number of workers, every unit once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.datasets.regions import REGION_MASK, SAMPLES
from fmriflow.finetune import crossval
from fmriflow.finetune.run import features_step, setup_step
from fmriflow.finetune.settings import FinetuneSettings, TrainSettings
from fmriflow.models.brainlm import BrainLM, BrainLMConfig

REGIONS, TRS, SUBJECTS = 12, 40, 10


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small labelled cohort: dataset folder, features, participants, atlas table, encoder."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    labels = np.arange(SUBJECTS) % 2
    windows = rng.standard_normal((SUBJECTS, REGIONS, TRS)).astype(np.float32)
    windows[labels == 1, :3] += rng.standard_normal((int(labels.sum()), 1, TRS)).astype(np.float32)
    dataset = root / "dataset"
    dataset.mkdir()
    np.save(dataset / SAMPLES, windows)
    np.save(dataset / REGION_MASK, np.ones((SUBJECTS, REGIONS), dtype=bool))
    subjects = [f"{i:02d}" for i in range(SUBJECTS)]
    pd.DataFrame({"sample": range(SUBJECTS), "run": subjects, "subject": subjects, "split": "train",
                  "start_tr": 0, "tr": 2.0}).to_csv(dataset / "index.tsv", sep="\t", index=False)
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "response": labels,
                  "site": ["a", "b"] * (SUBJECTS // 2)}).to_csv(root / "participants.tsv", sep="\t", index=False)
    xyz = rng.uniform(-50, 50, (REGIONS, 3)).astype(np.float32)
    pd.DataFrame({"index": range(1, REGIONS + 1), "name": [f"r{i}" for i in range(REGIONS)], "x": xyz[:, 0],
                  "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(root / "atlas.tsv", sep="\t", index=False)
    config = BrainLMConfig(hidden=8, n_layers=1, n_heads=2, decoder_hidden=8, decoder_layers=1, decoder_heads=2,
                           max_timepoints=TRS)
    torch.manual_seed(0)
    torch.save({"model": BrainLM(config, xyz).state_dict(), "model_config": dataclasses.asdict(config)},
               root / "model.pt")
    features_step(str(dataset), str(root / "model.pt"), str(root / "atlas.tsv"), str(root / "features"))
    return root


def _settings(**extra) -> FinetuneSettings:
    train = TrainSettings(embed_dim=8, resnet_width=2, batch_size=2, max_epochs=3, min_epochs=2, patience=1)
    values = dict(target="response", site_column="site", folds=3, repeats=2, permutations=2, ig_steps=2, bootstrap=10)
    return FinetuneSettings(**{**values, **extra}, train=train)


def _run(root, out, workers, settings, setup="agnostic"):
    setup_step(setup, str(root / "dataset"), str(root / "features"), str(root / "participants.tsv"),
               str(root / "model.pt"), str(root / "atlas.tsv"), str(out), settings, workers=workers)
    return {f.name: f.read_bytes() for f in sorted(out.glob("*.tsv"))}


@pytest.mark.parametrize("staged", [False, True])
def test_tables_are_identical_for_one_and_for_several_workers(cohort, tmp_path, staged):
    settings = _settings(staged_fusion=staged)
    one = _run(cohort, tmp_path / "one", 1, settings)
    three = _run(cohort, tmp_path / "three", 3, settings)
    assert set(one) == {"predictions.tsv", "metrics.tsv", "folds.tsv", "training_log.tsv",
                        "attribution_modality.tsv", "attribution_regions.tsv"}
    assert one == three
    # every variant, baseline and permutation once per repeat, every subject tested once each time
    preds = pd.read_csv(tmp_path / "one" / "predictions.tsv", sep="\t", dtype={"subject": str})
    expected = {(v, 0) for v in (*settings.variants, *settings.baselines, "probe", "probe_random")}
    expected |= {(f"{crossval.PERMUTED}{v}", k) for v in ("concat", "logistic") for k in range(2)}
    assert set(map(tuple, preds[["variant", "permutation"]].drop_duplicates().to_numpy())) == expected
    assert (preds.groupby(["variant", "permutation", "repeat"]).subject.nunique() == SUBJECTS).all()
    assert not preds.duplicated(["variant", "permutation", "repeat", "subject"]).any()


def test_the_pool_records_what_the_serial_fold_loop_records(cohort, tmp_path):
    """run_fold (one fold, in order, in this process) and the pool give the same predictions."""
    settings = _settings(repeats=1, attribution=False)
    _run(cohort, tmp_path / "pool", 2, settings)
    pooled = pd.read_csv(tmp_path / "pool" / "predictions.tsv", sep="\t", dtype={"subject": str})
    inputs = crossval.load_inputs(str(cohort / "dataset"), str(cohort / "features"),
                                  str(cohort / "participants.tsv"), settings)
    from fmriflow.finetune import cohort as cohorts

    results = crossval.Results(inputs.cohort)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for index, (train, test) in enumerate(cohorts.folds(inputs.cohort, "agnostic", 3, 0)):
            fold = crossval.make_fold(inputs, "agnostic", 0, index, 0, train, test, settings.val_fraction)
            crossval.run_fold(fold, inputs, settings, results, None)
    finally:
        torch.set_num_threads(before)
    serial = pd.concat(results.preds, ignore_index=True)
    pd.testing.assert_frame_equal(pooled[["variant", "permutation", "fold", "subject", "score"]],
                                  serial[["variant", "permutation", "fold", "subject", "score"]], check_exact=False,
                                  rtol=1e-8, atol=0)  # as written: 9 significant digits


def test_a_failing_unit_fails_the_set_up_naming_its_error(cohort, tmp_path, monkeypatch):
    settings = _settings(repeats=1, attribution=False)

    def broken(*args, **kwargs):
        raise RuntimeError("unit broke")

    monkeypatch.setattr(crossval, "_baselines", broken)  # inherited by the forked workers
    with pytest.raises(RuntimeError, match="unit broke"):
        _run(cohort, tmp_path / "broken", 2, settings)
    assert not (tmp_path / "broken" / "predictions.tsv").exists()
