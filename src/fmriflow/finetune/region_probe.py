"""Region-level read-outs of a pretrained BrainSymphony: what the report shows beside the subject probes.

``region_embeddings``
    each region's spatial-stream token (or structural node token), averaged over windows: (R, dim).
``network_identification``
    region embeddings -> network labels (e.g. Yeo-7), a standardised multinomial logistic
    regression cross-validated *by region* (stratified folds of regions; no region is ever
    in the training and test folds of one split): accuracy beside chance (the largest
    network's share), and each region's out-of-fold prediction.
``incoming_attention_table``
    the attention each region receives in the spatial stream (mean over windows), with its
    network, and the network means: the maps the paper interprets.
``reconstruction_r2``
    per region, R^2 of the masked reconstruction over the hidden entries of every window:
    ``1 - SSE / SST`` with SST about the region's mean over those entries.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch

from ..models.brainsymphony import BrainSymphony


def _batches(x: np.ndarray, sc: np.ndarray | None, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for start in range(0, len(x) if x is not None else len(sc), batch_size):
        part = slice(start, start + batch_size)
        yield (None if x is None else torch.as_tensor(np.asarray(x[part], dtype=np.float32)),
               None if sc is None else torch.as_tensor(np.asarray(sc[part], dtype=np.float32)))


@torch.no_grad()
def region_embeddings(model: BrainSymphony, x: np.ndarray | None = None, sc: np.ndarray | None = None,
                      batch_size: int = 16) -> np.ndarray:
    """Mean region tokens (R, dim) over windows ``x`` (N, R, T) (spatial stream) or connectomes ``sc`` (N, R, R) (nodes)."""
    model.eval()
    total, n = None, 0
    for xb, sb in _batches(x, sc, batch_size):
        emb = model.embed(xb, None) if xb is not None else model.embed(None, sb)
        tokens = (emb.regions if xb is not None else emb.nodes).float().sum(0)  # (R, dim)
        total = tokens if total is None else total + tokens
        n += (xb if xb is not None else sb).shape[0]
    return (total / n).numpy()


def network_identification(embeddings: np.ndarray, networks: Iterable, n_folds: int = 5,
                           seed: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """Cross-validated (by region) network identification: metrics and per-region predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(list(networks))
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(labels)} network labels for {len(embeddings)} region embeddings")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    predicted = np.empty(len(labels), dtype=labels.dtype)
    fold_of = np.empty(len(labels), dtype=int)
    for k, (train, test) in enumerate(folds.split(embeddings, labels)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(embeddings[train], labels[train])
        predicted[test] = clf.predict(embeddings[test])
        fold_of[test] = k
    _, counts = np.unique(labels, return_counts=True)
    metrics = {"accuracy": float(np.mean(predicted == labels)), "chance": float(counts.max() / counts.sum()),
               "n_regions": int(len(labels)), "n_networks": int(len(counts)), "n_folds": int(n_folds)}
    table = pd.DataFrame({"region": np.arange(len(labels)), "network": labels, "predicted": predicted,
                          "fold": fold_of})
    return metrics, table


def incoming_attention_table(model: BrainSymphony, x: np.ndarray, networks: Iterable, region_names: Iterable[str],
                             batch_size: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per region and per network: the mean incoming attention of the spatial stream over windows ``x``."""
    model.eval()
    parts = [model.incoming_attention(xb).float() for xb, _ in _batches(x, None, batch_size)]
    incoming = torch.cat(parts).mean(0).numpy()  # (R,)
    regions = pd.DataFrame({"region": list(region_names), "network": list(networks), "incoming_attention": incoming})
    by_network = (regions.groupby("network", sort=True)["incoming_attention"]
                  .agg(["mean", "count"]).reset_index()
                  .rename(columns={"mean": "incoming_attention", "count": "n_regions"}))
    return regions, by_network


@torch.no_grad()
def reconstruction_r2(model: BrainSymphony, x: np.ndarray, sc: np.ndarray | None = None, seed: int = 0,
                      batch_size: int = 16) -> np.ndarray:
    """R^2 (R,) of each region's hidden entries over windows ``x`` (masks drawn from ``seed``)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    R = x.shape[1]
    sse, s1, s2, n = (np.zeros(R) for _ in range(4))
    for xb, sb in _batches(x, sc, batch_size):
        out = model(xb, sb, generator=generator)
        hidden = out.entry_mask.numpy()
        target, pred = xb.numpy().astype(np.float64), out.pred_x.float().numpy().astype(np.float64)
        sse += ((pred - target) ** 2 * hidden).sum(axis=(0, 2))
        s1 += (target * hidden).sum(axis=(0, 2))
        s2 += (target ** 2 * hidden).sum(axis=(0, 2))
        n += hidden.sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        sst = s2 - s1 ** 2 / n
        return np.where(n > 1, 1 - sse / sst, np.nan)


def load_brainsymphony(model_path) -> BrainSymphony:
    """The pretrained model of a ``brainsymphony`` training run (its model.pt), in eval mode."""
    from ..errors import InputError
    from ..models.brainsymphony import BrainSymphonyConfig

    state = torch.load(model_path, map_location="cpu", weights_only=False)
    if state.get("task") != "brainsymphony":
        raise InputError(model_path, f"not a brainsymphony model (task {state.get('task')!r})")
    model = BrainSymphony(BrainSymphonyConfig(**state["model_config"]), int(state["n_regions"]))
    model.load_state_dict(state["model"])
    return model.eval()


def probe_step(model_path, dataset, out_dir, networks=None, sc_dir: str = "", max_windows: int = 64,
               n_folds: int = 5, seed: int = 0) -> dict:
    """The region read-outs of a pretrained BrainSymphony on a dataset's windows, as TSV/JSON with sidecars.

    ``networks``: a TSV with ``name`` and ``network`` columns (any region order); without it, no
    network identification and no network means. Writes ``regions.tsv`` (incoming attention,
    reconstruction R^2, out-of-fold network), ``networks.tsv`` and ``network_identification.json``.
    """
    from pathlib import Path

    from ..io import read_tsv, write_json, write_tsv
    from ..provenance import build_sidecar, write_sidecar
    from ..training.config import TrainConfig
    from ..training.symphony import load_connectomes
    from ..datasets.regions import RegionWindowDataset

    model, out = load_brainsymphony(model_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    windows = RegionWindowDataset(dataset, None)
    names = read_tsv(Path(dataset) / "scaling.tsv")["region"].astype(str).tolist()
    subjects = windows.index["subject"].astype(str).to_numpy()
    candidates, connectomes = np.arange(len(windows)), {}
    if model.config.uses_sc:  # the windows of subjects with a connectome (the others have no fused path)
        cfg = TrainConfig(dataset=str(dataset), out=str(out), task="brainsymphony", sc_dir=sc_dir,
                          modalities=model.config.modalities)
        connectomes = load_connectomes(cfg, sorted(set(subjects)), names, allow_missing=True)
        candidates = np.flatnonzero(np.isin(subjects, list(connectomes)))
    rows = candidates[np.linspace(0, len(candidates) - 1, min(max_windows, len(candidates))).round().astype(int)]
    x = np.stack([windows[int(i)]["x"].numpy() for i in rows])
    sc = np.stack([connectomes[s] for s in subjects[rows]]) if model.config.uses_sc else None
    table = _region_table(model, x, sc, names, seed)
    metrics: dict = {"n_windows": int(len(rows))}
    if networks is not None:
        lut = read_tsv(networks).astype({"name": str}).set_index("name")["network"]
        table["network"] = lut.reindex(names).to_numpy()
        emb = region_embeddings(model, x if model.config.uses_fmri else None, None if model.config.uses_fmri else sc)
        metrics, predictions = network_identification(emb, table["network"], n_folds=n_folds, seed=seed)
        table["predicted_network"] = predictions["predicted"].to_numpy()
        by_network = table.groupby("network")["incoming_attention"].agg(["mean", "count"]).reset_index()
        write_tsv(out / "networks.tsv", by_network.rename(columns={"mean": "incoming_attention", "count": "n_regions"}))
    write_tsv(out / "regions.tsv", table)
    inputs = [model_path, Path(dataset) / "dataset_card.json", *([networks] if networks is not None else [])]
    parameters = {"max_windows": max_windows, "n_folds": n_folds, "seed": seed}
    for name in ("regions.tsv", *(["networks.tsv"] if networks is not None else [])):
        write_sidecar(out / name, "brainsymphony_probe", inputs, parameters=parameters)
    provenance = build_sidecar("brainsymphony_probe", inputs, parameters=parameters)["Provenance"]
    write_json(out / "network_identification.json", {**metrics, "n_windows": int(len(rows)), "Provenance": provenance})
    return metrics


def _region_table(model: BrainSymphony, x: np.ndarray, sc: np.ndarray | None, names, seed: int) -> pd.DataFrame:
    """Per region: incoming attention (spatial stream, or the graph transformer for an SC-only model) and R^2."""
    if model.config.uses_fmri:
        incoming = np.concatenate([model.incoming_attention(xb).numpy() for xb, _ in _batches(x, None, 16)]).mean(0)
        r2 = reconstruction_r2(model, x, sc, seed=seed)
    else:
        incoming = np.concatenate([model.incoming_attention(sc=sb).numpy() for _, sb in _batches(None, sc, 16)]).mean(0)
        r2 = np.full(len(names), np.nan)
    return pd.DataFrame({"region": names, "incoming_attention": incoming, "reconstruction_r2": r2})
