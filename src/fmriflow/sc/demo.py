"""Diffusion-derived structural connectomes for the synthetic demo, consistent with its networks.

The demo (``fmriflow.demo``) simulates BOLD from networks of A424 regions and writes the truth
(``ground_truth/ground_truth.json``: each region's network and centre, each subject's
``response``). This module draws, per subject, the streamline counts a tractography run would
give on the same regions, and writes them as MRtrix ``tck2connectome`` would (comma-separated,
upper triangle only, as without ``-symmetric``) in a QSIRecon-shaped derivatives folder
(``derivatives/qsirecon``, with its ``dataset_description.json``), with the region volumes a
``log10_count_over_volume`` transform needs. ``fmriflow demo-data`` calls it after the ground
truth is written (``write_demo_connectomes``).

Model (``SCModel``): the expected count of regions i and j is

    mu_ij = scale * s_subject * exp(-d_ij / length_mm) * (1 + within_boost [same network])
            * sqrt(u_k(i) u_k(j)) * (1 + effect [responder and i, j both in effect_networks])

with ``d_ij`` the distance of the region centres (mm), ``s_subject ~ U(0.8, 1.2)`` and
``u_k = exp(network_sd * z_k)``, ``z_k ~ N(0, 1)`` per subject and network k (people differ in
how dense each system's tracts are, so the responder effect is a shift against between-subject
spread, not a clean step); counts are Poisson. Streamlines are denser within networks, as
functional coupling is.

The split of the group effect: the fMRI effect is on networks 0 and 1 (FC) and the dynamics of
network 2 (``fmriflow.demo.model``); the structural effect is on networks 3 and 4, which the
time series leave alone. With ``effect = 0.25`` against ``network_sd = 0.15`` the log-density of the
effect block moves by log(1.25) = 0.22 against a subject SD of about 0.11 (the mean of two
networks' ``z``; the subject scale cancels against other networks): structure alone separates
the groups well but not perfectly. Measured on 24 subjects (12 responders), A424 networks from
k-means, three seeds: that contrast alone gives AUROC 0.90-0.97, L2 logistic regression on every
edge's log10 count (nested CV, 5 folds) 0.77-0.90; at effect 0.2 the logistic gave 0.62-0.78, at
0.15 chance. So structure carries part of the group difference that the time series do not:
what a fused model should beat each single modality on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import CODE_URL, __version__
from ..io import atomic_path, read_json, write_json, write_tsv
from ..provenance import BIDS_VERSION

CONNECTOME_NAME = "sub-{label}_space-MNI152NLin6Asym_seg-A424_desc-streamlinecount_connectome.csv"
VOLUMES_NAME = "seg-A424_desc-volume_regions.tsv"


@dataclass(frozen=True)
class SCModel:
    scale: float = 2000.0  # expected streamlines between two touching regions of one network
    length_mm: float = 25.0  # distance over which expected counts fall by e
    within_boost: float = 2.0  # extra fraction of streamlines within a network
    effect: float = 0.25  # responders' extra fraction within and between effect_networks
    effect_networks: tuple[int, ...] = (3, 4)  # disjoint from the fMRI effect's networks (0, 1 FC; 2 dynamics)
    network_sd: float = 0.15  # SD of a subject's log tract density per network (between-subject spread)
    # SD of a subject's log tract density per pair of networks (0: none, the default demo). The per-network
    # spread above is separable (block a,b moves by half of a's and b's), so network-level contrasts cancel it
    # exactly and leave only Poisson noise; a pair-specific spread is what no contrast of blocks removes
    block_sd: float = 0.0
    subject_scale_range: tuple[float, float] = (0.8, 1.2)
    volume_median_mm3: float = 3000.0  # region volumes: lognormal around this median
    volume_log_sd: float = 0.5


MODEL = SCModel()


def region_volumes(n_regions: int, rng: np.random.Generator, model: SCModel = MODEL) -> np.ndarray:
    """Region volumes (mm^3), lognormal; the demo may pass the atlas's voxel counts instead."""
    return model.volume_median_mm3 * np.exp(model.volume_log_sd * rng.standard_normal(n_regions))


