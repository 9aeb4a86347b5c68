"""A faithful twin of BrainLM's released v1 model (the ``BrainLMForPretraining`` layout), so that its
checkpoint runs inside fmriflow without the authors' code or the ``transformers`` version it pins.

It differs from fmriflow's own BrainLM-style model (``models.brainlm``) wherever the release does:

- tokens: ``Linear(patch)`` + ``Linear(raw MNI xyz)`` + a fixed sine-cosine table over the patch
  index (sine in even, cosine in odd channels; the table is stored in the checkpoint, 5000 rows);
  a CLS token without any position;
- blocks are post-norm (BERT order: ``LayerNorm(x + attention)``, ``LayerNorm(a + MLP)``, GELU,
  eps 1e-12), and each attention adds a depthwise convolution of the values along the token axis
  (kernel ``conv_kernel``, one filter per head). The release calls these Nystromformer layers;
  with its settings (landmarks = segment means = 64) they compute exact softmax attention, the
  only case this twin accepts;
- masking keeps ``int(L * (1 - mask_ratio))`` tokens (truncation, not rounding);
- the decoder adds its own xyz projection and the same time table at the encoder's width (so the
  decoder width must equal it, as in the release), and predicts a patch through
  ``Linear(D, D/2) -> LeakyReLU(0.1) -> Linear(D/2, P)`` (optionally tanh).

Sources (written from the paper and the released configuration, no code copied): Ortega Caro et
al., "BrainLM: a foundation model for brain activity recordings", ICLR 2024; Xiong et al.,
"Nystromformer", AAAI 2021 (the depthwise value convolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

V1_POOLS = ("cls", "mean")


@dataclass
class BrainLMv1Config:
    patch_size: int = 20  # TRs per token (the release's timepoint_patching_size)
    window: int = 200  # TRs per window (num_timepoints_per_voxel)
    hidden: int = 256  # encoder width
    n_layers: int = 4
    n_heads: int = 4
    intermediate: int = 1024  # MLP width of an encoder block
    decoder_hidden: int = 256  # must equal hidden: the release adds encoder-width positions in the decoder
    decoder_layers: int = 2
    decoder_heads: int = 4
    decoder_intermediate: int = 1024
    conv_kernel: int = 65  # depthwise value convolution along the tokens (odd)
    mask_ratio: float = 0.2
    tanh_decoder: bool = False  # tanh on the predicted patches
    norm_eps: float = 1e-12
    attention_dropout: float = 0.1  # on the attention weights (training only)
    position_dropout: float = 0.1  # on the embedded tokens (training only)
    max_positions: int = 5000  # rows of the time table
    pool: str = "cls"  # encode(): the CLS token (as the authors' inference notebooks) or the mean of the patch tokens

    def __post_init__(self):
        if self.decoder_hidden != self.hidden:
            raise ValueError(f"'decoder_hidden' ({self.decoder_hidden}) must equal 'hidden' ({self.hidden}): the "
                             "released decoder adds positions of the encoder's width")
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"'conv_kernel' must be odd; {self.conv_kernel} was provided")
        if self.window % self.patch_size:
            raise ValueError(f"'window' ({self.window}) must be a multiple of 'patch_size' ({self.patch_size})")
        if self.pool not in V1_POOLS:
            raise ValueError(f"'pool' must be one of {V1_POOLS}; {self.pool!r} was provided")


def time_table(rows: int, dim: int) -> Tensor:
    """``(rows, dim)``: sin(p * w_i) in channel 2i, cos(p * w_i) in 2i+1, w_i = 10000**(-2i/dim)."""
    rate = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (dim/2,)
    angle = torch.arange(rows)[:, None] * rate  # (rows, dim/2)
    table = torch.zeros(rows, dim)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table


class ConvAttention(nn.Module):
    """Softmax attention plus a per-head depthwise convolution of the values along the tokens."""

    def __init__(self, dim: int, heads: int, kernel: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.conv = nn.Conv2d(heads, heads, (kernel, 1), padding=(kernel // 2, 0), groups=heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        q, k, v = (proj(x).view(B, L, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))  # (B, h, L, d)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, h, L, d)
        out = out + self.conv(v)  # (B, h, L, d)
        return out.transpose(1, 2).reshape(B, L, C)  # (B, L, C)


class PostNormBlock(nn.Module):
    def __init__(self, dim: int, heads: int, intermediate: int, kernel: int, eps: float, dropout: float):
        super().__init__()
        self.attn = ConvAttention(dim, heads, kernel, dropout)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, intermediate)
        self.fc2 = nn.Linear(intermediate, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.proj(self.attn(x)))  # (B, L, C)
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))  # (B, L, C)


class BrainLMv1(nn.Module):
    """BrainLM v1 on ``(B, R, T)`` region series; ``coords`` (R, 3): the MNI xyz (mm) the release was
    trained with (A424_Coordinates.dat, used raw), kept as the ``coords`` buffer."""

    def __init__(self, config: BrainLMv1Config, coords):
        super().__init__()
        coords = torch.as_tensor(np.asarray(coords, dtype=np.float32)).clone()
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"'coords' must have shape (n_regions, 3); got {tuple(coords.shape)}")
        c = self.config = config
        self.n_regions = coords.shape[0]
        self.register_buffer("coords", coords)
        self.register_buffer("time", time_table(c.max_positions, c.hidden))
        self.register_buffer("decoder_time", time_table(c.max_positions, c.hidden))
        self.signal = nn.Linear(c.patch_size, c.hidden)
        self.xyz = nn.Linear(3, c.hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden))
        self.blocks = nn.ModuleList(PostNormBlock(c.hidden, c.n_heads, c.intermediate, c.conv_kernel, c.norm_eps,
                                                  c.attention_dropout) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(c.hidden, c.decoder_hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_hidden))
        self.decoder_xyz = nn.Linear(3, c.hidden)
        self.decoder_blocks = nn.ModuleList(
            PostNormBlock(c.decoder_hidden, c.decoder_heads, c.decoder_intermediate, c.conv_kernel, c.norm_eps,
                          c.attention_dropout) for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.decoder_hidden, eps=c.norm_eps)
        self.decoder_pred1 = nn.Linear(c.decoder_hidden, c.decoder_hidden // 2)
        self.decoder_pred2 = nn.Linear(c.decoder_hidden // 2, c.patch_size)
        self.position_dropout = nn.Dropout(c.position_dropout)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def _tokens(self, x: Tensor) -> Tensor:
        """``(B, R, T)`` -> ``(B, R*N, H)``, region-major: signal + xyz + time, before masking."""
        B, R, T = x.shape
        N = T // self.config.patch_size
        tokens = self.signal(x.reshape(B, R, N, self.config.patch_size))  # (B, R, N, H)
        tokens = tokens + self.xyz(self.coords)[None, :, None, :] + self.time[:N]  # (B, R, N, H)
        return self.position_dropout(tokens).flatten(1, 2)  # (B, R*N, H)

    def _encode(self, tokens: Tensor) -> Tensor:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, 1+K, H)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, 1+K, H)

    def forward_features(self, x: Tensor, mask_ratio: float = 0.0, noise: Tensor | None = None):
        """Encoder output ``(B, 1+K, H)`` (CLS first), with ``mask`` (B, L; 1 = hidden) and ``ids_restore``.

        ``mask_ratio`` 0 keeps every token in its order; otherwise tokens are shuffled by ``noise``
        (B, L) (uniform when None) and the first ``int(L * (1 - mask_ratio))`` kept, as the release does.
        """
        self._check_input(x)
        tokens = self._tokens(x)  # (B, L, H)
        B, L, H = tokens.shape
        if mask_ratio == 0.0 and noise is None:
            ids_restore = torch.arange(L, device=x.device).expand(B, L)
            return self._encode(tokens), torch.zeros(B, L, device=x.device), ids_restore
        noise = torch.rand(B, L, device=x.device) if noise is None else noise
        keep = int(L * (1 - mask_ratio))
        ids_shuffle = noise.argsort(dim=1)  # (B, L)
        ids_restore = ids_shuffle.argsort(dim=1)  # (B, L)
        kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, H))  # (B, K, H)
        mask = (ids_restore >= keep).to(tokens.dtype)  # (B, L)
        return self._encode(kept), mask, ids_restore

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Reconstruction ``(B, R, N, P)`` of every patch from the encoder output."""
        x = self.decoder_embed(latent)  # (B, 1+K, D)
        B, K1, D = x.shape
        L = ids_restore.shape[1]
        N = L // self.n_regions
        filled = torch.cat([x[:, 1:], self.mask_token.expand(B, L + 1 - K1, -1)], dim=1)  # (B, L, D), shuffled
        filled = filled.gather(1, ids_restore[..., None].expand(-1, -1, D)).view(B, self.n_regions, N, D)
        filled = filled + self.decoder_xyz(self.coords)[None, :, None, :] + self.decoder_time[:N]  # (B, R, N, D)
        x = torch.cat([x[:, :1], self.position_dropout(filled).flatten(1, 2)], dim=1)  # (B, 1+L, D)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred2(F.leaky_relu(self.decoder_pred1(self.decoder_norm(x)), 0.1))[:, 1:]  # (B, L, P)
        if self.config.tanh_decoder:
            x = torch.tanh(x)
        return x.view(B, self.n_regions, N, self.config.patch_size)  # (B, R, N, P)

    def forward(self, x: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None):
        """Masked pass: ``(loss, pred (B, R, N, P), mask (B, R, N), latent (B, 1+K, H))``; loss = MSE on masked patches."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_features(x, ratio, noise if noise is not None
                                                          else torch.rand(x.shape[0], self.n_tokens(x), device=x.device))
        pred = self.decode(latent, ids_restore)  # (B, R, N, P)
        mask = mask.view(pred.shape[:-1])  # (B, R, N)
        error = (pred - x.view(pred.shape)).pow(2) * mask[..., None]
        loss = error.sum() / (mask.sum() * pred.shape[-1]).clamp_min(1)
        return loss, pred, mask, latent

    def n_tokens(self, x: Tensor) -> int:
        return x.shape[1] * (x.shape[2] // self.config.patch_size)

    def forward_head(self, features: Tensor) -> Tensor:
        return features[:, 0] if self.config.pool == "cls" else features[:, 1:].mean(dim=1)  # (B, H)

    def encode(self, x: Tensor) -> Tensor:
        """Fixed-size embedding ``(B, hidden)`` of ``x`` (B, R, T), no masking."""
        return self.forward_head(self.forward_features(x)[0])

    def _check_input(self, x: Tensor):
        P = self.config.patch_size
        if x.ndim != 3 or x.shape[1] != self.n_regions or x.shape[2] % P or not 0 < x.shape[2] // P <= self.config.max_positions:
            raise ValueError(f"'x' must have shape (batch, {self.n_regions} regions, a multiple of patch_size={P} "
                             f"timepoints); got {tuple(x.shape)}")
