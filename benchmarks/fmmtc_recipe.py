"""FMMTC training recipe on cohorts drawn from the demo's generative model, side by side.

Draws region time series from the demo's population covariances (``fmriflow.demo``:
networks, planted edges, responder network factor), as a stationary VAR(1) plus the noise
left after averaging a region's voxels, band-passed like the default denoising; computes
each subject's FC with the pipeline's ``window_fc``; then cross-validates (stratified
5-fold by subject, 20 % of the training subjects for validation) the pipeline's own trainer
(``fmriflow.finetune.trainer.fit``) under each recipe, the ``fc_only`` and ``concat``
variants (a random 32-d stand-in for the frozen encoder's embedding), and the logistic
baseline. Prints one MCC per recipe, variant and cohort, and the mean over cohorts.

    python benchmarks/fmmtc_recipe.py [--cohorts 4] [--subjects 24] [--device cuda]

The atlas comes from $FMRIFLOW_ATLAS_DIR, the cache or the pinned download (fmriflow.atlas).
What it does not model: motion, dropout, the confound regression; the demo run itself is
the end-to-end check (README, "Fine-tuning and evaluation").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.signal import butter, sosfiltfilt
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import StratifiedKFold

from fmriflow import baselines
from fmriflow.demo import model as demo
from fmriflow.atlas import a424_labels_table, fetch_a424
from fmriflow.finetune.features import window_fc
from fmriflow.finetune.settings import TrainSettings
from fmriflow.finetune.trainer import fit, predict

RECIPES = {
    # name: trainer settings (the rest are the demo config's)
    "old (batch 16, 10 epochs, no floor)": dict(batch_size=16, max_epochs=10, min_epochs=0, patience=3),
    "new (batch 4, 20 epochs, floor 15)": dict(batch_size=4, max_epochs=20, min_epochs=15, patience=5),
}
TR = 2.0
VOXELS_PER_REGION = 40  # the demo's smallest planted region


def cohort(labels_img: np.ndarray, affine: np.ndarray, table, n: int, n_trs: int, seed: int):
    """(n, R, R) Fisher-z FC and labels (half responders) of one simulated cohort."""
    rng = np.random.default_rng(seed)
    networks = demo._assign_networks(table, rng)
    edges = demo._choose_edges(labels_img, affine, networks, rng)
    sigmas = demo.population_covariances(networks, edges)
    chol = [np.linalg.cholesky(s) for s in sigmas]
    phi = demo.MODEL.ar_coef(TR)
    sos = butter(2, [0.01, 0.08], btype="band", fs=1 / TR, output="sos")
    y = np.repeat([0, 1], n // 2)
    fc = []
    for label in y:
        e = rng.standard_normal((n_trs, len(table))) @ chol[label].T
        x = np.empty_like(e)
        x[0] = e[0]
        for t in range(1, n_trs):
            x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * e[t]
        x += demo.MODEL.noise_pct / np.sqrt(VOXELS_PER_REGION) * rng.standard_normal(x.shape)
        x = sosfiltfilt(sos, x - x.mean(axis=0), axis=0)
        fc.append(window_fc(x.T, np.ones(len(table), bool)))
    return np.stack(fc), y


def cross_validate(fc, y, variant: str | None, settings: TrainSettings | None, seed: int) -> float:
    ts = np.random.default_rng(seed).standard_normal((len(y), 32)).astype(np.float32)
    pred = np.zeros(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(y, y):
        if variant is None:  # the logistic baseline on the FC upper triangle, nested CV for C
            scores, _ = baselines.fit_predict("logistic", "classification", baselines.upper_triangle(fc[train]),
                                              y[train], baselines.upper_triangle(fc[test]), seed=seed)
        else:
            rng = np.random.default_rng(seed)
            val = np.concatenate([rng.choice(train[y[train] == c], max(1, round(0.1 * len(train))), replace=False)
                                  for c in (0, 1)])
            fit_rows = np.setdiff1d(train, val)
            init = None
            if variant == "concat staged":  # the FC branch starts from this fold's trained fc_only model
                init, _, _ = fit("fc_only", "classification", ts, fc, y.astype(float), fit_rows, val, settings, seed)
                variant = "concat"
            model, target, _ = fit(variant, "classification", ts, fc, y.astype(float), fit_rows, val, settings, seed,
                                   init_fc=init)
            scores = predict(model, target, ts, fc, test, settings)
        pred[test] = scores > 0.5
    return float(matthews_corrcoef(y, pred))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--trs", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-old", action="store_true", help="only the new recipe")
    parser.add_argument("--atlas-cache", type=Path, default=Path("resources/atlases/A424"))
    args = parser.parse_args()

    files = fetch_a424(args.atlas_cache)
    img = nib.load(files["labels_img"])
    labels_img = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    table = a424_labels_table(files["coordinates"])
    results: dict[str, list[float]] = {}
    for c in range(args.cohorts):
        started = time.monotonic()
        fc, y = cohort(labels_img, img.affine, table, args.subjects, args.trs, seed=c)
        row = {"logistic": cross_validate(fc, y, None, None, c)}
        for name, recipe in RECIPES.items():
            if args.skip_old and name.startswith("old"):
                continue
            settings = TrainSettings(resnet_width=4, lr=1e-3, weight_decay=1e-2, device=args.device, **recipe)
            for variant in ("fc_only", "concat", "concat staged"):
                if variant != "concat staged" or "new" in name:
                    row[f"{variant}, {name}"] = cross_validate(fc, y, variant, settings, c)
        for key, value in row.items():
            results.setdefault(key, []).append(value)
        print(f"cohort {c} ({time.monotonic() - started:.0f} s): "
              + "; ".join(f"{k} {v:+.2f}" for k, v in row.items()), flush=True)
    print(f"\nMCC over {args.cohorts} cohorts of {args.subjects} subjects (mean, min-max):")
    for key, values in results.items():
        print(f"  {key:45s} {np.mean(values):+.2f} ({min(values):+.2f} to {max(values):+.2f})")


if __name__ == "__main__":
    main()