def expected_counts(xyz: np.ndarray, networks: np.ndarray, responder: bool, subject_scale: float = 1.0,
                    model: SCModel = MODEL, density: np.ndarray | None = None,
                    pair_density: np.ndarray | None = None) -> np.ndarray:
    """``mu`` (R, R) of the module docstring, zero diagonal; ``density`` the subject's ``u`` per
    network (indexed by network number; None: all 1); ``pair_density`` its factor per pair of
    networks (K, K) symmetric (``block_sd``; None: all 1)."""
    distance = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    same = networks[:, None] == networks[None, :]
    mu = model.scale * subject_scale * np.exp(-distance / model.length_mm) * (1 + model.within_boost * same)
    if density is not None:
        root = np.sqrt(np.asarray(density, dtype=float)[networks])
        mu = mu * root[:, None] * root[None, :]
    if pair_density is not None:
        mu = mu * np.asarray(pair_density, dtype=float)[networks[:, None], networks[None, :]]
    if responder:
        in_effect = np.isin(networks, model.effect_networks)
        mu = mu * (1 + model.effect * (in_effect[:, None] & in_effect[None, :]))
    np.fill_diagonal(mu, 0.0)
    return mu


def simulate_counts(xyz: np.ndarray, networks: np.ndarray, responders: Sequence[bool], seed: int,
                    model: SCModel = MODEL) -> tuple[np.ndarray, np.ndarray]:
    """Streamline counts (S, R, R), symmetric, and the subject scales (S,), seeded."""
    rng = np.random.default_rng([seed, 424])  # a stream of its own: the demo's draws stay as they are
    n = len(networks)
    i, j = np.triu_indices(n, 1)
    counts = np.zeros((len(responders), n, n), dtype=np.int64)
    scales = rng.uniform(*model.subject_scale_range, size=len(responders))
    k = int(networks.max()) + 1
    density = np.exp(model.network_sd * rng.standard_normal((len(responders), k)))
    pairs = None
    if model.block_sd > 0:  # drawn only when used: the default demo's counts stay as they were
        z = np.triu(rng.standard_normal((len(responders), k, k)))
        pairs = np.exp(model.block_sd * (z + np.triu(z, 1).transpose(0, 2, 1)))
    for s, responder in enumerate(responders):
        mu = expected_counts(xyz, networks, bool(responder), scales[s], model, density[s],
                             None if pairs is None else pairs[s])
        upper = rng.poisson(mu[i, j])
        counts[s, i, j] = upper
        counts[s, j, i] = upper
    return counts, scales


def write_demo_connectomes(root: str | Path, ground_truth: str | Path, seed: int,
                           model: SCModel = MODEL) -> list[Path]:
    """One tck2connectome-style CSV per subject under ``root/sub-<label>/dwi/``, the region volumes
    and ``root/ground_truth_sc.json`` (the model and who carries the effect); the CSV paths."""
    truth = read_json(ground_truth)
    regions = pd.DataFrame(truth["regions"])
    xyz = regions[["x", "y", "z"]].to_numpy(dtype=float)
    networks = regions["network"].to_numpy(dtype=int)
    subjects = sorted(truth["subjects"])
    responders = [int(truth["subjects"][s]["response"]) == 1 for s in subjects]
    counts, scales = simulate_counts(xyz, networks, responders, seed, model)
    root = Path(root)
    paths = []
    for s, participant in enumerate(subjects):
        label = participant.removeprefix("sub-")
        path = root / f"sub-{label}" / "dwi" / CONNECTOME_NAME.format(label=label)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # tck2connectome's default storage: the upper triangle
            np.savetxt(tmp, np.triu(counts[s], 1), fmt="%d", delimiter=",")
        paths.append(path)
    volumes = region_volumes(len(regions), np.random.default_rng([seed, 425]), model)
    write_tsv(root / VOLUMES_NAME, pd.DataFrame({"index": regions["index"], "name": regions["name"],
                                                 "volume_mm3": volumes}))
    write_json(root / "dataset_description.json", {
        "Name": "fmriflow synthetic demo: QSIRecon-shaped structural connectomes", "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fmriflow demo-data", "Version": __version__, "CodeURL": CODE_URL,
                         "Description": "Streamline counts drawn from fmriflow.sc.demo.SCModel; no tractography "
                                        "ran (MRtrix tck2connectome layout: comma-separated, upper triangle)."}],
    })
    fields = asdict(model)
    if not model.block_sd:
        del fields["block_sd"]  # only when used, so that the default demo's file stays as it was
    write_json(root / "ground_truth_sc.json", {
        "model": fields, "seed": seed,
        "subjects": {p: {"responder": r, "scale": float(k)} for p, r, k in zip(subjects, responders, scales)},
    })
    return paths
