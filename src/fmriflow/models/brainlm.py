"""BrainLM-style masked autoencoder on A424 region time series.

Each region's series (robust-scaled, ``(B, R, T)``) is cut into patches of ``patch_size``
TRs; every patch is one token, ordered region-major (token ``r * N + n`` is patch ``n`` of
region ``r``, ``N = T // patch_size``). A token's embedding is

    Linear(patch) + Linear(Fourier features of region xyz) + sine-cosine(patch index)

A random ``mask_ratio`` of tokens is hidden per sample; the encoder sees only the visible
ones (plus a CLS token), a lighter decoder puts learned mask tokens back in place, re-adds
the positions and reconstructs every patch; the loss is the MSE on masked patches only.

Sources (written from the papers, no code copied):
- Ortega Caro et al., "BrainLM: a foundation model for brain activity recordings", ICLR 2024.
- He et al., "Masked autoencoders are scalable vision learners", CVPR 2022.

Design choices:
- Region embedding: the xyz coordinates, centred per axis and scaled by one RMS radius
  (geometry stays isotropic), go through fixed sine-cosine features at ``coord_frequencies``
  octaves per axis (NeRF-style), then one Linear to the width. A Linear(3 -> hidden) alone
  confines all 424 region embeddings to a 3-d affine subspace, and behind a 0.02 init an MLP
  learns region identity slowly: on a per-region template task the tiny model reached a
  masked loss of 0.33 after 200 Adam steps with either, 0.08 with the Fourier features.
- Time encoding: fixed 1-D sine-cosine over the patch index (no parameters, identical for
  every window length up to ``max_timepoints``); the decoder gets its own copy in its width.
- Fixed-size embedding (``encode``): mean of the patch tokens after the final LayerNorm
  (``pool="mean"``, the default), or the CLS token (``pool="cls"``). The MAE loss never
  trains the CLS output directly, so the mean is the safer frozen feature for fine-tuning.
- Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on Hopper in bf16); the loss is computed in fp32 under autocast. The forward pass
  has no host sync (no ``.item()``, no data-dependent shapes). Under ``torch.compile`` pass
  ``dynamic=False``: with torch 2.11, automatic dynamic shapes (a second visible-token count)
  broke inductor's backward of the 111m shape, while static shapes compiled and ran.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .layers import ATTENTIONS, Block, MLP, sincos_encoding, trunc_normal_

POOLS = ("mean", "cls")


@dataclass
class BrainLMConfig:
    patch_size: int = 20  # TRs per patch (one token); a window's length must be a multiple of it
    max_timepoints: int = 200  # longest window (TRs) the time encoding covers
    hidden: int = 256  # encoder width
    n_layers: int = 4  # encoder transformer blocks
    n_heads: int = 4  # encoder attention heads (hidden must divide by it)
    decoder_hidden: int = 256  # decoder width
    decoder_layers: int = 2  # decoder transformer blocks
    decoder_heads: int = 4  # decoder attention heads (decoder_hidden must divide by it)
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    mask_ratio: float = 0.2  # fraction of tokens masked per sample (rounded to a whole count)
    dropout: float = 0.0  # dropout on attention weights and on both residual branches
    pool: str = "mean"  # encode(): "mean" of patch tokens or the "cls" token, after the final norm
    coord_frequencies: int = 8  # octaves of the sine-cosine features of region xyz
    attention: str = "sdpa"  # "sdpa" (fused kernels) or "eager" (softmax(QK^T/sqrt(d))V in plain ops, a reference)
    norm_eps: float = 1e-6  # LayerNorm epsilon

    def __post_init__(self):
        for name in ("patch_size", "max_timepoints", "hidden", "n_layers", "n_heads",
                     "decoder_hidden", "decoder_layers", "decoder_heads", "coord_frequencies"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer; {value!r} was provided")
        if self.max_timepoints < self.patch_size:
            raise ValueError(f"'max_timepoints' ({self.max_timepoints}) must be at least "
                             f"'patch_size' ({self.patch_size})")
        for width, heads in (("hidden", "n_heads"), ("decoder_hidden", "decoder_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"'{width}' ({getattr(self, width)}) must be a multiple of "
                                 f"'{heads}' ({getattr(self, heads)})")
        _check_mask_ratio(self.mask_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1); {self.dropout!r} was provided")
        if self.pool not in POOLS:
            raise ValueError(f"'pool' must be one of {POOLS}; {self.pool!r} was provided")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"'attention' must be one of {ATTENTIONS}; {self.attention!r} was provided")


@dataclass
class BrainLMOutput:
    loss: Tensor  # () MSE over masked patches, fp32
    pred: Tensor  # (B, R*N, P) reconstruction of every patch
    mask: Tensor  # (B, R*N) bool, True = masked (hidden from the encoder)


# ---------------------------------------------------------------------------------------------
# building blocks


class PositionEmbedding(nn.Module):
    """Region xyz (Fourier features -> Linear) plus patch index (fixed sine-cosine), one row per token."""

    def __init__(self, dim: int, max_patches: int, n_frequencies: int):
        super().__init__()
        # octaves pi/2 * 2**j on xyz of RMS radius 1; for A424 (radius 58.5 mm) the wavelengths
        # run from 234 mm (one slope across the brain) down to 1.8 mm
        self.register_buffer("freqs", 0.5 * math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32),
                             persistent=False)
        self.coord_proj = nn.Linear(6 * n_frequencies, dim)
        self.register_buffer("time", sincos_encoding(max_patches, dim), persistent=False)

    def forward(self, xyz: Tensor, n_patches: int) -> Tensor:
        angles = xyz.float()[:, :, None] * self.freqs.float()  # (R, 3, F), fp32 even in a bf16 model
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (R, 6F)
        region = self.coord_proj(features.to(self.coord_proj.weight.dtype))  # (R, dim)
        time = self.time[:n_patches]  # (N, dim)
        return (region[:, None, :] + time[None, :, :]).flatten(0, 1)  # (R*N, dim), region-major


# ---------------------------------------------------------------------------------------------
# the model


class BrainLM(nn.Module):
    """Masked autoencoder over region x time patches.

    Parameters
    ----------
    config : BrainLMConfig
    coords : array-like (R, 3)
        MNI xyz (mm) of each region, in the row order of the time series (A424 coordinates).
        Stored as the ``coords`` buffer, so checkpoints carry the atlas geometry.
    """

    def __init__(self, config: BrainLMConfig, coords):
        super().__init__()
        if isinstance(coords, Tensor):
            coords = coords.detach().to(torch.float32)
        else:
            coords = torch.from_numpy(np.array(coords, dtype=np.float32))  # a writable copy
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"'coords' must have shape (n_regions, 3); got {tuple(coords.shape)}")
        self.config = config
        self.n_regions = coords.shape[0]
        self.max_patches = config.max_timepoints // config.patch_size
        self.register_buffer("coords", coords.clone())
        H, D, P = config.hidden, config.decoder_hidden, config.patch_size

        # encoder
        self.patch_embed = nn.Linear(P, H)
        self.pos_embed = PositionEmbedding(H, self.max_patches, config.coord_frequencies)
        self.cls_token = nn.Parameter(torch.empty(1, 1, H))
        self.blocks = nn.ModuleList(
            Block(H, config.n_heads, config.mlp_ratio, config.dropout, config.norm_eps, config.attention)
            for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(H, eps=config.norm_eps)

        # decoder
        self.decoder_embed = nn.Linear(H, D)
        self.mask_token = nn.Parameter(torch.empty(1, 1, D))
        self.decoder_pos_embed = PositionEmbedding(D, self.max_patches, config.coord_frequencies)
        self.decoder_blocks = nn.ModuleList(
            Block(D, config.decoder_heads, config.mlp_ratio, config.dropout, config.norm_eps, config.attention)
            for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.decoder_pred = nn.Linear(D, P)

        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BrainLM):
            trunc_normal_(module.cls_token)
            trunc_normal_(module.mask_token)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- tokens ---------------------------------------------------------------------------

    def n_tokens(self, n_regions: int, n_timepoints: int) -> int:
        """Patch tokens of a ``(n_regions, n_timepoints)`` window (the CLS token not counted)."""
        return n_regions * (n_timepoints // self.config.patch_size)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, R, T)`` -> ``(B, R*N, P)``, region-major."""
        B, R, T = x.shape
        return x.reshape(B, R * (T // self.config.patch_size), self.config.patch_size)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """``(B, R*N, P)`` -> ``(B, R, N*P)``."""
        B = tokens.shape[0]
        return tokens.reshape(B, self.n_regions, -1)

    def random_masking(self, batch: int, n_tokens: int, mask_ratio: float,
                       generator: torch.Generator | None = None, device=None, noise: Tensor | None = None):
        """MAE shuffle: keep the ``n_tokens - round(n_tokens * mask_ratio)`` lowest-noise tokens.

        Returns ``ids_keep`` (B, K), ``ids_restore`` (B, L) and ``mask`` (B, L, True = masked).
        ``noise`` (B, L) is used as given; otherwise it is drawn uniform on the generator's
        device (then moved), so a CPU generator gives the same mask for a CUDA input.
        """
        n_keep = n_tokens - round(n_tokens * mask_ratio)
        if noise is None:
            noise = torch.rand(batch, n_tokens, generator=generator,
                               device=generator.device if generator is not None else device)
        elif tuple(noise.shape) != (batch, n_tokens):
            raise ValueError(f"'noise' must have shape {(batch, n_tokens)}; got {tuple(noise.shape)}")
        noise = noise.to(device)  # (B, L)
        ids_shuffle = noise.argsort(dim=1)  # (B, L): kept tokens first
        ids_restore = ids_shuffle.argsort(dim=1)  # (B, L): each token's rank in the shuffle
        ids_keep = ids_shuffle[:, :n_keep]  # (B, K)
        mask = ids_restore >= n_keep  # (B, L)
        return ids_keep, ids_restore, mask

    def _xyz(self) -> Tensor:
        centred = self.coords - self.coords.mean(dim=0)  # (R, 3)
        return centred / centred.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-6)  # (R, 3), RMS radius 1

    # --- encoder / decoder ------------------------------------------------------------------

    def _encode(self, patches: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Encoder over the tokens in ``ids_keep`` (all when None): ``(B, 1+K, H)`` after the norm."""
        B, L, P = patches.shape
        pos = self.pos_embed(self._xyz(), L // self.n_regions)  # (L, H)
        if ids_keep is not None:
            patches = patches.gather(1, ids_keep[..., None].expand(-1, -1, P))  # (B, K, P)
            pos = pos[ids_keep]  # (B, K, H)
        x = self.patch_embed(patches) + pos  # (B, K, H)
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, 1+K, H)
        for block in self.blocks:
            x = block(x)  # (B, 1+K, H)
        return self.norm(x)  # (B, 1+K, H)

    def _decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Decoder: mask tokens back in place, positions re-added; ``(B, L, P)`` predictions."""
        x = self.decoder_embed(latent)  # (B, 1+K, D)
        B, K1, D = x.shape
        L = ids_restore.shape[1]
        fill = self.mask_token.to(x.dtype).expand(B, L + 1 - K1, -1)  # (B, L-K, D)
        tokens = torch.cat([x[:, 1:], fill], dim=1)  # (B, L, D), shuffled order
        tokens = tokens.gather(1, ids_restore[..., None].expand(-1, -1, D))  # (B, L, D), token order
        tokens = tokens + self.decoder_pos_embed(self._xyz(), L // self.n_regions)  # (B, L, D)
        x = torch.cat([x[:, :1], tokens], dim=1)  # (B, 1+L, D)
        for block in self.decoder_blocks:
            x = block(x)  # (B, 1+L, D)
        x = self.decoder_norm(x)  # (B, 1+L, D)
        return self.decoder_pred(x[:, 1:])  # (B, L, P)

    # --- public API -------------------------------------------------------------------------

    def forward(self, x: Tensor, mask_ratio: float | None = None,
                generator: torch.Generator | None = None, noise: Tensor | None = None) -> BrainLMOutput:
        """Masked-autoencoder pass on ``x`` (B, R, T); loss = MSE over masked patches.

        The mask comes from ``noise`` (B, R*N) when given (e.g. one global draw sliced per
        DDP rank), else from uniform noise drawn with ``generator`` (global RNG when None).
        """
        self._check_input(x)
        mask_ratio = self.config.mask_ratio if mask_ratio is None else _check_mask_ratio(mask_ratio)
        target = self.patchify(x)  # (B, L, P)
        B, L, _ = target.shape
        ids_keep, ids_restore, mask = self.random_masking(B, L, mask_ratio, generator, x.device, noise)
        latent = self._encode(target, ids_keep)  # (B, 1+K, H)
        pred = self._decode(latent, ids_restore)  # (B, L, P)
        per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1)  # () no host sync
        return BrainLMOutput(loss=loss, pred=pred, mask=mask)

    def forward_features(self, x: Tensor) -> Tensor:
        """Encoder output for every token, no masking: ``(B, 1+R*N, H)``, CLS first."""
        self._check_input(x)
        return self._encode(self.patchify(x))  # (B, 1+L, H)

    def forward_head(self, features: Tensor) -> Tensor:
        """Pool ``forward_features`` output to ``(B, H)`` (``config.pool``)."""
        if self.config.pool == "cls":
            return features[:, 0]  # (B, H)
        return features[:, 1:].mean(dim=1)  # (B, H)

    def encode(self, x: Tensor) -> Tensor:
        """Fixed-size embedding ``(B, hidden)`` of ``x`` (B, R, T), no masking."""
        return self.forward_head(self.forward_features(x))

    def _check_input(self, x: Tensor):
        if x.ndim != 3:
            raise ValueError(f"'x' must have shape (batch, regions, timepoints); got {tuple(x.shape)}")
        _, R, T = x.shape
        P = self.config.patch_size
        if R != self.n_regions:
            raise ValueError(f"'x' has {R} regions but the model's coords have {self.n_regions}")
        if T % P or not 0 < T // P <= self.max_patches:
            raise ValueError(f"'x' must have a multiple of patch_size={P} timepoints, at most "
                             f"max_timepoints={self.config.max_timepoints}; got {T}")


def _check_mask_ratio(mask_ratio: float) -> float:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"'mask_ratio' must be in [0, 1); {mask_ratio!r} was provided")
    return mask_ratio


# ---------------------------------------------------------------------------------------------
# named configs


CONFIGS: dict[str, BrainLMConfig] = {
    # fast unit tests only
    "tiny": BrainLMConfig(hidden=32, n_layers=2, n_heads=2, decoder_hidden=32, decoder_layers=1,
                          decoder_heads=2, mask_ratio=0.5),
    # the shape of BrainLM's public checkpoint (hidden 256, 4 layers)
    "brainlm-5m": BrainLMConfig(hidden=256, n_layers=4, n_heads=4, decoder_hidden=256,
                                decoder_layers=2, decoder_heads=4, mask_ratio=0.2),
    # ViT-B encoder; decoder 768 x 4 as in the reference benchmark shape (DESIGN.md)
    "brainlm-111m": BrainLMConfig(hidden=768, n_layers=12, n_heads=12, decoder_hidden=768,
                                  decoder_layers=4, decoder_heads=12, mask_ratio=0.75),
}


def create_model(name: str, coords, **overrides) -> BrainLM:
    """Build the named config (``CONFIGS``), with any config field overridden by keyword."""
    if name not in CONFIGS:
        raise ValueError(f"'name' must be one of {tuple(CONFIGS)}; {name!r} was provided")
    fields = {f.name for f in dataclasses.fields(BrainLMConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown BrainLMConfig field(s) {unknown}; allowed: {sorted(fields)}")
    return BrainLM(dataclasses.replace(CONFIGS[name], **overrides), coords)


def model_flops_per_sample(config: BrainLMConfig, n_regions: int, n_timepoints: int,
                           mask_ratio: float | None = None) -> int:
    """Forward + backward matmul FLOPs of one training sample (for MFU).

    With ``L = n_regions * n_timepoints // patch_size`` tokens, ``K = L - round(L * mask_ratio)``
    visible, encoder tokens ``Te = 1 + K`` (CLS) and decoder tokens ``Td = 1 + L``:

        6 * (P*H*K + n_layers*W(H)*Te + H*D*Te + decoder_layers*W(D)*Td + D*P*L)
        + 12 * (n_layers * Te**2 * H + decoder_layers * Td**2 * D)

    where ``W(d) = 4*d**2 + 2*d*mlp_ratio*d`` are the weights of one block's matmuls
    (qkv, proj, fc1, fc2). The first term is 2 FLOPs per multiply-add for each weight a token
    meets, times 3 for forward + backward; the second is QK^T and AV (2 * 2 * T**2 * width
    forward, x3 with backward). Biases, norms, softmax, GELU and the position embeddings (run once
    per batch over the R regions, not per sample) are left out.
    """
    mask_ratio = config.mask_ratio if mask_ratio is None else _check_mask_ratio(mask_ratio)
    P, H, D = config.patch_size, config.hidden, config.decoder_hidden
    L = n_regions * (n_timepoints // P)
    K = L - round(L * mask_ratio)
    enc_tokens, dec_tokens = 1 + K, 1 + L

    def block_weights(d: int) -> int:
        return 4 * d * d + 2 * d * int(d * config.mlp_ratio)

    matmul = (P * H * K + config.n_layers * block_weights(H) * enc_tokens + H * D * enc_tokens
              + config.decoder_layers * block_weights(D) * dec_tokens + D * P * L)
    attention = 12 * (config.n_layers * enc_tokens**2 * H + config.decoder_layers * dec_tokens**2 * D)
    return 6 * matmul + attention
