"""Transformer building blocks shared by fmriflow's models (pre-LN blocks, SDPA attention).

``Block`` is a pre-LayerNorm transformer block whose attention runs through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPUs) or, for
reference, the same in plain operations (``attention="eager"``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTIONS = ("sdpa", "eager")
INIT_STD = 0.02  # Linear weights: normal(0, INIT_STD) truncated at 2 standard deviations

ConfigT = TypeVar("ConfigT")


class Attention(nn.Module):
    """Multi-head self-attention: ``F.scaled_dot_product_attention``, or the same in plain ops (``eager``)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, kind: str = "sdpa"):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.kind = kind
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, C // self.n_heads)  # (B, L, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, L, d)
        p = self.dropout if self.training else 0.0
        if self.kind == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, L, d)
        else:
            weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, heads, L, L)
            y = F.dropout(weights, p) @ v  # (B, heads, L, d)
        y = y.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.proj_drop(self.proj(y))  # (B, L, C)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))  # (B, L, dim)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float, eps: float, attention: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, n_heads, dropout, attention)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))  # (B, L, dim)
        return x + self.mlp(self.ln2(x))  # (B, L, dim)


def sincos_encoding(n_positions: int, dim: int) -> Tensor:
    """Fixed sine-cosine encoding ``(n_positions, dim)``: sin in the first half, cos in the second."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * freqs[None, :]  # (n, half)
    enc = torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, 2*half)
    return F.pad(enc, (0, dim - 2 * half))  # (n, dim): a zero column when dim is odd


def trunc_normal_(tensor: Tensor, std: float = INIT_STD) -> Tensor:
    """Normal(0, std) truncated at two standard deviations, in place."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_linear(module: nn.Module) -> None:
    """``module.apply(init_linear)``: truncated-normal weights and zero biases for every Linear."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def named_config(configs: Mapping[str, ConfigT], name: str, **overrides: Any) -> ConfigT:
    """``configs[name]`` with any of its dataclass fields replaced by keyword (validated again)."""
    if name not in configs:
        raise ValueError(f"'name' must be one of {tuple(configs)}; {name!r} was provided")
    base = configs[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {type(base).__name__} field(s) {unknown}; allowed: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)
