"""NeuroSTORM pretraining: masked reconstruction with window masking and redundancy dropout.

The token grid ``(D, H, W, T)`` of a window (16 x 16 x 16 x frames at 96^3) is tiled by mask
windows of ``mask_window`` tokens; ``round(mask_ratio * n_windows)`` of them are hidden, whole
(a hidden block of space-time cannot be filled in by copying an adjacent voxel or frame).
Spatiotemporal redundancy dropout (STRD) then hides, while training, visible tokens that
repeat their neighbours: a token's redundancy is the mean cosine similarity (negative values
taken as 0) of its patch to its 6 spatial neighbours in the same frame, averaged with the
same for its 2 temporal neighbours at the same place, and it is dropped with probability
``strd_rate * redundancy``. Hidden tokens enter the encoder as a learned mask token (the grid
stays whole, as the windows need). A light decoder mirrors the stages: a linear expansion
back to each finer grid plus the encoder's output there (a U-Net skip, which at hidden places
only ever saw the mask token), then a linear map to the 6^3 voxels of every patch. The loss
is the MSE over the voxels of the window-masked patches; tokens dropped by STRD are withheld
input, not targets.

All randomness comes from one uniform ``noise`` vector per sample (``n_noise`` values: the
mask windows' ranks, then one draw per token for STRD), so a training step is a function of
(seed, step), as ``fmriflow.train`` needs for exact resumption.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import windows as W
from .layers import init_linear, trunc_normal_
from .neurostorm import CONFIGS, NeuroSTORMBackbone, NeuroSTORMConfig, neurostorm_config


@dataclass
class MAEOutput:
    loss: Tensor  # () MSE over the voxels of window-masked patches, fp32
    pred: Tensor  # (B, D, H, W, T, p^3) reconstruction of every patch
    mask: Tensor  # (B, D, H, W, T) bool: hidden by window masking (the loss's patches)
    dropped: Tensor  # (B, D, H, W, T) bool: hidden by redundancy dropout (withheld input, not targets)


class PatchExpand(nn.Module):
    """``(B, D, H, W, T, C)`` -> ``(B, 2D, 2H, 2W, T, C/2)``: Linear to 8 x C/2, spread over 2 x 2 x 2, LayerNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        B, D, H, W_, T, C = x.shape
        x = self.expand(x).view(B, D, H, W_, T, 2, 2, 2, C // 2)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8).reshape(B, 2 * D, 2 * H, 2 * W_, T, C // 2)
        return self.norm(x)


class NeuroSTORMMAE(nn.Module):
    """Masked autoencoder around ``NeuroSTORMBackbone`` (``encoder``); its weights seed the task model."""

    def __init__(self, config: NeuroSTORMConfig):
        super().__init__()
        self.config = dataclasses.replace(config, prompt_len=0)
        c = self.config
        self.encoder = NeuroSTORMBackbone(self.config)
        self.mask_token = nn.Parameter(trunc_normal_(torch.empty(c.embed_dim)))
        self.mask_token._no_weight_decay = True
        dims = [c.embed_dim * 2**i for i in range(len(c.depths))]
        self.expands = nn.ModuleList(PatchExpand(d, c.norm_eps) for d in reversed(dims[1:]))
        self.decoder_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.pred = nn.Linear(c.embed_dim, c.patch_size**3)
        for module in (*self.expands, self.pred):
            module.apply(init_linear)

    def grid(self, n_frames: int) -> tuple[int, int, int, int]:
        return (*self.config.grid, n_frames)

    def n_noise(self, n_frames: int) -> int:
        """Uniform noise values per sample that one masked pass consumes."""
        grid = self.grid(n_frames)
        return W.n_windows(grid, self.config.mask_window) + math.prod(grid)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, T, X, Y, Z)`` -> ``(B, D, H, W, T, p^3)``, voxels of a patch in (x, y, z) order."""
        p = self.config.patch_size
        B, T, X, Y, Z = x.shape
        x = x.reshape(B, T, X // p, p, Y // p, p, Z // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, X // p, Y // p, Z // p, T, p**3)

    def forward(self, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> MAEOutput:
        """Masked pass on ``x`` (B, T, X, Y, Z); ``noise`` (B, n_noise) as given, else drawn with ``generator``."""
        tokens = self.encoder.embed(x)  # (B, D, H, W, T, C)
        B, T = x.shape[:2]
        grid = self.grid(T)
        n = self.n_noise(T)
        if noise is None:
            noise = torch.rand(B, n, generator=generator, device=generator.device if generator is not None else x.device)
        elif tuple(noise.shape) != (B, n):
            raise ValueError(f"'noise' must have shape {(B, n)}; got {tuple(noise.shape)}")
        noise = noise.to(x.device)
        n_win = n - math.prod(grid)
        mask = window_mask(noise[:, :n_win], grid, self.config.mask_window, self.config.mask_ratio)
        target = self.patchify(x)  # (B, D, H, W, T, P)
        if self.training and self.config.strd_rate > 0:
            chance = self.config.strd_rate * redundancy(target)
            dropped = (noise[:, n_win:].view(B, *grid) < chance) & ~mask
        else:
            dropped = torch.zeros_like(mask)
        hidden = (mask | dropped)[..., None]
        tokens = torch.where(hidden, self.mask_token.to(tokens.dtype), tokens)
        pred = self.decode(self.encoder.forward_tokens(tokens))  # (B, D, H, W, T, P)
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, D, H, W, T)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1)  # no host sync
        return MAEOutput(loss=loss, pred=pred, mask=mask, dropped=dropped)

    def decode(self, stage_outputs: list[Tensor]) -> Tensor:
        """From the last stage back to the first grid (expansion + skip), then to patch voxels."""
        x = stage_outputs[-1]
        for expand, skip in zip(self.expands, reversed(stage_outputs[:-1])):
            D, H, W_ = skip.shape[1:4]
            x = expand(x)[:, :D, :H, :W_] + skip  # (B, D, H, W, T, C_i)
        return self.pred(self.decoder_norm(x))  # (B, D, H, W, T, p^3)


def window_mask(noise: Tensor, grid: tuple[int, int, int, int], window: tuple[int, ...], ratio: float) -> Tensor:
    """Hide the ``round(ratio * n_windows)`` windows of lowest noise: ``(B, n_windows)`` -> bool ``(B, D, H, W, T)``.

    Windows tile the grid from its origin; along an axis that is not a multiple of the
    window the last window is partial.
    """
    counts = [math.ceil(n / w) for n, w in zip(grid, window)]
    n_win = math.prod(counts)
    if noise.shape[1] != n_win:
        raise ValueError(f"window noise must have {n_win} values per sample; got {noise.shape[1]}")
    rank = noise.argsort(dim=1).argsort(dim=1)  # (B, n_windows): each window's place in the noise order
    hidden = (rank < round(ratio * n_win)).view(-1, *counts)  # (B, nD, nH, nW, nT)
    for axis, (n, w) in enumerate(zip(grid, window)):
        hidden = hidden.repeat_interleave(w, dim=axis + 1).narrow(axis + 1, 0, n)
    return hidden


def redundancy(patches: Tensor) -> Tensor:
    """Per token, in [0, 1]: how much its patch repeats its spatial and temporal neighbours.

    ``patches`` (B, D, H, W, T, P). Spatial: mean over the (up to 6) neighbours in the same
    frame of max(0, cosine similarity); temporal: the same over the (up to 2) neighbouring
    frames; the result is their mean (or the one that exists, e.g. a single frame).
    """
    unit = F.normalize(patches.float(), dim=-1, eps=1e-6)
    spatial, has_spatial = _neighbour_similarity(unit, axes=(1, 2, 3))
    temporal, has_temporal = _neighbour_similarity(unit, axes=(4,))
    kinds = has_spatial.float() + has_temporal.float()
    return (spatial + temporal) / kinds.clamp_min(1)


def _neighbour_similarity(unit: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean max(0, cos) to the neighbours along ``axes`` per token, and whether any neighbour exists."""
    total = unit.new_zeros(unit.shape[:-1])
    count = unit.new_zeros(unit.shape[:-1])
    for axis in axes:
        n = unit.shape[axis]
        if n < 2:
            continue
        similarity = (unit.narrow(axis, 1, n - 1) * unit.narrow(axis, 0, n - 1)).sum(-1).clamp_min(0)
        for start in (0, 1):  # each neighbouring pair counts for both of its tokens
            total.narrow(axis, start, n - 1).add_(similarity)
            count.narrow(axis, start, n - 1).add_(1)
    return total / count.clamp_min(1), count > 0


def create_neurostorm_mae(name: str, **overrides) -> NeuroSTORMMAE:
    """The masked autoencoder of a named NeuroSTORM config (``fmriflow.models.neurostorm.CONFIGS``)."""
    return NeuroSTORMMAE(neurostorm_config(name, **overrides))


__all__ = ["CONFIGS", "MAEOutput", "NeuroSTORMMAE", "create_neurostorm_mae", "redundancy", "window_mask"]
