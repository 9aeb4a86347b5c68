"""Which read-out of the demo's connectomes carries the responder effect: raw edges, each region's mean
connectivity (what mean-pooling node tokens sees, linearly), network blocks, and a tiny BrainSymphony's
node tokens (mean-pooled, pooled per network, ``network_similarity``) before and after SC-only pretraining.

    PYTHONPATH=src python benchmarks/brainsymphony_readouts.py data/demo-split/ground_truth/ground_truth.json \\
        --steps 200 400                                  # the default demo's connectome model
    PYTHONPATH=src python benchmarks/brainsymphony_readouts.py data/demo-split/ground_truth/ground_truth.json \\
        --effect 0.5 --block-sd 0.15                      # the fusion demo's

The demo's subjects, networks and region centres from its ground truth; counts drawn by
``fmriflow.sc.demo.simulate_counts`` (seed 0, as ``fmriflow demo-data`` draws them), transformed to
log10(count / volume). AUROC of the FC baselines' nested-CV L2 logistic regression, mean over 3 repeats
of 5 stratified folds. Pretraining: masked connectome reconstruction, batches of 8, AdamW lr 1e-3, one thread.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmriflow import baselines  # noqa: E402
from fmriflow.io import read_json  # noqa: E402
from fmriflow.models.brainsymphony import create_brainsymphony, network_similarity  # noqa: E402
from fmriflow.sc.connectome import transform_connectome  # noqa: E402
from fmriflow.sc.demo import MODEL, region_volumes, simulate_counts  # noqa: E402


def cv_auroc(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    aucs = []
    for repeat in range(3):
        scores = np.zeros(len(y))
        for train, test in StratifiedKFold(5, shuffle=True, random_state=repeat).split(x, y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores[test], _ = baselines.fit_predict("logistic", "classification", x[train], y[train].astype(float),
                                                        x[test], seed=repeat, warn=False)
        aucs.append(roc_auc_score(y, scores))
    return float(np.mean(aucs))


def token_readouts(model, sc: torch.Tensor, networks: np.ndarray) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        nodes, _ = model.structural(sc)  # (S, R, D)
    member = torch.from_numpy(np.eye(networks.max() + 1)[networks] / np.bincount(networks)).float()
    codes = torch.from_numpy(networks)
    return {"node tokens, mean over regions": nodes.mean(1).numpy(),
            "node tokens, mean per network": torch.einsum("srd,rk->skd", nodes, member).flatten(1).numpy(),
            "node tokens, network_similarity": network_similarity(nodes, codes, int(codes.max()) + 1).numpy()}


def main(truth_path: Path, effect: float, block_sd: float, steps: list[int]) -> None:
    torch.set_num_threads(1)
    truth = read_json(truth_path)
    subjects = sorted(truth["subjects"])
    y = np.array([int(truth["subjects"][s]["response"]) for s in subjects])
    xyz = np.array([[r["x"], r["y"], r["z"]] for r in truth["regions"]], dtype=float)
    networks = np.array([r["network"] for r in truth["regions"]])
    model_sc = replace(MODEL, effect=effect, block_sd=block_sd)
    counts, _ = simulate_counts(xyz, networks, y.astype(bool), seed=0, model=model_sc)
    volumes = region_volumes(len(xyz), np.random.default_rng([0, 425]), model_sc)
    sc = np.stack([transform_connectome(c, "log10_count_over_volume", volumes) for c in counts]).astype(np.float32)
    i, j = np.triu_indices(len(xyz), 1)
    k = networks.max() + 1
    member = np.eye(k)[networks] / np.bincount(networks)
    print(f"effect {effect}, block_sd {block_sd}; log10 count/volume on edges: mean {sc[:, i, j].mean():.2f}, "
          f"SD {sc[:, i, j].std():.2f}")
    for name, x in (("edges (upper triangle)", sc[:, i, j]), ("each region's mean connectivity", sc.mean(2)),
                    ("network-block means (K x K)", np.einsum("srq,rk,qm->skm", sc, member, member).reshape(len(y), -1))):
        print(f"  {name}: {cv_auroc(x, y):.3f}")
    torch.manual_seed(0)
    model = create_brainsymphony("tiny", len(xyz), modalities="sc", window=100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    tensor = torch.from_numpy(sc)
    for step in range(max(steps, default=0) + 1):
        if step in steps or step == 0:
            for name, x in token_readouts(model, tensor, networks).items():
                print(f"  tiny encoder after {step} steps, {name}: {cv_auroc(x, y):.3f}", flush=True)
        model.train()
        loss = model(None, tensor[torch.randint(0, len(y), (8,), generator=gen)], generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ground_truth", type=Path)
    parser.add_argument("--effect", type=float, default=MODEL.effect)
    parser.add_argument("--block-sd", type=float, default=MODEL.block_sd)
    parser.add_argument("--steps", type=int, nargs="*", default=[])
    args = parser.parse_args()
    main(args.ground_truth, args.effect, args.block_sd, args.steps)
