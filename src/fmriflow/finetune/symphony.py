"""BrainSymphony's pooled embeddings as frozen-probe inputs: fMRI only, SC only, and fused.

``features_step`` embeds every dataset window (the rows of ``finetune_features``) with a
pretrained BrainSymphony (``brainsymphony_pretrain``'s model.pt), frozen:

``fmri``
    the functional encoder's embedding of the window (mean of the Perceiver latents);
``sc``
    the structural encoder's embedding of the window's subject's connectome (one per subject,
    repeated on its windows; NaN for a subject without a connectome);
``fused``
    the adaptive gate's mix of the two; for a subject without a connectome the fMRI embedding
    alone (the unimodal path the same modules serve: ``BrainSymphony.embed`` without ``sc``);
``gate``
    per window, the mean over features of the gate ``g`` (1 = all functional, 0 = all
    structural; NaN without a connectome): what fusion took from each modality.

With ``brainsymphony.readout: networks`` (a ``networks`` TSV) the arrays are network read-outs instead
(``fmriflow.models.brainsymphony.network_similarity``): ``fmri`` the mean cosine similarity of the
spatial stream's region tokens per pair of networks, ``sc`` the same of the connectome's node tokens
(K(K+1)/2 values each), ``fused`` = [g * fmri ; (1 - g) * sc] with g the window's gate share (1, the SC
half zero, without a connectome). Why: the mean over all regions keeps nothing of an effect confined to
some networks (measured in benchmarks/README.md: the pooled SC embedding at chance where the
connectomes' network blocks carry the effect), and FC is a similarity between regions, which a mean of
tokens linear in each region's series cannot show; the similarity of region tokens is what the paper's
network identification reads too.

A model pretrained on one modality gives that modality's row only (``feature_files``). ``subjects.tsv`` lists each
subject's path (``fused`` or ``fmri only``) and mean gate, for the report.

The probe (``PROBES``: variant name -> embedding) is the frozen probe of ``fmriflow.finetune.probe``
(subject mean of the window embeddings, nested-CV linear model, the FC baselines' folds), run by
``crossval`` with a label-permuted control per row. A row leaves out of its fits and scores the
subjects it has no embedding for (``probe_symphony_sc``: those without a connectome). With
``brainsymphony.fusion: mean`` (the default) or ``late`` the fused row is not a probe of ``fused`` but the
two unimodal probes' scores averaged, or mixed by a weight chosen by inner CV (``fmriflow.finetune.fusion``);
``early`` probes ``fused``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..datasets.regions import SAMPLES, read_index
from ..errors import InputError
from ..io import atomic_path, read_tsv, write_tsv
from ..naming import SYMPHONY_FEATURES, SYMPHONY_SUBJECTS, symphony_feature_files
from ..provenance import write_sidecar

PROBES = {"probe_symphony_fmri": "fmri", "probe_symphony_sc": "sc", "probe_symphony_fused": "fused"}
FUSED_ROW, UNIMODAL = "probe_symphony_fused", ("probe_symphony_fmri", "probe_symphony_sc")  # fmri, sc
PATHS = {True: "fused", False: "fmri only (no connectome)"}
READOUT = ("network read-out: mean cosine similarity of centred region tokens per pair of networks; "
           "fused = [g * fmri ; (1 - g) * sc], g the gate's functional share")
FILES, SUBJECTS, feature_files = SYMPHONY_FEATURES, SYMPHONY_SUBJECTS, symphony_feature_files


@torch.no_grad()
def window_embeddings(model, x: np.ndarray, sc: np.ndarray | None, batch_size: int = 16,
                      networks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Embeddings of windows ``x`` (N, R, T) and their subjects' connectomes ``sc`` (N, R, R) or None.

    Returns the arrays of the module docstring the model has (``fmri``, ``sc``, ``fused``, ``gate`` (N,));
    with ``sc`` None, ``fused`` is the fMRI one. ``networks`` (R,) ints 0..K-1: the network read-out
    (module docstring) in place of the pooled embeddings.
    """
    model.eval()
    cfg, parts = model.config, {}
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32)) if cfg.uses_fmri else None
        sb = None if sc is None else torch.as_tensor(np.asarray(sc[start:start + batch_size], dtype=np.float32))
        emb = model.embed(xb, sb)
        gate = None
        if emb.functional is not None and emb.structural is not None:
            gate = torch.sigmoid(model.gate.gate(torch.cat([emb.functional, emb.structural], dim=-1))).mean(dim=-1)
        batch = _readout(emb, gate, networks, cfg.modalities == "both") if networks is not None else {
            "fused": emb.fused, **({"fmri": emb.functional} if emb.functional is not None else {}),
            **({"sc": emb.structural} if emb.structural is not None else {})}
        if gate is not None:
            batch["gate"] = gate
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.float().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def _readout(emb, gate, networks: np.ndarray, both: bool) -> dict[str, torch.Tensor]:
    """The network read-out of one batch: each modality's region-token similarity per pair of networks,
    and (``both``) ``fused`` = [g * fMRI ; (1 - g) * SC] with ``g`` the gate's functional share (1 without a
    connectome: the SC half zero)."""
    from ..models.brainsymphony import network_similarity

    codes = torch.as_tensor(networks, dtype=torch.long)
    k = int(codes.max()) + 1
    out = {}
    if emb.regions is not None:
        out["fmri"] = network_similarity(emb.regions, codes, k)
    if emb.nodes is not None:
        out["sc"] = network_similarity(emb.nodes, codes, k)
    if both:
        g = gate[:, None] if "sc" in out else torch.ones(len(out["fmri"]), 1)
        out["fused"] = torch.cat([g * out["fmri"], (1 - g) * out.get("sc", torch.zeros_like(out["fmri"]))], dim=1)
    else:
        out["fused"] = out.get("fmri", out.get("sc"))
    return out


