"""Brain-JEPA's encoder (the released ``target_encoder``) as an fmriflow module, for its frozen embeddings.

Input ``(B, R, T)``: R = 450 regions (Tian S3's 50 subcortical regions first, then Schaefer-400
17 networks), T = 160 frames. Each region's series is cut into patches of 16 frames (one
``Conv2d(1, H, (1, 16))``); tokens are region-major. A token's position is two halves:

- time: a fixed sine-cosine code of the patch index (``H/2`` channels, sines then cosines);
- space ("brain gradient positioning"): ``Linear(G, H/2)`` of the region's G = 30 functional
  gradient values, the result over all tokens scaled to [-1, 1] by its minimum and maximum.

Then pre-norm transformer blocks (``layers.Block``, LayerNorm eps 1e-6) and a final LayerNorm. The
embedding is the mean of the output tokens, as the authors' downstream models pool (their
``fc_norm`` after it belongs to a fine-tuned head, not to the release).

Sources (written from the paper and the released configuration, no code copied): Dong et al.,
"Brain-JEPA: brain dynamics foundation model with gradient positioning and spatiotemporal
masking", NeurIPS 2024; Assran et al., "Self-supervised learning from images with a joint-embedding
predictive architecture", CVPR 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .layers import Block


@dataclass
class BrainJEPAConfig:
    n_regions: int = 450
    n_frames: int = 160  # frames per window (the authors' crop_size[1])
    patch_size: int = 16  # frames per token
    hidden: int = 768  # vit_base
    n_layers: int = 12
    n_heads: int = 12
    mlp_ratio: float = 4.0
    gradient_dims: int = 30  # columns of the gradient table
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.n_frames % self.patch_size or self.hidden % 4:
            raise ValueError(f"'n_frames' ({self.n_frames}) must be a multiple of 'patch_size' ({self.patch_size}) "
                             f"and 'hidden' ({self.hidden}) of 4")


def time_code(n_regions: int, n_patches: int, dim: int) -> Tensor:
    """``(R*N, dim)``: sin(n * w_i) then cos(n * w_i), w_i = 10000**(-i / (dim/2)), n the patch index."""
    rate = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))  # (dim/2,)
    angle = np.tile(np.arange(n_patches, dtype=np.float64), n_regions)[:, None] * rate  # (R*N, dim/2)
    return torch.from_numpy(np.concatenate([np.sin(angle), np.cos(angle)], axis=1)).float()


class BrainJEPA(nn.Module):
    """``gradient`` (R, G): the functional gradients of the regions, in the input's row order (kept as a buffer)."""

    def __init__(self, config: BrainJEPAConfig, gradient):
        super().__init__()
        gradient = torch.as_tensor(np.asarray(gradient, dtype=np.float32)).clone()
        if tuple(gradient.shape) != (config.n_regions, config.gradient_dims):
            raise ValueError(f"'gradient' must have shape ({config.n_regions}, {config.gradient_dims}); "
                             f"got {tuple(gradient.shape)}")
        c = self.config = config
        self.n_regions = c.n_regions
        n_patches = c.n_frames // c.patch_size
        self.register_buffer("gradient", gradient)
        self.register_buffer("time", time_code(c.n_regions, n_patches, c.hidden // 2))
        self.patch_embed = nn.Conv2d(1, c.hidden, (1, c.patch_size), stride=(1, c.patch_size))
        self.gradient_proj = nn.Linear(c.gradient_dims, c.hidden // 2)
        self.blocks = nn.ModuleList(Block(c.hidden, c.n_heads, c.mlp_ratio, 0.0, c.norm_eps, "sdpa")
                                    for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.hidden, eps=c.norm_eps)

    def positions(self) -> Tensor:
        """``(R*N, hidden)``: the time code, then the scaled gradient projection."""
        space = self.gradient_proj(self.gradient).repeat_interleave(self.config.n_frames // self.config.patch_size, 0)
        space = (space - space.min()) / (space.max() - space.min()) * 2 - 1  # (R*N, hidden/2), in [-1, 1]
        return torch.cat([self.time, space], dim=1)  # (R*N, hidden)

    def forward_features(self, x: Tensor) -> Tensor:
        """Encoder output ``(B, R*N, hidden)`` after the final norm, every token (no masking)."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_regions, self.config.n_frames):
            raise ValueError(f"'x' must have shape (batch, {self.n_regions}, {self.config.n_frames}); "
                             f"got {tuple(x.shape)}")
        tokens = self.patch_embed(x[:, None]).flatten(2).transpose(1, 2)  # (B, R*N, H)
        tokens = tokens + self.positions()
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, hidden)``: the mean of the output tokens."""
        return self.forward_features(x).mean(dim=1)
