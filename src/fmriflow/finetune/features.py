"""Inputs of every fine-tuning variant, computed once per dataset window.

``window_fc``
    Pearson FC of each window's regions, Fisher z (r clipped to +-0.999 so z is finite),
    0 on the diagonal and for regions the window has no data for. Robust scaling does not
    change a correlation, so the scaled windows give the FC of the raw series.
``embed``
    the frozen encoder's pooled embedding of each window (pretrained, or a randomly
    initialised copy for the no-pretraining ablation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datasets.regions import REGION_MASK, SAMPLES
from ..models.brainlm import BrainLM, BrainLMConfig

Z_CLIP = 0.999


def window_fc(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(R, T) window and (R,) valid mask -> (R, R) float32 Fisher-z FC."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1))
    ok = np.asarray(valid, dtype=bool) & (norm > 0)
    z = np.zeros((x.shape[0], x.shape[0]), dtype=np.float64)
    xs = x[ok] / norm[ok, None]
    z[np.ix_(ok, ok)] = np.arctanh(np.clip(xs @ xs.T, -Z_CLIP, Z_CLIP))
    np.fill_diagonal(z, 0.0)
    return z.astype(np.float32)


def dataset_fc(dataset: str | Path, samples: np.ndarray) -> np.ndarray:
    """FC of the listed sample rows of a dataset folder: (len(samples), R, R) float32."""
    data = np.load(Path(dataset) / SAMPLES, mmap_mode="r")
    masks = np.load(Path(dataset) / REGION_MASK, mmap_mode="r")
    return np.stack([window_fc(data[i], masks[i]) for i in samples])


def load_encoder(model_path: str | Path, coords, pretrained: bool = True, seed: int = 0) -> BrainLM:
    """The pretraining step's model, frozen; with ``pretrained=False`` the same shape, random.

    ``model_path``: the ``pretrain`` rule's model.pt, or the ``model.safetensors`` of an encoder
    bundle (``finetune.encoder``), whose weights carry the atlas coordinates of its card.
    """
    if Path(model_path).suffix == ".safetensors":
        from ..bundle.read import load_bundle_encoder

        model = load_bundle_encoder(Path(model_path).parent, pretrained, seed)  # in eval mode
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    config = BrainLMConfig(**state["model_config"])
    torch.manual_seed(seed)
    model = BrainLM(config, coords)
    if pretrained:
        model.load_state_dict(state["model"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def embed(encoder: BrainLM, dataset: str | Path, samples: np.ndarray, batch_size: int = 16,
          device: str = "cpu") -> np.ndarray:
    """Pooled encoder embeddings of the listed sample rows: (len(samples), hidden) float32."""
    data = np.load(Path(dataset) / SAMPLES, mmap_mode="r")
    encoder = encoder.to(device)
    out = []
    for start in range(0, len(samples), batch_size):
        rows = samples[start:start + batch_size]
        x = torch.from_numpy(np.asarray(data[rows], dtype=np.float32)).to(device)
        out.append(encoder.encode(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden), np.float32)
