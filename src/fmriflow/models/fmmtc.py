"""FMMTC: a frozen time-series foundation model and a ResNet-18 on FC, fused.

Fan et al. 2025, "Foundation-Model-Boosted Multimodal Learning for fMRI-based Neuropathic
Pain Drug Response Prediction" (arXiv:2503.00210). The time-series (TS) branch is the
frozen pretrained encoder (here the BrainLM-style masked autoencoder of
``fmriflow.models.brainlm``) whose pooled embedding is projected to ``embed_dim`` (256);
the FC branch is a ResNet-18 on the one-channel 424 x 424 connectivity matrix, projected
to ``embed_dim``; the paper's fusion concatenates the two (512-d) into one linear layer.

For the ablation the same module also builds:

``sum``
    element-wise sum of the two 256-d embeddings, then the linear layer.
``cross_attention``
    each modality's embedding attends to both (a 2-token multi-head attention block with
    a residual and layer norm), the two outputs are concatenated.
``moe``
    a gate (softmax over the concatenated embeddings) mixes two experts, one per
    modality, each a linear map to the output.
``ts_only`` / ``fc_only``
    one branch, its embedding into the linear layer.

The encoder is applied outside this module (``embed_ts``): it is frozen, so its
embeddings are computed once per window and cached. ``FMMTCWithEncoder`` composes both for
attribution on the raw inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .resnet import ResNet18

FUSIONS = ("concat", "sum", "cross_attention", "moe")
MODALITIES = ("both", "ts", "fc")


@dataclass(frozen=True)
class FMMTCConfig:
    fusion: str = "concat"  # how the two 256-d embeddings are combined (FUSIONS)
    modalities: str = "both"  # both | ts (time series only) | fc (connectivity only)
    embed_dim: int = 256  # each branch's embedding, as in the paper
    resnet_width: int = 64  # ResNet-18 base width (64 in the paper; narrower for CPU demos)
    n_outputs: int = 1  # one logit (binary) or one value (regression)
    n_heads: int = 4  # cross-attention heads
    dropout: float = 0.1  # on the fused embedding

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"'fusion' must be one of {FUSIONS}. Got: {self.fusion!r}")
        if self.modalities not in MODALITIES:
            raise ValueError(f"'modalities' must be one of {MODALITIES}. Got: {self.modalities!r}")


class FMMTC(nn.Module):
    """Fusion head: (TS embedding (B, ts_dim), FC (B, R, R)) -> (B, n_outputs)."""

    def __init__(self, ts_dim: int, config: FMMTCConfig = FMMTCConfig()):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.use_ts = config.modalities in ("both", "ts")
        self.use_fc = config.modalities in ("both", "fc")
        if self.use_ts:
            self.ts_proj = nn.Linear(ts_dim, d)
        if self.use_fc:
            self.fc_encoder = ResNet18(in_channels=1, width=config.resnet_width)
            self.fc_proj = nn.Linear(self.fc_encoder.out_features, d)
        self.dropout = nn.Dropout(config.dropout)
        both = self.use_ts and self.use_fc
        fusion = config.fusion if both else "single"
        self.fusion = fusion
        if fusion == "cross_attention":
            self.attn = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.attn_norm = nn.LayerNorm(d)
        if fusion == "moe":
            self.gate = nn.Linear(2 * d, 2)
            self.experts = nn.ModuleList([nn.Linear(d, config.n_outputs) for _ in range(2)])
        else:
            in_dim = 2 * d if fusion in ("concat", "cross_attention") else d
            self.head = nn.Linear(in_dim, config.n_outputs)

    def embed(self, ts: Tensor | None, fc: Tensor | None) -> list[Tensor]:
        """The branch embeddings in use, each (B, embed_dim)."""
        out = []
        if self.use_ts:
            out.append(self.ts_proj(ts))  # (B, d)
        if self.use_fc:
            out.append(self.fc_proj(self.fc_encoder(fc.unsqueeze(1))))  # (B, 1, R, R) -> (B, d)
        return out

    def forward(self, ts: Tensor | None, fc: Tensor | None) -> Tensor:
        parts = self.embed(ts, fc)
        if self.fusion == "single":
            return self.head(self.dropout(parts[0]))  # (B, n_out)
        t, c = parts
        if self.fusion == "concat":
            return self.head(self.dropout(torch.cat([t, c], dim=1)))  # (B, 2d) -> (B, n_out)
        if self.fusion == "sum":
            return self.head(self.dropout(t + c))
        if self.fusion == "cross_attention":
            tokens = torch.stack([t, c], dim=1)  # (B, 2, d)
            mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)  # (B, 2, d)
            tokens = self.attn_norm(tokens + mixed)
            return self.head(self.dropout(tokens.flatten(1)))  # (B, 2d) -> (B, n_out)
        weights = torch.softmax(self.gate(torch.cat([t, c], dim=1)), dim=1)  # (B, 2)
        outs = torch.stack([self.experts[0](self.dropout(t)), self.experts[1](self.dropout(c))], dim=1)
        return (weights.unsqueeze(-1) * outs).sum(dim=1)  # (B, n_out)


class FMMTCWithEncoder(nn.Module):
    """Raw inputs -> prediction: frozen encoder on the window (B, R, T), FC (B, R, R) as is."""

    def __init__(self, encoder: nn.Module, head: FMMTC):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, ts: Tensor, fc: Tensor) -> Tensor:
        return self.head(self.encoder.encode(ts), fc)
