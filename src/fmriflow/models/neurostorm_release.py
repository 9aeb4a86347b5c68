"""NeuroSTORM's released masked autoencoder, as the authors built it, to hold their MAE checkpoints.

fmriflow's own pretraining (``neurostorm_mae``) decodes with linear expansions and skips; the
authors' MAE (CUHK-AIM-Group/NeuroSTORM, ``NeuroSTORMMAE``) differs, and an imported checkpoint
needs their layout to be reproduced whole:

- window masking: the token grid is cut into ``window_size`` windows; a hidden window's tokens are
  all replaced, position by position, by a learned window of mask tokens (``window_mask_token``,
  one row per position in the window), before the embeddings of the first stage are added;
- the encoder is ``NeuroSTORMBackbone`` (their switches set: ``stage_embeddings``, ...);
- the decoder mirrors the stages with window-Mamba stages of their own: the last stage's grid
  expanded (Linear to 4C, spread over 2 x 2 x 2, LayerNorm of C/2), then for each earlier stage,
  from the deepest, its blocks (``window_size`` windows, shifted every second block) followed by
  an expansion (all but the first stage), a LayerNorm and a Linear to the p^3 voxels of a patch;
- the loss: voxel MSE of each patch, averaged over each hidden window, then over hidden windows.

Written from reading the authors' module; no code copied.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from . import windows as W
from .neurostorm import NeuroSTORMBackbone, NeuroSTORMConfig, Stage
from .neurostorm_mae import PatchExpand


class NeuroSTORMReleasedMAE(nn.Module):
    """The authors' MAE: ``encoder`` (a ``NeuroSTORMBackbone``), window mask tokens and their decoder."""

    def __init__(self, config: NeuroSTORMConfig):
        super().__init__()
        self.config = dataclasses.replace(config, prompt_len=0, n_outputs=0)
        c = self.config
        self.encoder = NeuroSTORMBackbone(self.config)
        dims = [c.embed_dim * 2**i for i in range(len(c.depths))]
        self.window_mask_token = nn.Parameter(torch.zeros(math.prod(c.window_size), c.embed_dim))
        self.first_expand = PatchExpand(dims[-1], c.norm_eps)
        up = range(len(dims) - 2, -1, -1)  # the deepest stage but one first
        self.up_stages = nn.ModuleList(Stage(dims[i], c.depths[i], self.config) for i in up)
        self.up_expands = nn.ModuleList(PatchExpand(dims[i], c.norm_eps) for i in up if i > 0)
        self.norm_up = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.pred = nn.Linear(c.embed_dim, c.patch_size**3)

    def n_windows(self, n_frames: int) -> int:
        return W.n_windows((*self.config.grid, n_frames), self.config.window_size)

    def forward(self, x: Tensor, hidden: Tensor | None = None) -> Tensor:
        """Reconstruction ``(B, D, H, W, T, p^3)`` of ``x`` (B, T, X, Y, Z) with the windows in ``hidden``
        (B, n_windows) bool, in window order (d, h, w, t) replaced by the mask tokens; None hides none."""
        tokens = self.encoder.embed(x)  # (B, D, H, W, T, C)
        if hidden is not None:
            window = self.config.window_size
            parts = W.partition(tokens, window)  # (B * n_windows, n, C)
            parts = torch.where(hidden.reshape(-1, 1, 1), self.window_mask_token.to(parts.dtype), parts)
            tokens = W.unpartition(parts, window, tokens.shape[1:5])
        return self.decode(self.encoder.forward_tokens(tokens)[-1])

    def decode(self, latent: Tensor) -> Tensor:
        """The last stage's grid ``(B, D', H', W', T, C')`` -> patch voxels ``(B, D, H, W, T, p^3)``."""
        x = self.first_expand(latent)
        for k, stage in enumerate(self.up_stages):
            x = stage(x)
            if k < len(self.up_expands):
                x = self.up_expands[k](x)
        return self.pred(self.norm_up(x))

    def loss(self, x: Tensor, pred: Tensor, hidden: Tensor) -> Tensor:
        """Voxel MSE per patch, averaged within each hidden window, then over the hidden windows."""
        p = self.config.patch_size
        B, T, X, Y, Z = x.shape
        target = x.reshape(B, T, X // p, p, Y // p, p, Z // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        per_patch = (pred - target.reshape(pred.shape)).pow(2).mean(dim=-1, keepdim=True)  # (B, D, H, W, T, 1)
        per_window = W.partition(per_patch, self.config.window_size).mean(dim=(1, 2)).view(B, -1)  # (B, n_windows)
        return (per_window * hidden).sum() / hidden.sum()

    def forward_features(self, x: Tensor) -> Tensor:
        """The encoder's last stage ``(B, D', H', W', T, C')``, nothing hidden."""
        return self.encoder(x)[-1]

    def encode(self, x: Tensor) -> Tensor:
        """The embedding ``(B, C')``: the mean of the last stage's tokens, nothing hidden."""
        return self.forward_features(x).flatten(1, 4).mean(dim=1)
