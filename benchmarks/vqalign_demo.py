"""fMRI-text alignment on a demo-sized cohort, side by side: vq-align with the domain classifier,
the same without it (align_weight 0), and lm-finetune's age answers against the training mean.

A simulated cohort (fmriflow.demo.cohort: regions driven by networks, a group effect, random
age and sex) is windowed as the demo's dataset is, the three runs train on it, and the script
prints the final discriminator accuracy, reconstruction R^2 of both, and the language model's
MAE with its bootstrap CI beside predicting the training mean.

    PYTHONPATH=src python benchmarks/vqalign_demo.py --out /tmp/vqalign [--subjects 24] [--steps 300]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--regions", type=int, default=424)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--stride", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
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
                       checkpoint_every=args.steps, seed=args.seed)
    seconds = {}
    for name, weight in (("aligned", 1.0), ("ablation", 0.0)):
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
        print(f"  {name:9s} R^2 {row['recon_r2']:.3f}  discriminator {row['disc_acc']:.3f}  perplexity "
              f"{row['perplexity']:.1f}  usage {row['code_usage']:.2f}")
    print(f"  R^2 aligned - ablation: {aligned['recon_r2'] - ablation['recon_r2']:+.3f}")
    lm = pd.read_csv(args.out / "lm" / "lm_metrics.tsv", sep="\t").set_index("predictor")
    for name, row in lm.iterrows():
        print(f"  {name:15s} MAE {row['mae']:.2f} [{row['mae_ci_low']:.2f}, {row['mae_ci_high']:.2f}]  mean baseline "
              f"{row['mae_mean_baseline']:.2f} [{row['mae_mean_baseline_ci_low']:.2f}, {row['mae_mean_baseline_ci_high']:.2f}]"
              f"  difference {row['mae_difference']:+.2f} [{row['mae_difference_ci_low']:+.2f}, "
              f"{row['mae_difference_ci_high']:+.2f}]  n={row['n_subjects']}  unparseable {row['unparseable_answers']}"
              f"/{row['windows']}")
    print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
