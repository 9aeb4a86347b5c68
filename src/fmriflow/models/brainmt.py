"""BrainMT: convolutions per frame, bidirectional Mamba over a temporal-first token sequence, then attention.

Input ``(batch, frames, X, Y, Z)``: z-scored volumes on the 91 x 109 x 91 MNI 2 mm grid
(``fmriflow.datasets.voxels``). Each frame goes through a convolutional stem (two stride-2
convolutions) and two stages of a residual convolution block followed by a stride-2
downsampling convolution: 16x fewer voxels per axis, e.g. 6 x 7 x 6 = 252 spatial tokens of
width ``dim`` per frame. Every token gets a learned spatial embedding (its location) plus a
learned temporal embedding (its frame). Tokens are ordered temporal-first: all frames of
location 0, then all frames of location 1, ... so the scan runs along each location's time
course before moving on. A CLS token goes in front; ``mamba_layers`` pre-norm residual
bidirectional Mamba blocks mix the sequence in linear time, ``attention_layers`` transformer
blocks then attend over all of it, and an MLP head reads the CLS token (classification logits
or a regression value).

``mixer="attention"`` builds the attention-only model of the same size for comparison: each
bidirectional Mamba block becomes a transformer block (12 d^2 weights against the two Mamba
blocks' ~12.6 d^2 at the default width).

Sources (written from the paper and the authors' published description, no code copied):
- Kannan, Lindquist and Caffo, "BrainMT: a hybrid Mamba-Transformer architecture for modeling
  long-range dependencies in functional MRI data", MICCAI 2025 (arXiv 2506.22591).

Design choices:
- Normalisation: RMSNorm before each Mamba block (as BrainMT), LayerNorm inside the
  transformer blocks (``fmriflow.models.layers.Block``); GroupNorm(1) in the convolutions,
  which has no running statistics, so training and evaluation agree and DDP needs no sync.
- The residual stream stays fp32 under bf16 autocast (the embeddings are fp32 and the
  blocks' outputs are added to it), as mamba-ssm's ``residual_in_fp32``.
- ``checkpoint=True`` recomputes each block, and the stem ``stem_chunk`` frames at a time, in
  the backward pass instead of storing their activations: the way to fit long windows in GPU
  memory. By a rough count (bf16, batch 2, 200 frames: 100,802 tokens), stored activations
  are ~22 KB a token for each bidirectional Mamba block and for each transformer block, and
  ~16 MB a frame for the stem: ~50 GB in all without checkpointing, ~10 GB with it
  (``benchmarks/mamba_memory.py`` measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .grids import INPUT_GRIDS
from .layers import Block, init_linear, named_config, trunc_normal_
from .ssm import BiMamba

MIXERS = ("mamba", "attention")


@dataclass
class BrainMTConfig:
    img_size: tuple[int, int, int] = INPUT_GRIDS["brainmt"]  # voxels per frame (the A424 / MNI 2 mm grid)
    max_frames: int = 200  # longest window; the temporal embedding has one row per frame
    conv_channels: tuple[int, int, int] = (16, 32, 64)  # stem conv 1, stem conv 2 (= stage 1), stage 2
    dim: int = 512  # token width after the last downsampling
    mamba_layers: int = 12  # bidirectional Mamba blocks (transformer blocks when mixer="attention")
    attention_layers: int = 8  # transformer blocks after them
    n_heads: int = 2  # attention heads (head width 256 at dim 512, as BrainMT)
    mlp_ratio: float = 4.0  # transformer MLP width / dim
    d_state: int = 16  # Mamba state size per channel
    d_conv: int = 4  # Mamba causal convolution width
    expand: int = 2  # Mamba inner width / dim
    n_outputs: int = 1  # 1 for regression, the number of classes for classification
    head_dropout: float = 0.0  # dropout before the head's last layer
    mixer: str = "mamba"  # "mamba" (BrainMT) or "attention" (attention-only model of the same size)
    checkpoint: bool = False  # recompute blocks and the stem in the backward pass (activation checkpointing)
    stem_chunk: int = 32  # with checkpoint: frames per recomputed stem pass (bounds the stem's peak memory)
    backend: str | None = None  # Mamba path: None reads $FMRIFLOW_MAMBA_BACKEND (fmriflow.models.ssm)
    norm_eps: float = 1e-5

    def __post_init__(self):
        self.img_size = tuple(int(v) for v in self.img_size)
        self.conv_channels = tuple(int(v) for v in self.conv_channels)
        if len(self.img_size) != 3 or min(self.img_size) < 16:
            raise ValueError(f"'img_size' must be 3 sizes of at least 16 voxels; {self.img_size!r} was provided")
        if len(self.conv_channels) != 3 or min(self.conv_channels) < 1:
            raise ValueError(f"'conv_channels' must be 3 positive channel counts; {self.conv_channels!r} was provided")
        for name in ("max_frames", "dim", "n_heads", "d_state", "d_conv", "expand", "n_outputs", "stem_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer; {value!r} was provided")
        if self.dim % self.n_heads:
            raise ValueError(f"'dim' ({self.dim}) must be a multiple of 'n_heads' ({self.n_heads})")
        if self.mixer not in MIXERS:
            raise ValueError(f"'mixer' must be one of {MIXERS}; {self.mixer!r} was provided")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Spatial tokens per axis: four stride-2 convolutions (kernel 3, padding 1) halve each axis, rounding up."""
        return tuple(math.ceil(n / 16) for n in self.img_size)

    @property
    def n_spatial(self) -> int:
        return math.prod(self.grid)


