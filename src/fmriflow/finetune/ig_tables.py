"""Integrated gradients of every fold's concat model, gathered into the attribution tables.

Attributions run on the agnostic set-up only (its test subjects cover every site), through
the frozen pretrained encoder to the raw test windows (``fmriflow.finetune.attribution``).
``attribution_modality.tsv``: summed |IG| of the time-series and FC branches per site, and
their shares; ``attribution_regions.tsv``: summed |IG| per region and modality, ranked by the
sum of each modality's normalised share.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..datasets.regions import SAMPLES
from . import features as feats
from .settings import FinetuneSettings

if TYPE_CHECKING:
    from ..models.fmmtc import FMMTC
    from .crossval import Fold, Inputs


class IGTables:
    """The frozen encoder (loaded once), and the attributions of every fold, in the order made."""

    def __init__(self, setup: str, model: str, coords: str, dataset: str, inputs: Inputs, settings: FinetuneSettings):
        from ..atlas import load_labels_table

        lut = load_labels_table(coords)
        self.region_names = lut["name"].tolist()
        self.enabled = bool(settings.attribution and setup == "agnostic")
        xyz = lut[["x", "y", "z"]].to_numpy(dtype=np.float32)
        self.encoder = feats.load_encoder(model, xyz, True, settings.seed) if self.enabled else None
        self.data = np.load(Path(dataset) / SAMPLES, mmap_mode="r")
        self.inputs = inputs
        self.site_column = settings.site_column
        self.ig_steps = settings.ig_steps
        self.device = settings.train.device
        self.rows: list[dict] = []
        self.regions: list[np.ndarray] = []

    def add(self, fold: Fold, model: FMMTC) -> None:
        """IG of ``model`` (a trained concat FMMTC) on the fold's test windows."""
        from ..models.fmmtc import FMMTCWithEncoder
        from .attribution import integrated_gradients

        inputs = self.inputs
        windows = np.asarray(self.data[inputs.samples[fold.test_rows]], dtype=np.float32)
        a_ts, a_fc = integrated_gradients(FMMTCWithEncoder(self.encoder, model), windows, inputs.fc[fold.test_rows],
                                          self.ig_steps, device=self.device)
        table = inputs.cohort.table
        for k, s in enumerate(fold.test_subject):
            site = table.loc[s, self.site_column] if self.site_column in table.columns else "all"
            self.rows.append({"setup": fold.setup, "repeat": fold.repeat, "fold": fold.index, "subject": s,
                              "site": str(site), "ts": float(a_ts[k].sum()), "fc": float(a_fc[k].sum())})
        self.regions.append(np.stack([a_ts.sum(axis=0), a_fc.sum(axis=0)]))

    def tables(self) -> dict[str, pd.DataFrame]:
        """The two attribution tables; none when nothing was attributed."""
        if not self.rows:
            return {}
        by_site = pd.DataFrame(self.rows).groupby(["setup", "site"], as_index=False)[["ts", "fc"]].sum()
        by_site["ts_share"] = by_site["ts"] / (by_site["ts"] + by_site["fc"])
        by_site["fc_share"] = 1 - by_site["ts_share"]
        total = np.sum(self.regions, axis=0)  # (2, R)
        regions = pd.DataFrame({"region": np.arange(1, len(self.region_names) + 1), "name": self.region_names,
                                "ts": total[0], "fc": total[1]})
        regions["total"] = regions["ts"] / regions["ts"].sum() + regions["fc"] / regions["fc"].sum()
        regions = regions.sort_values("total", ascending=False, kind="stable")
        regions["rank"] = np.arange(1, len(regions) + 1)
        return {"attribution_modality.tsv": by_site, "attribution_regions.tsv": regions}
