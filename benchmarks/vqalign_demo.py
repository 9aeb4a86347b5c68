"""fMRI-text alignment on a demo-sized cohort, side by side: vq-align with the domain classifier,
the same without it (align_weight 0), and lm-finetune's age answers against the training mean.

A simulated cohort (fmriflow.demo.cohort: regions driven by networks, a group effect, age that
lowers within-network coupling and signal amplitude, random sex) is windowed as the demo's
dataset is, the three runs train on it, and the script prints for both vq-align runs the final
discriminator accuracy (and its range over the last four evaluations), reconstruction R^2,
codebook use and fresh held-out probes of codes against text rows; then the language model's
MAE with its bootstrap CI (the median of its sampled answers, and its greedy answers) beside
predicting the training mean, ridge on the subjects' code histograms, and ridge on their signal
amplitude (is age in the data at all?).

    PYTHONPATH=src python benchmarks/vqalign_demo.py --out /tmp/vqalign [--subjects 24] [--steps 300]
        [--train-seed 1] [--align-weight 0.5] [--runs aligned ablation lm]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd


def _dataset(out: Path, subjects: int, regions: int, window: int, stride: int, seed: int) -> tuple[Path, Path]:
    from fmriflow.datasets.regions import build_dataset, make_splits
    from fmriflow.demo.cohort import CohortSpec, simulate_cohort, write_cohort

    cohort = simulate_cohort(CohortSpec(n_subjects=subjects, n_regions=regions, n_sites=2, seed=seed))
    root = write_cohort(cohort, out / "cohort")
    runs = [{"run": f"{p}/func/{p}_task-rest", "subject": p[4:], "tr": cohort.spec.repetition_time,
             "timeseries": root / p / "func" / f"{p}_task-rest_timeseries.tsv"} for p in cohort.participants["participant_id"]]
    splits = make_splits([r["subject"] for r in runs], fractions=(0.6, 0.2, 0.2), seed=seed)
    build_dataset(runs, splits, out / "dataset", window=window, stride=stride)
    return out / "dataset", root / "participants.tsv"


def _last(run: Path) -> pd.Series:
    return pd.read_csv(run / "metrics.csv").dropna(subset=["recon_r2"]).iloc[-1]


def _evaluations(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").dropna(subset=["recon_r2"])


def amplitude_reference(dataset: Path, participants: Path, seed: int) -> dict[str, float]:
    """Age from each subject's signal amplitude (SD of its scaled windows), ridge fitted on the training
    subjects, scored on the held-out ones as the language model is: is age in the data at all?"""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from fmriflow.datasets.regions import RegionWindowDataset, read_index
    from fmriflow.text.scoring import mae_against_mean

    index, windows = read_index(dataset), RegionWindowDataset(dataset, None)
    sd = pd.Series([float(windows[i]["x"].std()) for i in range(len(windows))], index=index["sample"].to_numpy())
    table = index.assign(sd=index["sample"].map(sd)).groupby("subject").agg(sd=("sd", "mean"), split=("split", "first"))
    ages = pd.read_csv(participants, sep="\t").assign(subject=lambda t: t["participant_id"].str[4:]).set_index("subject")["age"]
    table["age"] = ages.reindex(table.index).to_numpy()
    train, held = table[table["split"] == "train"], table[table["split"] != "train"]
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(train[["sd"]], train["age"])
    return mae_against_mean(held["age"], ridge.predict(held[["sd"]]), float(train["age"].mean()), seed=seed)


def gradient_ratio(model_pt: Path, dataset: Path, weight: float = 1.0) -> tuple[float, float]:
    """On the first 8 training windows: the norm of the reversed domain gradient at the latents (at
    ``weight``) over that of the reconstruction + quantiser loss, and the cosine between the two."""
    import torch
    from torch.utils.data import default_collate

    from fmriflow.datasets.regions import RegionWindowDataset
    from fmriflow.training.text_tasks import load_vq_align

    model, _ = load_vq_align(str(model_pt))
    train = RegionWindowDataset(dataset, "train")
    x = default_collate([train[i] for i in range(min(8, len(train)))])["x"]
    model.reversal.weight.fill_(weight)
    latents = model.encode(x)
    q = model.quantizer(latents)
    recon = model.unpatch(model.decoder(q.z_q.reshape(len(x), -1, model.config.dim * model.config.groups)), x.shape[1])
    own = torch.autograd.grad(((recon - x) ** 2).mean() + q.loss, latents, retain_graph=True)[0]
    vectors = q.z_q.reshape(-1, model.config.dim)
    text = model.text_ids[torch.randint(len(model.text_ids), (len(vectors),), generator=torch.Generator().manual_seed(0))]
    reversed_ = torch.autograd.grad(model._discriminate(model.reversal(vectors), model.text_table[text])[0], latents)[0]
    cosine = torch.nn.functional.cosine_similarity(own.flatten(), reversed_.flatten(), 0)
    return float(reversed_.norm() / own.norm()), float(cosine)


def fresh_probes(model_pt: Path, seed: int = 0) -> dict[str, float]:
    """Held-out (5-fold) balanced accuracy of classifiers trained afresh to tell the codes in use from
    the text rows: what the codes carry, beside the trained discriminator's own accuracy. On the
    rows' mean and norm (what a layer norm fixes), and on layer-normalised rows: logistic, and an MLP
    of the discriminator's width."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier

    from fmriflow.training.text_tasks import load_vq_align

    model, _ = load_vq_align(str(model_pt))
    codes = model.quantizer.codebook.detach().double().numpy()
    used = model.quantizer.usage_share.numpy() >= model.quantizer.dead_fraction / model.config.n_codes
    rows = np.vstack([codes[used], model.text_table[model.text_ids].double().numpy()])
    y = np.r_[np.ones(used.sum()), np.zeros(len(model.text_ids))]
    normed = (rows - rows.mean(1, keepdims=True)) / rows.std(1, keepdims=True)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probes = {"mean_norm": (LogisticRegression(max_iter=5000, class_weight="balanced"),
                            np.c_[np.abs(rows.mean(1)), np.linalg.norm(rows, axis=1)]),
              "linear": (LogisticRegression(C=10, max_iter=5000, class_weight="balanced"), normed),
              "mlp": (MLPClassifier((model.config.disc_hidden,), max_iter=3000, random_state=seed), normed)}
    return {name: balanced_accuracy_score(y, cross_val_predict(clf, x, y, cv=folds)) for name, (clf, x) in probes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--regions", type=int, default=424)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--stride", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the cohort's and the splits' seed")
    parser.add_argument("--train-seed", type=int, default=None, help="the training runs' seed (default: --seed)")
    parser.add_argument("--align-weight", type=float, default=0.5, help="the aligned run's text.vq_align.align_weight")
    parser.add_argument("--lr", type=float, default=1e-3, help="vq-align peak learning rate (text.vq_align.lr)")
    parser.add_argument("--reversal-gate", type=float, default=None,
                        help="text.vq_align.reversal_gate (default: the config's, 2; 0: the ungated reversal)")
    parser.add_argument("--runs", nargs="+", default=["aligned", "ablation", "lm"],
                        help="which runs (e.g. aligned and ablation in two processes, then lm); the table needs all three")
    args = parser.parse_args()

    from fmriflow.training.config import TrainConfig
    from fmriflow.training.loop import train

    if (args.out / "dataset" / "dataset_card.json").is_file():  # made by an earlier call
        dataset, participants = args.out / "dataset", args.out / "cohort" / "participants.tsv"
    else:
        dataset, participants = _dataset(args.out, args.subjects, args.regions, args.window, args.stride, args.seed)
    base = TrainConfig(dataset=str(dataset), out="", task="vq-align", participants=str(participants),
                       text_template="sex: {sex}; age: {age}", model="tiny", batch_size=8, max_steps=args.steps,
                       warmup_steps=20, lr=args.lr, eval_every=max(1, args.steps // 10), log_every=10, num_workers=0,
                       checkpoint_every=args.steps, seed=args.seed if args.train_seed is None else args.train_seed)
    if args.reversal_gate is not None:
        base = dataclasses.replace(base, reversal_gate=args.reversal_gate)
    seconds = {}
    for name, weight in (("aligned", args.align_weight), ("ablation", 0.0)):
        if name not in args.runs:
            continue
        t0 = time.perf_counter()
        train(dataclasses.replace(base, out=str(args.out / name), align_weight=weight))
        seconds[name] = time.perf_counter() - t0
    if "lm" not in args.runs:
        return
    t0 = time.perf_counter()
    train(dataclasses.replace(base, out=str(args.out / "lm"), task="lm-finetune", target="age",
                              init_from=str(args.out / "aligned" / "model.pt"), text_prompt="sex: {sex}; age:",
                              max_steps=args.lm_steps, lr=3e-3, eval_every=max(1, args.lm_steps // 5)))
    seconds["lm"] = time.perf_counter() - t0

    aligned, ablation = _last(args.out / "aligned"), _last(args.out / "ablation")
    print(f"{args.subjects} subjects x {args.regions} regions, windows {args.window}/{args.stride} TRs, "
          f"{args.steps} vq-align steps, {args.lm_steps} lm-finetune steps")
    for name, row in (("aligned", aligned), ("ablation", ablation)):
        late = _evaluations(args.out / name)["disc_acc"].iloc[-4:]
        probes = fresh_probes(args.out / name / "model.pt", args.seed)
        ratio, cosine = gradient_ratio(args.out / name / "model.pt", dataset)
        print(f"  {name:9s} R^2 {row['recon_r2']:.3f}  discriminator {row['disc_acc']:.3f} (last 4 evaluations "
              f"{late.min():.2f}-{late.max():.2f})  perplexity {row['perplexity']:.1f}  usage {row['code_usage']:.2f}")
        print(f"  {'':9s} fresh held-out probes, codes vs text: " + "  ".join(f"{k} {v:.3f}" for k, v in probes.items())
              + f"; reversed / own gradient at the latents (weight 1) {ratio:.1f}, cosine {cosine:+.2f}")
    print(f"  R^2 aligned - ablation: {aligned['recon_r2'] - ablation['recon_r2']:+.3f}")
    lm = pd.read_csv(args.out / "lm" / "lm_metrics.tsv", sep="\t").set_index("predictor")
    lm.loc["ridge_on_amplitude"] = pd.Series({**amplitude_reference(dataset, participants, args.seed),
                                              "unparseable_answers": 0, "windows": lm["windows"].iloc[0]})
    for name, row in lm.iterrows():
        print(f"  {name:15s} MAE {row['mae']:.2f} [{row['mae_ci_low']:.2f}, {row['mae_ci_high']:.2f}]  mean baseline "
              f"{row['mae_mean_baseline']:.2f} [{row['mae_mean_baseline_ci_low']:.2f}, {row['mae_mean_baseline_ci_high']:.2f}]"
              f"  difference {row['mae_difference']:+.2f} [{row['mae_difference_ci_low']:+.2f}, "
              f"{row['mae_difference_ci_high']:+.2f}]  n={row['n_subjects']}  unparseable {row['unparseable_answers']}"
              f"/{row['answers'] if row.get('answers', 0) > 0 else row['windows']}")
    print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
