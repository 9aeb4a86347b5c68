"""The vq-align and lm-finetune training tasks on the CPU (fmriflow.training.text_tasks): the logged
metrics against an independent computation, exact resume, the language model's scored answers.
Skips without the text extra (tokenizers, transformers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("tokenizers", reason='needs the text extra: pip install ".[text]"')
pytest.importorskip("transformers", reason='needs the text extra: pip install ".[text]"')

from fmriflow.datasets.regions import RegionWindowDataset, build_dataset, make_splits  # noqa: E402
from fmriflow.errors import InputError  # noqa: E402
from fmriflow.training.config import TrainConfig  # noqa: E402
from fmriflow.training.loop import train  # noqa: E402
from fmriflow.training.text_tasks import load_vq_align  # noqa: E402

N_REGIONS, N_TIME, N_SUBJECTS = 12, 200, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 subjects whose regions mix 2 AR(1) sources, and a participants.tsv with age and sex."""
    root = tmp_path_factory.mktemp("vqalign")
    rng = np.random.default_rng(0)
    loading = rng.normal(size=(2, N_REGIONS))
    runs = []
    for s in range(N_SUBJECTS):
        src = np.zeros((N_TIME, 2))
        for t in range(1, N_TIME):
            src[t] = 0.8 * src[t - 1] + 0.6 * rng.standard_normal(2)
        path = root / f"sub-{s:02d}_timeseries.tsv"
        values = src @ loading + 0.2 * rng.standard_normal((N_TIME, N_REGIONS))
        pd.DataFrame(values, columns=[f"r{i}" for i in range(N_REGIONS)]).to_csv(path, sep="\t", index=False)
        runs.append({"run": f"sub-{s:02d}/func/sub-{s:02d}_task-rest", "subject": f"{s:02d}", "tr": 2.0, "timeseries": path})
    splits = make_splits([r["subject"] for r in runs], fractions=(0.6, 0.2, 0.2), seed=0)
    build_dataset(runs, splits, root / "dataset", window=40, stride=20)
    participants = root / "participants.tsv"
    pd.DataFrame({"participant_id": [f"sub-{s:02d}" for s in range(N_SUBJECTS)],
                  "age": rng.integers(20, 66, N_SUBJECTS), "sex": rng.choice(["F", "M"], N_SUBJECTS)}
                 ).to_csv(participants, sep="\t", index=False)
    return root / "dataset", participants


def config(data, out, **overrides) -> TrainConfig:
    dataset, participants = data
    base = dict(dataset=str(dataset), participants=str(participants), out=str(out), task="vq-align", model="tiny",
                text_template="sex: {sex}; age: {age}", batch_size=8, max_steps=20, warmup_steps=3,
                checkpoint_every=5, eval_every=10, log_every=5, num_workers=0, lr=3e-3, restart_every=4)
    return TrainConfig(**{**base, **overrides})


def test_vq_align_logs_metrics_and_region_r2_matches_sklearn(data, tmp_path):
    from sklearn.metrics import r2_score

    train(config(data, tmp_path))
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["val_loss"]).set_index("step")
    assert list(log.index) == [0, 10, 20]
    from fmriflow.models.vqalign import CONFIGS

    # perplexity lies between 1 (one code) and the codebook size (every code equally used)
    assert log["disc_acc"].between(0, 1).all() and log["perplexity"].between(1, CONFIGS["tiny"].n_codes).all()
    assert log.loc[0, "reversal_weight"] == 0 and 0 < log.loc[20, "reversal_weight"] <= 1
    # per-region R^2 of the final model on the validation windows, by scikit-learn
    model, _ = load_vq_align(str(tmp_path / "model.pt"))
    val = RegionWindowDataset(data[0], "val")
    x = torch.stack([val[i]["x"] for i in range(len(val))])
    with torch.no_grad():
        recon = model(x, text_ids=model.text_ids[:1]).reconstruction
    truth = x.permute(0, 2, 1).reshape(-1, N_REGIONS).numpy()
    pred = recon.permute(0, 2, 1).reshape(-1, N_REGIONS).numpy()
    expected = r2_score(truth, pred, multioutput="raw_values")
    table = pd.read_csv(tmp_path / "region_r2.tsv", sep="\t")
    np.testing.assert_allclose(table["r2"], expected, rtol=1e-4, atol=1e-5)
    assert table["region"].tolist() == [f"r{i}" for i in range(N_REGIONS)]
    assert (tmp_path / "region_r2.tsv.json").is_file() or any(tmp_path.glob("region_r2*.json"))


def test_vq_align_resume_is_exact(data, tmp_path):
    """Restarts, the reversal schedule, EMA codes and the classifier's text draws all resume exactly."""
    train(config(data, tmp_path / "straight", max_steps=12))
    assert train(config(data, tmp_path / "split", max_steps=12), should_stop=lambda s: s == 6)["interrupted"]
    train(config(data, tmp_path / "split", max_steps=12))
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=False)["model"]
    for key, value in a.items():
        assert torch.equal(b[key], value), key


