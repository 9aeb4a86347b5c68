"""The demo's pretraining cohort: many unlabelled subjects as ready-made A424 region time series.

A foundation model is pretrained on a large cohort collected for no particular question (the
"pain-agnostic" data: UK Biobank for BrainLM) and fine-tuned on a small labelled one. This module
writes that large cohort beside the labelled demo, as a public dataset would ship it: one XCP-D
style table per run (``sub-<label>_task-rest_space-MNI152NLin6Asym_atlas-A424_stat-mean_timeseries.tsv``,
regions as columns, a JSON sidecar with the TR), ``participants.tsv`` without outcome columns and the
atlas's region table. A pretraining project reads it with ``input.mode: timeseries`` (no voxel steps).

Generative model (per subject; the labelled demo's networks, from the same population draw)
------------------------------------------------------------------------------------------
Latent factors, each a unit-variance AR(1) (``fmriflow.demo.cohort``'s signal model):
    one per network, whose lag-1 autocorrelation at TR 2 s is drawn per subject and network from
    ``U(ar_range)``: people differ in how slow each network's dynamics are, and the range spans
    both groups of the labelled cohort (0.6 and 0.9), which no outcome here marks; one global.
Signal
    ``x_r(t) = l_k(r) f_k(r)(t) + g f_global(t) + sqrt(1 - l^2 - g^2) u_r(t)``, with
    ``l_k = network_loading * exp(N(0, subject_sd^2))`` per network, ``g = global_loading *
    exp(N(0, global_sd^2))`` (the labelled demo's loadings with ``cohort``'s inter-subject
    spread; squares capped at ``MAX_SHARED``) and unique parts ``u_r`` AR(1) at the labelled
    demo's ``ar_coef``: zero-lag FC as the labelled cohort's non-responders, on average.
As XCP-D leaves a run
    white measurement noise (``noise_sd``), then the labelled project's band-pass (Butterworth,
    ``DENOISE_BAND`` Hz, order 2, as ``fmriflow.denoise``), in BOLD units: ``bold_units`` per unit
    signal (the scale the labelled cohort's parcellated, denoised series have), mean zero.
Randomness
    ``SeedSequence`` children: child 0 the subjects' draws of demographics, child ``1 + s``
    subject ``s``: the same files for any seed-equal call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..denoise import butterworth
from ..io import write_json, write_tsv
from .cohort import MAX_SHARED, _ar1
from .model import MODEL

ATLAS = "A424"
SPACE = "MNI152NLin6Asym"
DENOISE_BAND = (0.01, 0.08)  # Hz: the labelled project's denoise.high_pass / low_pass defaults


@dataclass(frozen=True, kw_only=True)
class PretrainingModel:
    """The pretraining cohort's constants (module docstring)."""

    ar_range: tuple[float, float] = (0.45, 0.95)
    subject_sd: float = 0.15
    global_sd: float = 0.35
    noise_sd: float = 0.2
    # the labelled demo's parcellated, denoised series (36P, 0.01-0.08 Hz) have about this scale per
    # unit signal (measured: their per-region IQR was 0.49 of this cohort's at 8), so that the card's
    # scaling statistics fit them
    bold_units: float = 4.0


PRETRAINING = PretrainingModel()


def run_name(label: str) -> str:
    return f"sub-{label}_task-rest_space-{SPACE}_atlas-{ATLAS}_stat-mean_timeseries.tsv"


def simulate_pretraining_subject(rng: np.random.Generator, networks: np.ndarray, n_trs: int,
                                 tr: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, R) series as written and the (K,) factor coefficients at ``tr`` that made it."""
    k = int(networks.max()) + 1
    phi = rng.uniform(*PRETRAINING.ar_range, k) ** (tr / 2.0)
    loading = MODEL.network_loading * np.exp(rng.normal(0, PRETRAINING.subject_sd, k))
    glob = MODEL.global_loading * np.exp(rng.normal(0, PRETRAINING.global_sd))
    factors = _ar1(rng, np.r_[phi, MODEL.ar_coef(tr)], n_trs)  # networks, global
    l_r = loading[networks]
    shrink = np.sqrt(np.minimum(1.0, MAX_SHARED / (l_r ** 2 + glob ** 2)))  # keep some unique variance
    l_r, g_r = l_r * shrink, glob * shrink
    unique = _ar1(rng, np.full(len(networks), MODEL.ar_coef(tr)), n_trs)
    x = l_r[:, None] * factors[networks] + g_r[:, None] * factors[k] + np.sqrt(1 - l_r ** 2 - g_r ** 2)[:, None] * unique
    y = (x + PRETRAINING.noise_sd * rng.standard_normal(x.shape)).T
    y = butterworth(y - y.mean(axis=0), tr, *DENOISE_BAND, 2)
    return PRETRAINING.bold_units * y, phi


def write_pretraining_cohort(root: Path, seq: np.random.SeedSequence, networks: np.ndarray,
                             labels_table: pd.DataFrame, n_subjects: int, n_trs: int, tr: float) -> dict[str, Any]:
    """Write the cohort under ``root`` (``xcp_d/``, ``participants.tsv``, the atlas table, its truth)."""
    demo_seq, *subject_seqs = seq.spawn(n_subjects + 1)
    rng = np.random.default_rng(demo_seq)
    width = max(3, len(str(n_subjects)))
    labels = [f"pt{s + 1:0{width}d}" for s in range(n_subjects)]
    names = list(labels_table["name"])
    coefficients = {}
    for label, sub_seq in zip(labels, subject_seqs):
        series, phi = simulate_pretraining_subject(np.random.default_rng(sub_seq), networks, n_trs, tr)
        path = root / "xcp_d" / f"sub-{label}" / "func" / run_name(label)
        write_tsv(path, pd.DataFrame(np.round(series, 4), columns=names))
        write_json(path.with_name(path.name.removesuffix(".tsv") + ".json"),
                   {"RepetitionTime": tr, "Atlas": ATLAS, "Description": "Simulated (fmriflow.demo.pretraining)"})
        coefficients[f"sub-{label}"] = np.round(phi, 6).tolist()
    write_tsv(root / "xcp_d" / "participants.tsv", pd.DataFrame({
        "participant_id": [f"sub-{label}" for label in labels],
        "age": rng.integers(20, 80, n_subjects),
        "sex": rng.choice(["F", "M"], n_subjects),
    }))
    write_tsv(root / f"atlas-{ATLAS}_dseg.tsv", labels_table[["index", "name", "x", "y", "z"]])
    write_json(root / "ground_truth.json", {
        "Description": "Pretraining cohort of the fmriflow demo: unlabelled A424 region time series; "
                       "see fmriflow.demo.pretraining's docstring. factor_ar_coef: each subject's "
                       "network factors' lag-1 autocorrelation at the TR (network 0, 1, ...).",
        "settings": {"n_subjects": n_subjects, "n_trs": n_trs, "tr": tr},
        "model": {**asdict(PRETRAINING), "network_loading": MODEL.network_loading,
                  "global_loading": MODEL.global_loading, "unique_ar_coef": MODEL.ar_coef(tr),
                  "band_hz": list(DENOISE_BAND), "networks": "regions' networks: ../ground_truth/regions.tsv"},
        "factor_ar_coef": coefficients,
    })
    return {"pretraining_subjects": n_subjects}
