"""Train one fine-tuning variant: AdamW, early stopping on an inner validation split.

Inputs are cached per window (TS embedding, FC); the loss is binary cross-entropy on a
logit (classification) or MSE on a target standardised with the training subjects' mean
and sd (regression). The weights of the epoch with the lowest validation loss are kept,
among the epochs from ``min_epochs`` on: with a handful of validation subjects the loss
is noisy and often lowest at the untrained start (every logit near 0), so without the
floor a ResNet that needs 15-20 epochs to pick up an effect is stopped at epoch 0
(measured on synthetic cohorts of 24 subjects; see README, "Fine-tuning").
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..models.brainnetcnn import BrainNetCNN
from ..models.fmmtc import FMMTC, FMMTCConfig
from .settings import TrainSettings

# variant name -> FMMTC settings; 'no_pretrain' is concat fusion on a random encoder's embeddings
VARIANTS: dict[str, dict] = {
    "concat": dict(fusion="concat"),
    "sum": dict(fusion="sum"),
    "cross_attention": dict(fusion="cross_attention"),
    "moe": dict(fusion="moe"),
    "ts_only": dict(modalities="ts"),
    "fc_only": dict(modalities="fc"),
    "no_pretrain": dict(fusion="concat"),
}
FC_MODELS = ("brainnetcnn",)  # FC-only models outside FMMTC (fmriflow.models.brainnetcnn)


class FCModel(nn.Module):
    """An FC-only network called as FMMTC is, ``model(ts, fc)``; the TS embedding is ignored."""

    use_fc = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, ts: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        return self.net(fc)  # (B, R, R) -> (B, n_outputs)


def build(variant: str, ts_dim: int, settings: TrainSettings, n_regions: int = 0) -> FMMTC | FCModel:
    if variant == "brainnetcnn":
        return FCModel(BrainNetCNN(n_regions))
    if variant not in VARIANTS:
        raise ValueError(f"'variant' must be one of {(*VARIANTS, *FC_MODELS)}. Got: {variant!r}")
    config = FMMTCConfig(embed_dim=settings.embed_dim, resnet_width=settings.resnet_width, **VARIANTS[variant])
    return FMMTC(ts_dim, config)


class Target:
    """Maps labels to the training target and model outputs back to scores.

    Classification labels are 0/1 (``load_cohort`` checks), the indices of classes "0" and
    "1" whichever the fit rows hold; regression labels are standardised with the mean and
    sd of the fit rows.
    """

    def __init__(self, task: str, y_fit: np.ndarray):
        from ..datasets.participants import TargetEncoding

        self.task = task
        self.encoding = TargetEncoding.fit(task, y_fit if task == "regression" else (0, 1))

    def encode(self, y: np.ndarray) -> torch.Tensor:
        labels = y if self.task == "regression" else y.astype(np.int64)
        return torch.as_tensor(self.encoding.encode(labels), dtype=torch.float32)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return nn.functional.binary_cross_entropy_with_logits(out, target)
        return nn.functional.mse_loss(out, target)

    def score(self, out: torch.Tensor) -> np.ndarray:
        out = out.float().cpu().numpy()
        return 1.0 / (1.0 + np.exp(-out)) if self.task == "classification" else self.encoding.decode(out)


def _batches(n: int, size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, size):
        yield order[start:start + size]


def _outputs(model: FMMTC, ts: torch.Tensor, fc: torch.Tensor, size: int, device: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(ts[i].to(device), fc[i].to(device))[:, 0]
                          for i in _batches(len(ts), size, None)]) if len(ts) else torch.zeros(0)


def fit(variant: str, task: str, ts: np.ndarray, fc: np.ndarray, y: np.ndarray,
        fit_rows: np.ndarray, val_rows: np.ndarray, settings: TrainSettings, seed: int,
        init_fc: FMMTC | None = None) -> tuple[FMMTC, Target, dict]:
    """Train on ``fit_rows`` (window rows), stop on ``val_rows``; returns model, target map, log.

    ``init_fc``: a trained model whose FC branch (ResNet and projection) starts this one's
    (staged fusion: see ``fmriflow.finetune.run``).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(variant, ts.shape[1], settings, n_regions=fc.shape[-1]).to(settings.device)
    if init_fc is not None and model.use_fc:
        model.fc_encoder.load_state_dict(init_fc.fc_encoder.state_dict())
        model.fc_proj.load_state_dict(init_fc.fc_proj.state_dict())
    target = Target(task, y[fit_rows])
    ts_t, fc_t, y_t = torch.from_numpy(ts), torch.from_numpy(fc), target.encode(y)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if not 0 <= settings.min_epochs <= settings.max_epochs:
        raise ValueError(f"'min_epochs' must be between 0 and max_epochs ({settings.max_epochs}). "
                         f"Got: {settings.min_epochs}")
    best, best_loss, best_epoch, stale = copy.deepcopy(model.state_dict()), float("inf"), 0, 0
    for epoch in range(settings.max_epochs):
        model.train()
        for rows in _batches(len(fit_rows), settings.batch_size, rng):
            idx = torch.from_numpy(fit_rows[rows])
            if len(idx) < 2 and model.use_fc:  # batch norm needs two samples
                continue
            opt.zero_grad(set_to_none=True)
            out = model(ts_t[idx].to(settings.device), fc_t[idx].to(settings.device))[:, 0]
            target.loss(out, y_t[idx].to(settings.device)).backward()
            opt.step()
        if epoch + 1 < settings.min_epochs:
            continue  # no checkpoint is chosen yet: the validation pass would be thrown away
        vidx = torch.from_numpy(val_rows)
        val_loss = float(target.loss(_outputs(model, ts_t[vidx], fc_t[vidx], settings.batch_size,
                                              settings.device).cpu(), y_t[vidx]))
        if val_loss < best_loss - 1e-6:
            best, best_loss, best_epoch, stale = copy.deepcopy(model.state_dict()), val_loss, epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best)
    return model, target, {"best_epoch": best_epoch, "val_loss": best_loss, "epochs": epoch + 1}


def predict(model: FMMTC, target: Target, ts: np.ndarray, fc: np.ndarray, rows: np.ndarray,
            settings: TrainSettings) -> np.ndarray:
    idx = torch.from_numpy(rows)
    return target.score(_outputs(model, torch.from_numpy(ts)[idx], torch.from_numpy(fc)[idx],
                                 settings.batch_size, settings.device))
