"""Integrated gradients (captum) of a fused model, split by modality and by region.

IG attributes the difference between the model's output at the input and at a baseline
(zeros: a flat time series, an FC of zero) to every input element, and the attributions
of all elements sum to that difference (completeness), so time-series and FC
attributions are in the same units and their shares are comparable. Gradients run
through the frozen encoder to the raw window, so time-series attributions land on
regions and time points.

Per window: ``ts`` = sum of |IG| over the window's time series, ``fc`` = sum of |IG| over
the FC matrix; a region's share of each is its row (time series) or its row and column
(FC, halved, as the matrix is symmetric).
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients

from ..models.fmmtc import FMMTCWithEncoder


def integrated_gradients(model: FMMTCWithEncoder, ts: np.ndarray, fc: np.ndarray, n_steps: int = 32,
                         batch_size: int = 4, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per-window, per-region |IG|: (n, R) for the time series and (n, R) for FC."""
    model = model.to(device).eval()
    ig = IntegratedGradients(lambda t, c: model(t, c)[:, 0])
    ts_regions, fc_regions = [], []
    for start in range(0, len(ts), batch_size):
        t = torch.from_numpy(np.asarray(ts[start:start + batch_size], dtype=np.float32)).to(device)
        c = torch.from_numpy(np.asarray(fc[start:start + batch_size], dtype=np.float32)).to(device)
        a_ts, a_fc = ig.attribute((t, c), baselines=(torch.zeros_like(t), torch.zeros_like(c)),
                                  n_steps=n_steps, internal_batch_size=batch_size * n_steps)
        ts_regions.append(a_ts.abs().sum(dim=2).detach().cpu().numpy())  # (b, R)
        a_fc = a_fc.abs()
        fc_regions.append(((a_fc.sum(dim=2) + a_fc.sum(dim=1)) / 2).detach().cpu().numpy())  # (b, R)
    return np.concatenate(ts_regions), np.concatenate(fc_regions)