# ---------------------------------------------------------------------------------------------
# building blocks


class ConvBlock(nn.Module):
    """Residual 3-D convolution block: x + conv(GELU(GroupNorm(conv(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.norm(self.conv1(x))))


class ConvStem(nn.Module):
    """Per-frame feature extractor: ``(N, 1, X, Y, Z)`` -> ``(N, dim, X/16, Y/16, Z/16)`` (sizes rounded up)."""

    def __init__(self, channels: tuple[int, int, int], dim: int):
        super().__init__()
        c0, c1, c2 = channels
        self.stem = nn.Sequential(nn.Conv3d(1, c0, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv3d(c0, c1, 3, stride=2, padding=1), nn.GELU())
        self.stage1 = nn.Sequential(ConvBlock(c1), nn.GroupNorm(1, c1), nn.Conv3d(c1, c2, 3, stride=2, padding=1))
        self.stage2 = nn.Sequential(ConvBlock(c2), nn.GroupNorm(1, c2), nn.Conv3d(c2, dim, 3, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.stage2(self.stage1(self.stem(x)))


class MambaLayer(nn.Module):
    """Pre-norm residual bidirectional Mamba: x + BiMamba(RMSNorm(x))."""

    def __init__(self, dim: int, config: BrainMTConfig):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=config.norm_eps)
        self.mixer = BiMamba(dim, backend=config.backend, d_state=config.d_state, d_conv=config.d_conv,
                             expand=config.expand)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))


# ---------------------------------------------------------------------------------------------
# the model


class BrainMT(nn.Module):
    """Hybrid Mamba-transformer on 4-D fMRI windows ``(batch, frames, X, Y, Z)``."""

    def __init__(self, config: BrainMTConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.stem = ConvStem(config.conv_channels, d)
        self.spatial_embed = nn.Parameter(torch.zeros(1, config.n_spatial, 1, d))
        self.temporal_embed = nn.Parameter(torch.zeros(1, 1, config.max_frames, d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if config.mixer == "mamba":
            first = [MambaLayer(d, config) for _ in range(config.mamba_layers)]
        else:
            first = [self._attention_block() for _ in range(config.mamba_layers)]
        self.mamba_blocks = nn.ModuleList(first)
        self.attention_blocks = nn.ModuleList(self._attention_block() for _ in range(config.attention_layers))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(config.head_dropout),
                                  nn.Linear(d, config.n_outputs))
        for p in (self.spatial_embed, self.temporal_embed, self.cls_token):
            trunc_normal_(p)
            p._no_weight_decay = True
        for module in (*self.attention_blocks, *([] if config.mixer == "mamba" else self.mamba_blocks), self.head):
            module.apply(init_linear)

    def _attention_block(self) -> Block:
        c = self.config
        return Block(c.dim, c.n_heads, c.mlp_ratio, 0.0, c.norm_eps, "sdpa")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def n_tokens(self, n_frames: int) -> int:
        """Sequence length of a window of ``n_frames`` (the CLS token included)."""
        return 1 + self.config.n_spatial * n_frames

    def tokens(self, x: Tensor) -> Tensor:
        """Embedded tokens ``(B, 1 + N*T, dim)``, CLS first, then temporal-first (location-major) order."""
        self._check_input(x)
        B, T = x.shape[:2]
        frames = x.reshape(B * T, 1, *x.shape[2:])  # (B*T, 1, X, Y, Z)
        if self.config.checkpoint and torch.is_grad_enabled():
            # a few frames at a time, so the backward pass recomputes one chunk's activations at once
            features = torch.cat([checkpoint(self.stem, chunk, use_reentrant=False)
                                  for chunk in frames.split(self.config.stem_chunk)])
        else:
            features = self.stem(frames)  # (B*T, dim, gx, gy, gz)
        features = features.flatten(2).transpose(1, 2).reshape(B, T, self.config.n_spatial, -1)  # (B, T, N, dim)
        tokens = features.transpose(1, 2) + self.spatial_embed + self.temporal_embed[:, :, :T]  # (B, N, T, dim)
        tokens = tokens.reshape(B, -1, self.config.dim)  # (B, N*T, dim): location-major, frames inner
        return torch.cat([self.cls_token.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)  # (B, 1+N*T, dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """Every token after the blocks and the final norm: ``(B, 1 + N*T, dim)``."""
        h = self.tokens(x)
        for block in (*self.mamba_blocks, *self.attention_blocks):
            if self.config.checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)  # (B, 1+N*T, dim)
        return self.norm(h)

    def forward_head(self, features: Tensor) -> Tensor:
        """The head on the CLS token: ``(B, n_outputs)`` logits or regression values."""
        return self.head(features[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _check_input(self, x: Tensor) -> None:
        c = self.config
        if x.ndim != 5 or tuple(x.shape[2:]) != c.img_size:
            raise ValueError(f"'x' must have shape (batch, frames, {', '.join(map(str, c.img_size))}); "
                             f"got {tuple(x.shape)}")
        if not 0 < x.shape[1] <= c.max_frames:
            raise ValueError(f"'x' has {x.shape[1]} frames; the model takes 1 to max_frames={c.max_frames}")



# ---------------------------------------------------------------------------------------------
# named configs


CONFIGS: dict[str, BrainMTConfig] = {
    # the paper's shape: width 512, 12 bidirectional Mamba + 8 transformer blocks, 200 frames
    "brainmt": BrainMTConfig(),
    "brainmt-attention": BrainMTConfig(mixer="attention"),
    # fast unit tests and the CPU demo only
    "tiny": BrainMTConfig(conv_channels=(2, 4, 8), dim=16, mamba_layers=2, attention_layers=1, n_heads=2,
                          d_state=4, expand=2),
    "tiny-attention": BrainMTConfig(conv_channels=(2, 4, 8), dim=16, mamba_layers=2, attention_layers=1,
                                    n_heads=2, d_state=4, expand=2, mixer="attention"),
}


def create_brainmt(name: str, **overrides) -> BrainMT:
    """Build the named config (``CONFIGS``), with any config field overridden by keyword."""
    return BrainMT(named_config(CONFIGS, name, **overrides))
