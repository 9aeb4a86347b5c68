"""NeuroSTORM: shifted-window Mamba over 4-D fMRI, with task prompt tuning.

Input ``(batch, frames, X, Y, Z)``: z-scored volumes cropped / padded to 96^3
(``fmriflow.datasets.voxels``). Each frame is cut into 6 x 6 x 6 patches (one token each, one
frame per token: 6x6x6x1), giving a 16 x 16 x 16 x T grid of tokens of width ``embed_dim``,
plus learned spatial and temporal embeddings. Stages of blocks follow, as in a 4-D Swin
network but with Mamba as the token mixer: a block cuts the grid into 4-D windows
(``window_size`` tokens per axis), runs a Mamba block along each window's tokens
((d, h, w, t) order, time fastest), then an MLP; every second block first shifts the grid
by half a window, so information crosses window borders. Between stages, patch merging
halves each spatial axis (2 x 2 x 2 tokens concatenated, LayerNorm, Linear to twice the
width); time keeps its resolution.

Task prompt tuning: with ``prompt_len > 0`` every block owns ``prompt_len`` learned tokens
that are put in front of each window's sequence before the Mamba block and dropped after
it. ``freeze_for_prompt_tuning`` leaves only the prompts and the head trainable.

Pretraining (masked reconstruction with window masking and spatiotemporal redundancy
dropout) is in ``fmriflow.models.neurostorm_mae``.

Sources (written from the paper and the authors' published description, no code copied):
- Wang et al., "Towards a general-purpose foundation model for fMRI analysis" (NeuroSTORM),
  arXiv 2506.11167, 2025.
- Kim et al., "SwiFT: Swin 4D fMRI Transformer", NeurIPS 2023 (the 4-D window layout).
- Liu et al., "Swin Transformer", ICCV 2021 (shifted windows, patch merging).

Design choices:
- The cyclic shift has no attention mask to hide the tokens it wraps around (a Mamba scan
  cannot be masked); the wrapped tokens simply join the window, as in NeuroSTORM's Mamba version.
- Grids not divisible by the window are zero-padded after the norm, and the padding is
  cropped after the block; an axis shorter than its window is one window and is never shifted.

The authors' released models (imported by ``fmriflow.bundle.import_neurostorm``) differ in four
switches, all off by default: their own first-stage window (``first_window_size``), a last stage
whose one window spans its whole spatial grid and never shifts (their ``last_layer_full_MSA``),
spatial and temporal embeddings added before every stage (``stage_embeddings``), and a head
without LayerNorm (``head_norm=False``). ``n_outputs=0`` builds the encoder without a head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import windows as W
from .grids import INPUT_GRIDS
from .layers import MLP, init_linear, named_config, trunc_normal_
from .ssm import create_mamba


@dataclass
class NeuroSTORMConfig:
    img_size: tuple[int, int, int] = INPUT_GRIDS["neurostorm"]  # voxels per frame after crop / pad
    max_frames: int = 20  # longest window in frames; the temporal embedding has one row per frame
    patch_size: int = 6  # voxels per patch edge: 6 x 6 x 6 x 1 patches, one token each
    embed_dim: int = 36  # token width of the first stage (doubled by each patch merging)
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    window_size: tuple[int, int, int, int] = (4, 4, 4, 4)  # tokens per window along d, h, w, t
    mlp_ratio: float = 4.0  # MLP width / block width
    d_state: int = 16  # Mamba state size per channel
    d_conv: int = 4  # Mamba causal convolution width
    expand: int = 2  # Mamba inner width / block width
    prompt_len: int = 0  # task prompt tokens per block (0: no prompts, e.g. pretraining)
    n_outputs: int = 1  # head outputs: 1 for regression, the number of classes for classification; 0: no head
    # the authors' variants (CUHK-AIM-Group/NeuroSTORM), set by fmriflow.bundle.import_neurostorm
    first_window_size: tuple[int, int, int, int] | None = None  # the first stage's window (None: window_size)
    last_stage_full: bool = False  # last stage: one window over its whole spatial grid, never shifted
    stage_embeddings: bool = False  # spatial + temporal embeddings before every stage, not the first only
    head_norm: bool = True  # LayerNorm before the head's Linear (the authors' heads have none)
    # masked pretraining (fmriflow.models.neurostorm_mae)
    mask_ratio: float = 0.5  # fraction of mask windows hidden (rounded to a whole count)
    mask_window: tuple[int, int, int, int] = (4, 4, 4, 4)  # tokens per mask window along d, h, w, t
    strd_rate: float = 0.2  # spatiotemporal redundancy dropout: P(drop) = strd_rate * redundancy; 0 disables
    checkpoint: bool = False  # recompute blocks in the backward pass (activation checkpointing)
    backend: str | None = None  # Mamba path: None reads $FMRIFLOW_MAMBA_BACKEND (fmriflow.models.ssm)
    norm_eps: float = 1e-5

    def __post_init__(self):
        self.img_size = tuple(int(v) for v in self.img_size)
        self.depths = tuple(int(v) for v in self.depths)
        self.window_size = tuple(int(v) for v in self.window_size)
        self.mask_window = tuple(int(v) for v in self.mask_window)
        if self.first_window_size is not None:
            self.first_window_size = tuple(int(v) for v in self.first_window_size)
        for name in ("max_frames", "patch_size", "embed_dim", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer; {value!r} was provided")
        if not isinstance(self.n_outputs, int) or self.n_outputs < 0:
            raise ValueError(f"'n_outputs' must be a non-negative integer (0: no head); {self.n_outputs!r} was provided")
        if len(self.img_size) != 3 or any(n % self.patch_size for n in self.img_size):
            raise ValueError(f"'img_size' must be 3 multiples of patch_size={self.patch_size}; {self.img_size!r} was provided")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"'depths' must list at least one positive block count; {self.depths!r} was provided")
        for name in ("window_size", "mask_window", "first_window_size"):
            value = getattr(self, name)
            if value is None and name == "first_window_size":
                continue
            if len(value) != 4 or min(value) < 1:
                raise ValueError(f"'{name}' must be 4 positive sizes (d, h, w, t); {value!r} was provided")
        if not isinstance(self.prompt_len, int) or self.prompt_len < 0:
            raise ValueError(f"'prompt_len' must be a non-negative integer; {self.prompt_len!r} was provided")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"'mask_ratio' must be in [0, 1); {self.mask_ratio!r} was provided")
        if not 0.0 <= self.strd_rate <= 1.0:
            raise ValueError(f"'strd_rate' must be in [0, 1]; {self.strd_rate!r} was provided")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens per spatial axis of the first stage."""
        return tuple(n // self.patch_size for n in self.img_size)

    def stage_grid(self, i: int) -> tuple[int, int, int]:
        """Tokens per spatial axis of stage ``i`` (each patch merging halves them, rounding up)."""
        return tuple(math.ceil(n / 2**i) for n in self.grid)

    def stage_window(self, i: int) -> tuple[tuple[int, int, int, int], bool]:
        """Stage ``i``'s window (d, h, w, t) and whether its odd blocks shift it."""
        last = i == len(self.depths) - 1
        if last and self.last_stage_full:
            return (*self.stage_grid(i), self.window_size[3]), False
        if i == 0 and self.first_window_size is not None:
            return self.first_window_size, True
        return self.window_size, True


# ---------------------------------------------------------------------------------------------
# building blocks


class PatchEmbed(nn.Module):
    """``(B, T, X, Y, Z)`` -> ``(B, X/p, Y/p, Z/p, T, C)``: one linear map per p^3 patch of a frame."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(1, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        B, T = x.shape[:2]
        tokens = self.proj(x.reshape(B * T, 1, *x.shape[2:]))  # (B*T, C, D, H, W)
        return tokens.view(B, T, *tokens.shape[1:]).permute(0, 3, 4, 5, 1, 2)  # (B, D, H, W, T, C)


class WindowMambaBlock(nn.Module):
    """x + Mamba over (shifted) 4-D windows of norm(x), then x + MLP(norm(x)); optional prompt tokens."""

    def __init__(self, dim: int, window: tuple[int, ...], shifted: bool, config: NeuroSTORMConfig):
        super().__init__()
        self.window = window
        self.shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0, 0)
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mamba = create_mamba(dim, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
                                  backend=config.backend)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio), 0.0)
        if config.prompt_len:
            self.prompt = nn.Parameter(trunc_normal_(torch.empty(1, config.prompt_len, dim)))
            self.prompt._no_weight_decay = True
        else:
            self.prompt = None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, T, C)`` -> same shape."""
        grid = x.shape[1:5]
        window, shift = W.effective_window(grid, self.window, self.shift)
        h = W.pad_to_windows(self.norm1(x), window)
        padded = h.shape[1:5]
        tokens = W.partition(W.roll(h, shift), window)  # (B*nW, n, C)
        if self.prompt is not None:
            prompt = self.prompt.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
            tokens = self.mamba(torch.cat([prompt, tokens], dim=1))[:, prompt.shape[1]:]  # (B*nW, n, C)
        else:
            tokens = self.mamba(tokens)  # (B*nW, n, C)
        h = W.roll(W.unpartition(tokens, window, padded), shift, inverse=True)
        x = x + h[:, :grid[0], :grid[1], :grid[2], :grid[3]]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve each spatial axis: 2 x 2 x 2 neighbours concatenated, LayerNorm, Linear to 2C; time unchanged."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim, eps=eps)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, T, C)`` -> ``(B, ceil(D/2), ceil(H/2), ceil(W/2), T, 2C)``."""
        D, H, W_ = x.shape[1:4]
        x = F.pad(x, (0, 0, 0, 0, 0, W_ % 2, 0, H % 2, 0, D % 2))
        parts = [x[:, i::2, j::2, k::2] for i in range(2) for j in range(2) for k in range(2)]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class Stage(nn.Module):
    """``depth`` window-Mamba blocks, shifted every second block (unless ``shifts`` is False)."""

    def __init__(self, dim: int, depth: int, config: NeuroSTORMConfig, window: tuple[int, ...] | None = None,
                 shifts: bool = True):
        super().__init__()
        window = config.window_size if window is None else window
        self.blocks = nn.ModuleList(WindowMambaBlock(dim, window, shifts and i % 2 == 1, config) for i in range(depth))
        self.use_checkpoint = config.checkpoint

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


# ---------------------------------------------------------------------------------------------
# backbone and task model


class NeuroSTORMBackbone(nn.Module):
    """Patch embedding, position embeddings and the stages; ``forward`` returns every stage's output."""

    def __init__(self, config: NeuroSTORMConfig):
        super().__init__()
        self.config = config
        C = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, C)
        self.spatial_embed = nn.Parameter(trunc_normal_(torch.empty(1, *config.grid, 1, C)))
        self.temporal_embed = nn.Parameter(trunc_normal_(torch.empty(1, 1, 1, 1, config.max_frames, C)))
        # the authors' code adds a spatial and a temporal table before every stage ("1", "2", ...)
        later = range(1, len(config.depths)) if config.stage_embeddings else ()
        self.stage_spatial_embeds = nn.ParameterDict(
            {str(i): trunc_normal_(torch.empty(1, *config.stage_grid(i), 1, C * 2**i)) for i in later})
        self.stage_temporal_embeds = nn.ParameterDict(
            {str(i): trunc_normal_(torch.empty(1, 1, 1, 1, config.max_frames, C * 2**i)) for i in later})
        for p in (self.spatial_embed, self.temporal_embed, *self.stage_spatial_embeds.values(),
                  *self.stage_temporal_embeds.values()):
            p._no_weight_decay = True
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            dim = C * 2**i
            self.stages.append(Stage(dim, depth, config, *config.stage_window(i)))
            if i < len(config.depths) - 1:
                self.merges.append(PatchMerging(dim, config.norm_eps))
        for module in self.modules():  # Mamba blocks keep their own initialisation (dt_proj, A_log, D)
            if isinstance(module, (MLP, PatchMerging)):
                module.apply(init_linear)

    @property
    def out_dim(self) -> int:
        return self.config.embed_dim * 2 ** (len(self.config.depths) - 1)

    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens ``(B, D, H, W, T, C)`` before the position embeddings."""
        c = self.config
        if x.ndim != 5 or tuple(x.shape[2:]) != c.img_size:
            raise ValueError(f"'x' must have shape (batch, frames, {', '.join(map(str, c.img_size))}); got {tuple(x.shape)}")
        if not 0 < x.shape[1] <= c.max_frames:
            raise ValueError(f"'x' has {x.shape[1]} frames; the model takes 1 to max_frames={c.max_frames}")
        return self.patch_embed(x)

    def forward_tokens(self, tokens: Tensor) -> list[Tensor]:
        """Stage outputs (before each merging) from embedded tokens ``(B, D, H, W, T, C)``."""
        T = tokens.shape[4]
        x = tokens + self.spatial_embed + self.temporal_embed[..., :T, :]
        outputs = []
        for i, stage in enumerate(self.stages):
            if str(i) in self.stage_spatial_embeds:
                x = x + self.stage_spatial_embeds[str(i)] + self.stage_temporal_embeds[str(i)][..., :T, :]
            x = stage(x)
            outputs.append(x)
            if i < len(self.merges):
                x = self.merges[i](x)
        return outputs

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_tokens(self.embed(x))


class NeuroSTORM(nn.Module):
    """Backbone plus a head on the mean of the last stage's tokens (classification or regression)."""

    def __init__(self, config: NeuroSTORMConfig):
        super().__init__()
        self.config = config
        self.backbone = NeuroSTORMBackbone(config)
        dim = self.backbone.out_dim
        if config.n_outputs:  # the Linear stays ``head.1`` with or without the norm
            norm = nn.LayerNorm(dim, eps=config.norm_eps) if config.head_norm else nn.Identity()
            self.head = nn.Sequential(norm, nn.Linear(dim, config.n_outputs))
            self.head.apply(init_linear)
        else:
            self.head = None

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's token grid ``(B, D', H', W', T, C')``."""
        return self.backbone(x)[-1]

    def encode(self, x: Tensor) -> Tensor:
        """The embedding ``(B, C')``: the mean of the last stage's tokens (what the head sees)."""
        return self.forward_features(x).flatten(1, 4).mean(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """``(B, n_outputs)``; without a head (``n_outputs=0``) the pooled embedding ``(B, C')``."""
        pooled = features.flatten(1, 4).mean(dim=1)
        return pooled if self.head is None else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def prompt_parameter_names(model: nn.Module) -> list[str]:
    """Names of the prompt tokens of a model's window blocks."""
    return [name for name, _ in model.named_parameters() if name.endswith(".prompt")]


def freeze_for_prompt_tuning(model: NeuroSTORM) -> list[str]:
    """Freeze everything but the prompts and the head; returns the names left trainable."""
    if not model.config.prompt_len or model.head is None:
        raise ValueError("prompt tuning needs a model built with prompt_len > 0 and a head (n_outputs > 0)")
    trainable = set(prompt_parameter_names(model)) | {f"head.{n}" for n, _ in model.head.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    return sorted(trainable)


def load_pretrained_backbone(model: NeuroSTORM, state: dict[str, Tensor], prefix: str = "encoder.") -> None:
    """Copy a pretrained encoder (the MAE's ``encoder.*`` weights) into ``model.backbone``.

    Every backbone weight must be there except the prompts, which pretraining does not have.
    """
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        result = model.backbone.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"pretrained weights do not fit the backbone: {str(exc)[:500]}") from exc
    missing = [k for k in result.missing_keys if not k.endswith(".prompt")]
    if missing or result.unexpected_keys:
        raise ValueError(f"pretrained weights do not fit the backbone: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")



# ---------------------------------------------------------------------------------------------
# named configs


CONFIGS: dict[str, NeuroSTORMConfig] = {
    # the paper's shape: 96^3 x 20 frames, width 36, stages of 2, 2, 6, 2 blocks, 4^4 windows
    "neurostorm": NeuroSTORMConfig(),
    # fast unit tests and the CPU demo only
    "tiny": NeuroSTORMConfig(embed_dim=8, depths=(2, 1), window_size=(2, 2, 2, 2), d_state=4,
                             mask_window=(2, 2, 2, 2), max_frames=20),
}


def create_neurostorm(name: str, **overrides) -> NeuroSTORM:
    """The task model of a named config (``CONFIGS``), any config field overridden by keyword."""
    return NeuroSTORM(neurostorm_config(name, **overrides))


def neurostorm_config(name: str, **overrides) -> NeuroSTORMConfig:
    """The named config (``CONFIGS``) with any field overridden by keyword."""
    return named_config(CONFIGS, name, **overrides)


def n_tokens(config: NeuroSTORMConfig, n_frames: int) -> int:
    """First-stage tokens of a window of ``n_frames``."""
    return math.prod(config.grid) * n_frames