def embed_dataset(model, dataset: str | Path, samples: np.ndarray, subjects: np.ndarray,
                  connectomes: dict[str, np.ndarray], networks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The module docstring's arrays for the listed sample rows (their ``subjects``), NaN where undefined;
    ``networks``: the network read-out (``window_embeddings``)."""
    data = np.load(Path(dataset) / SAMPLES, mmap_mode="r")
    cfg, n = model.config, len(samples)
    keys = ["fused", *(["fmri"] if cfg.uses_fmri else []), *(["sc"] if cfg.uses_sc else []),
            *(["gate"] if cfg.uses_fmri and cfg.uses_sc else [])]
    out: dict[str, np.ndarray] = {}
    has = np.isin(subjects, list(connectomes))
    for with_sc in (True, False):
        rows = np.flatnonzero(has == with_sc)
        if not len(rows) or (not with_sc and not cfg.uses_fmri):
            continue  # an SC-only model has nothing to say about a subject without a connectome
        x = data[samples[rows]] if cfg.uses_fmri else np.zeros((len(rows), 1, 1), np.float32)
        sc = np.stack([connectomes[s] for s in subjects[rows]]) if with_sc and cfg.uses_sc else None
        for key, value in window_embeddings(model, x, sc, networks=networks).items():
            if key not in out:
                out[key] = np.full((n, *value.shape[1:]), np.nan, np.float32)
            out[key][rows] = value
    width = {"fused": out["fused"].shape[1]} if "fused" in out else {}
    for key in keys:  # a modality no subject had (e.g. SC when none has a connectome): all NaN
        if key not in out:
            dim = out["fmri"].shape[1] if key == "sc" and "fmri" in out else width.get(key, cfg.dim)
            out[key] = np.full((n,) if key == "gate" else (n, dim), np.nan, np.float32)
    return out


def network_codes(path: str | Path, region_names: list[str]) -> np.ndarray:
    """Each dataset region's network as an int 0..K-1 (sorted network labels) from a TSV with ``name`` and
    ``network`` columns (``brainsymphony.networks``); every region must be listed."""
    table = read_tsv(path).astype({"name": str})
    missing_columns = {"name", "network"} - set(table.columns)
    if missing_columns:
        raise InputError(path, f"needs the columns 'name' and 'network'; it lacks {sorted(missing_columns)}",
                         settings=("brainsymphony.networks",))
    lut = table.set_index("name")["network"]
    missing = [r for r in region_names if r not in lut.index]
    if missing:
        raise InputError(path, f"no network for dataset region(s) {missing[:5]} ({len(missing)} of "
                         f"{len(region_names)})", settings=("brainsymphony.networks",))
    labels = lut.loc[region_names].to_numpy()
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def features_step(model_path: str, dataset: str, out_dir: str, sc_dir: str = "",
                  networks: str | None = None) -> dict[str, np.ndarray]:
    """Embed every window of ``dataset`` with the pretrained model; write the arrays and ``subjects.tsv``.
    ``networks``: a TSV of each region's network, for the network read-out (module docstring)."""
    from ..training.config import TrainConfig
    from ..training.symphony import load_connectomes
    from .region_probe import load_brainsymphony

    model = load_brainsymphony(model_path)
    index = read_index(dataset)
    samples = index["sample"].to_numpy(dtype=np.int64)
    subjects = index["subject"].astype(str).to_numpy()
    connectomes = {}
    names = read_tsv(Path(dataset) / "scaling.tsv")["region"].astype(str).tolist()
    codes = None if not networks else network_codes(networks, names)
    if model.config.uses_sc:
        cfg = TrainConfig(dataset=str(dataset), out=str(out_dir), task="brainsymphony", sc_dir=sc_dir,
                          modalities=model.config.modalities)
        connectomes = load_connectomes(cfg, sorted(set(subjects)), names, allow_missing=True)
    arrays = {"samples": samples, **embed_dataset(model, dataset, samples, subjects, connectomes, codes)}
    arrays = {k: v for k, v in arrays.items() if FILES[k] in feature_files(model.config.modalities)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [model_path, f"{dataset}/index.tsv", f"{dataset}/{SAMPLES}",
              *(sorted(Path(sc_dir).glob("sub-*.tsv")) if connectomes else []), *([networks] if networks else [])]
    parameters = {"modalities": model.config.modalities,
                  "embedding": "frozen BrainSymphony, " + (READOUT if networks else "pooled (embed)"),
                  "without_connectome": "fused = the fMRI embedding" + (" and zeros (gate 1)" if networks else "")
                                        + "; sc and gate NaN"}
    for key, array in arrays.items():
        with atomic_path(out / FILES[key]) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
                np.save(fh, array)
        write_sidecar(out / FILES[key], "brainsymphony_features", inputs, parameters=parameters)
    write_tsv(out / SUBJECTS, subject_table(subjects, connectomes, arrays.get("gate"), model.config.modalities))
    write_sidecar(out / SUBJECTS, "brainsymphony_features", inputs, parameters=parameters)
    return arrays


def subject_table(subjects: np.ndarray, connectomes, gate: np.ndarray | None, modalities: str) -> pd.DataFrame:
    """One row per subject: its windows, whether it has a connectome, its path and its mean gate."""
    frame = pd.DataFrame({"subject": subjects, "gate": np.nan if gate is None else gate})
    table = frame.groupby("subject", sort=True).agg(n_windows=("gate", "size"), gate_functional=("gate", "mean"))
    table = table.reset_index()
    table["connectome"] = table["subject"].isin(list(connectomes))
    table["path"] = [PATHS[bool(c)] if modalities == "both" else modalities for c in table["connectome"]]
    return table[["subject", "n_windows", "connectome", "path", "gate_functional"]]


def load_subject_embeddings(features_dir: str | Path, samples: np.ndarray,
                            rows_of: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Probe row -> subject -> float64 mean embedding of its windows, for the rows the features have;
    a subject whose windows have no embedding for a row (NaN) is left out of that row.

    ``samples``/``rows_of``: the fine-tuning features' sample of each row and each subject's rows;
    the BrainSymphony features are matched to them by sample."""
    root = Path(features_dir)
    own = np.load(root / FILES["samples"])
    position = {int(s): i for i, s in enumerate(own)}
    missing = sorted(set(int(s) for s in samples) - set(position))
    if missing:
        raise ValueError(f"{root}: no BrainSymphony embedding of dataset sample(s) {missing[:5]}")
    out = {}
    for row, key in PROBES.items():
        if not (root / FILES[key]).is_file():
            continue
        array = np.load(root / FILES[key])
        embeddings = {}
        for subject, rows in rows_of.items():
            windows = np.asarray(array[[position[int(samples[r])] for r in rows]], dtype=np.float64)
            if np.isfinite(windows).all():
                embeddings[subject] = windows.mean(axis=0)
        out[row] = embeddings
    return out