def test_lm_finetune_scores_parsed_answers(data, tmp_path):
    """lm: each subject's median over the numbers parsed from its sampled answers (numpy's median);
    lm_greedy: the mean of its windows' greedy answers; both scored against the training mean."""
    from fmriflow.training.text_tasks import ANSWER_SAMPLES

    train(config(data, tmp_path / "vq", max_steps=10))
    cfg = config(data, tmp_path / "lm", task="lm-finetune", init_from=str(tmp_path / "vq" / "model.pt"),
                 target="age", text_prompt="sex: {sex}; age:", max_steps=30, lr=1e-2)
    train(cfg)
    answers = pd.read_csv(tmp_path / "lm" / "answers.tsv", sep="\t", dtype={"subject": str})
    samples = pd.read_csv(tmp_path / "lm" / "samples.tsv", sep="\t", dtype={"subject": str, "answer": str})
    per = pd.read_csv(tmp_path / "lm" / "predictions.tsv", sep="\t", dtype={"subject": str}).set_index("subject")
    table = pd.read_csv(tmp_path / "lm" / "lm_metrics.tsv", sep="\t").set_index("predictor")
    assert set(answers["split"]) <= {"val", "test"} and len(per) == answers["subject"].nunique()
    assert len(samples) == ANSWER_SAMPLES * len(answers) and set(samples["sample"]) == set(answers["sample"])
    assert table.loc["lm_greedy", "unparseable_answers"] == int(answers["parsed"].isna().sum())
    numbers = samples["answer"].fillna("").str.extract(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))")[0].astype(float)
    assert table.loc["lm", "unparseable_answers"] == int(numbers.isna().sum())
    medians = {s: np.median(v.dropna()) if v.notna().any() else np.nan for s, v in numbers.groupby(samples["subject"])}
    np.testing.assert_allclose(per["prediction"], [medians[s] for s in per.index])
    greedy = answers.groupby("subject")["parsed"].mean()
    np.testing.assert_allclose(per["greedy_prediction"], greedy[per.index])
    ages = pd.read_csv(data[1], sep="\t")
    train_subjects = pd.read_csv(data[0] / "splits.tsv", sep="\t", dtype={"subject": str}).query("split == 'train'")
    mean = ages.set_index(ages["participant_id"].str[4:]).loc[train_subjects["subject"], "age"].mean()
    for predictor, column in (("lm", "prediction"), ("lm_greedy", "greedy_prediction")):
        scored = per.dropna(subset=[column])
        assert table.loc[predictor, "train_mean"] == pytest.approx(mean)
        assert table.loc[predictor, "mae"] == pytest.approx(np.abs(scored["truth"] - scored[column]).mean())
        assert table.loc[predictor, "mae_mean_baseline"] == pytest.approx(np.abs(scored["truth"] - mean).mean())


def test_lm_finetune_prompt_must_not_hold_the_answer(data, tmp_path):
    train(config(data, tmp_path / "vq", max_steps=2, eval_every=2))
    cfg = config(data, tmp_path / "lm", task="lm-finetune", init_from=str(tmp_path / "vq" / "model.pt"),
                 target="age", text_prompt="age: {age}")
    with pytest.raises(InputError, match="names the target column 'age'"):
        train(cfg)


def test_a_model_file_from_before_whitening_loads_with_its_recipe(tmp_path):
    """A vq-align model.pt whose config predates the whitening (no 'standardize' key) loads with the
    recipe it was trained with (a layer norm per latent, raw classifier inputs) and tokenizes as it did."""
    import dataclasses

    from fmriflow.models.vqalign import CONFIGS, VQAlign, random_text_table

    config = dataclasses.replace(CONFIGS["tiny"], n_regions=N_REGIONS, standardize="none", latent_norm=True,
                                 disc_norm=False, decay=0.99)
    torch.manual_seed(0)
    old = VQAlign(config, random_text_table(20, config.dim, 1.0, seed=0), torch.arange(3, 20)).eval()
    recorded = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("standardize", "latent_norm", "disc_norm", "decay")}
    torch.save({"task": "vq-align", "model": old.state_dict(), "model_config": recorded}, tmp_path / "model.pt")
    loaded, _ = load_vq_align(str(tmp_path / "model.pt"))
    x = torch.randn(3, N_REGIONS, 20)
    assert torch.equal(loaded.tokenize(x), old.tokenize(x))
    assert (loaded.config.standardize, loaded.config.latent_norm, loaded.config.disc_norm) == ("none", True, False)


def test_vq_align_rejects_a_negative_reversal_gate(data, tmp_path):
    with pytest.raises(InputError, match="'reversal_gate' must be >= 0 \\(0: no gate\\); -1.0 was provided"):
        train(config(data, tmp_path / "vq", reversal_gate=-1.0))
