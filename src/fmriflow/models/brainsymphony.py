"""BrainSymphony: fMRI region time series and diffusion structural connectivity, fused.

Written from the paper's description (no code is public): Khajehnejad, Habibollahi, Stoliker
and Razi, "BrainSymphony: a parameter-efficient multimodal foundation model for brain dynamics
with limited data", arXiv 2506.18314. The layer sizes are our choice, set so that the default
config has about the paper's 5.6M parameters at 450 regions and 200-frame windows
(``BrainSymphonyConfig``; tests/test_brainsymphony.py pins the count against a closed form).

Functional encoder, on a window ``x`` (B, R, T) of robust-scaled region time series:

- spatial stream: one token per region (its whole window through a Linear, plus a learned
  region embedding), a transformer over the R tokens;
- temporal stream: one token per time point (the frame of R values through a Linear, plus a
  sine-cosine time encoding), a transformer over the T tokens;
- context path: a 1-D CNN over time with the regions as input channels (local temporal
  patterns the attention streams need not learn);
- a Perceiver: ``n_latents`` learned latents cross-attend to the three streams' tokens (each
  stream marked by a learned type embedding), then self-attend; their mean is the fixed-size
  functional embedding, whatever R and T.

Structural encoder, on a connectome ``sc`` (B, R, R) (e.g. log10 of streamline count over
region volume, whose weak edges are negative): a signed graph transformer. A region's token
is its row of the connectome through a Linear plus a learned region embedding; in every layer
and head the attention logit of regions i -> j is

    q_i . k_j / sqrt(d_head) + a_pos * max(S_ij, 0) + a_neg * max(-S_ij, 0)

with learned per-layer, per-head ``a_pos`` and ``a_neg``: positive and negative edges bias the
attention separately. The mean of the node tokens is the structural embedding.

Fusion: an adaptive gate ``g = sigmoid(W [f; s] + b)`` (per feature) gives ``g * f + (1 - g) * s``.
One module serves every use: ``modalities="both"`` builds both encoders and the gate, ``"fmri"``
or ``"sc"`` only the one; a multimodal model embeds either modality alone (``embed``), the
gate then being skipped.

Self-supervised pretraining (``forward``), masks drawn from one noise row per sample:
- spatial masking hides whole regions, temporal masking whole time points (zeros in the input,
  a learned mask token in place of the stream's token); the decoder's region queries (a learned
  region embedding plus the region's spatial token) cross-attend to the latents (and, with
  both modalities, to the fused embedding) and read out each region's window; the loss is the
  MSE on the hidden entries (a hidden region's window, or a hidden time point of any region);
- SC masking hides edges (upper triangle, mirrored; zero in the input); node tokens (plus the
  fused embedding, with both modalities) go through a symmetric bilinear read-out; the loss is
  the MSE on the hidden edges.
With both modalities the fused embedding feeds both decoders, so the gate is trained in
pretraining (and every parameter takes part in the loss, which DDP needs).

Interpretation: ``spatial_attention`` returns the spatial stream's attention maps and
``incoming_attention`` the attention each region receives (mean over layers, heads and
querying regions): the maps the paper averages per network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ATTENTIONS, MLP, init_linear, named_config, sincos_encoding, trunc_normal_

MODALITIES = ("both", "fmri", "sc")


@dataclass
class BrainSymphonyConfig:
    window: int = 200  # time points per window (the spatial tokens embed a region's whole window)
    modalities: str = "both"  # both | fmri (time series only) | sc (structural connectome only)
    dim: int = 192  # width of every stream, the latents and the embeddings
    n_heads: int = 6  # attention heads (dim must divide by it)
    spatial_layers: int = 2  # transformer blocks over region tokens
    temporal_layers: int = 2  # transformer blocks over time tokens
    conv_layers: int = 2  # temporal convolutions of the context path (after a 1x1 region mixing)
    conv_kernel: int = 5  # their kernel (odd: the output keeps the window length)
    n_latents: int = 32  # Perceiver latents
    latent_layers: int = 2  # self-attention blocks over the latents after the cross-attention
    sc_layers: int = 2  # signed graph transformer blocks
    decoder_layers: int = 1  # cross-attention blocks of the time-series decoder
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    spatial_mask_ratio: float = 0.2  # regions hidden per sample
    temporal_mask_ratio: float = 0.2  # time points hidden per sample
    sc_mask_ratio: float = 0.2  # connectome edges hidden per sample (upper triangle)
    sc_loss_weight: float = 1.0  # weight of the connectome loss beside the time-series loss
    dropout: float = 0.0  # on attention weights and residual branches
    attention: str = "sdpa"  # "sdpa" (fused kernels) or "eager" (plain softmax, a reference; returns maps)
    norm_eps: float = 1e-6  # LayerNorm epsilon

    def __post_init__(self):
        for name in ("window", "dim", "n_heads", "spatial_layers", "temporal_layers", "conv_layers",
                     "conv_kernel", "n_latents", "latent_layers", "sc_layers", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer; {value!r} was provided")
        if self.dim % self.n_heads:
            raise ValueError(f"'dim' ({self.dim}) must be a multiple of 'n_heads' ({self.n_heads})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"'conv_kernel' must be odd; {self.conv_kernel} was provided")
        if self.modalities not in MODALITIES:
            raise ValueError(f"'modalities' must be one of {MODALITIES}; {self.modalities!r} was provided")
        for name in ("spatial_mask_ratio", "temporal_mask_ratio", "sc_mask_ratio", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"'{name}' must be in [0, 1); {getattr(self, name)!r} was provided")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"'attention' must be one of {ATTENTIONS}; {self.attention!r} was provided")

    @property
    def uses_fmri(self) -> bool:
        return self.modalities in ("both", "fmri")

    @property
    def uses_sc(self) -> bool:
        return self.modalities in ("both", "sc")


@dataclass
class BrainSymphonyOutput:
    loss: Tensor  # () fmri_loss + sc_loss_weight * sc_loss, fp32
    fmri_loss: Tensor | None  # () MSE on the hidden time-series entries
    sc_loss: Tensor | None  # () MSE on the hidden connectome edges
    pred_x: Tensor | None  # (B, R, T) reconstruction of the window
    pred_sc: Tensor | None  # (B, R, R) reconstruction of the connectome (symmetric)
    entry_mask: Tensor | None  # (B, R, T) bool, True = hidden (region or time point masked)
    edge_mask: Tensor | None  # (B, R, R) bool, True = hidden edge (symmetric, diagonal False)


@dataclass
class BrainSymphonyEmbedding:
    functional: Tensor | None  # (B, dim) mean of the Perceiver latents
    structural: Tensor | None  # (B, dim) mean of the connectome's node tokens
    fused: Tensor  # (B, dim) the gate's mix with both, else whichever modality was given
    regions: Tensor | None  # (B, R, dim) spatial-stream region tokens (fMRI region embeddings)
    nodes: Tensor | None  # (B, R, dim) structural node tokens


# ---------------------------------------------------------------------------------------------
# attention with an additive bias and optional maps


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout: float, kind: str,
           return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T / sqrt(d) + bias) v over ``(B, heads, L, d)``; the weights too when asked (eager)."""
    if kind == "sdpa" and not return_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout), None
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, Lq, Lk)
    if bias is not None:
        logits = logits + bias
    weights = logits.softmax(dim=-1)  # (B, heads, Lq, Lk)
    return F.dropout(weights, dropout) @ v, weights  # (B, heads, Lq, d)


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` (B, Lq, C) over ``context`` (B, Lk, C) (self-attention when None)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, kind: str):
        super().__init__()
        self.n_heads, self.dropout, self.kind = n_heads, dropout, kind
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None,
                return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        context = x if context is None else context
        B, Lq, C = x.shape
        h, d = self.n_heads, C // self.n_heads
        q = self.q(x).view(B, Lq, h, d).transpose(1, 2)  # (B, h, Lq, d)
        k, v = self.kv(context).view(B, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, Lk, d)
        p = self.dropout if self.training else 0.0
        y, weights = attend(q, k, v, None if bias is None else bias.to(q.dtype), p, self.kind, return_weights)
        y = y.transpose(1, 2).reshape(B, Lq, C)  # (B, Lq, C)
        return self.proj_drop(self.proj(y)), weights


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x), ln(context)), then x + mlp(ln(x)); self-attention when ``cross`` is False."""

    def __init__(self, cfg: BrainSymphonyConfig, cross: bool = False):
        super().__init__()
        dim = cfg.dim
        self.ln1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.ln_context = nn.LayerNorm(dim, eps=cfg.norm_eps) if cross else None
        self.attn = CrossAttention(dim, cfg.n_heads, cfg.dropout, cfg.attention)
        self.ln2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLP(dim, int(dim * cfg.mlp_ratio), cfg.dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None,
                return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        kv = None if self.ln_context is None else self.ln_context(context)
        y, weights = self.attn(self.ln1(x), kv, bias, return_weights)
        x = x + y  # (B, L, dim)
        return x + self.mlp(self.ln2(x)), weights  # (B, L, dim)


class SignedBias(nn.Module):
    """Per-head attention bias ``a_pos * max(S, 0) + a_neg * max(-S, 0)`` of a signed connectome S."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(n_heads))
        self.neg = nn.Parameter(torch.zeros(n_heads))

    def forward(self, sc: Tensor) -> Tensor:
        pos, neg = sc.clamp_min(0)[:, None], (-sc).clamp_min(0)[:, None]  # (B, 1, R, R)
        return self.pos[:, None, None] * pos + self.neg[:, None, None] * neg  # (B, heads, R, R)


# ---------------------------------------------------------------------------------------------
# encoders


class FunctionalEncoder(nn.Module):
    """Spatial and temporal transformers and the CNN context path, distilled by a Perceiver."""

    def __init__(self, cfg: BrainSymphonyConfig, n_regions: int):
        super().__init__()
        D, T, R = cfg.dim, cfg.window, n_regions
        self.region_in = nn.Linear(T, D)
        self.region_embed = nn.Parameter(torch.empty(R, D))
        self.frame_in = nn.Linear(R, D)
        self.register_buffer("time_embed", sincos_encoding(T, D), persistent=False)
        self.mask_token = nn.Parameter(torch.empty(2, D))  # a hidden region's token, a hidden time point's token
        self.spatial = nn.ModuleList(Block(cfg) for _ in range(cfg.spatial_layers))
        self.temporal = nn.ModuleList(Block(cfg) for _ in range(cfg.temporal_layers))
        self.spatial_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.temporal_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        convs = [nn.Conv1d(R, D, 1)]
        for _ in range(cfg.conv_layers):
            convs += [nn.GELU(), nn.Conv1d(D, D, cfg.conv_kernel, padding=cfg.conv_kernel // 2)]
        self.context = nn.Sequential(*convs)
        self.context_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.stream_embed = nn.Parameter(torch.empty(3, D))  # spatial, temporal, context tokens
        self.latents = nn.Parameter(torch.empty(cfg.n_latents, D))
        self.cross = Block(cfg, cross=True)
        self.latent_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.latent_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)

    def streams(self, x: Tensor, region_mask: Tensor | None = None, time_mask: Tensor | None = None,
                return_weights: bool = False) -> tuple[Tensor, Tensor, Tensor, list]:
        """Region tokens (B, R, D), time tokens (B, T, D), context tokens (B, T, D), spatial maps."""
        if region_mask is not None:
            x = x.masked_fill(region_mask[:, :, None] | time_mask[:, None, :], 0.0)  # (B, R, T)
        s = self.region_in(x)  # (B, R, D)
        t = self.frame_in(x.transpose(1, 2))  # (B, T, D)
        if region_mask is not None:
            s = torch.where(region_mask[..., None], self.mask_token[0].to(s.dtype), s)
            t = torch.where(time_mask[..., None], self.mask_token[1].to(t.dtype), t)
        s = s + self.region_embed.to(s.dtype)
        t = t + self.time_embed[: t.shape[1]].to(t.dtype)
        maps = []
        for block in self.spatial:
            s, w = block(s, return_weights=return_weights)
            maps.append(w)
        for block in self.temporal:
            t, _ = block(t)
        c = self.context(x).transpose(1, 2)  # (B, T, D)
        return self.spatial_norm(s), self.temporal_norm(t), self.context_norm(c), maps

    def distil(self, s: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """Perceiver: the latents after cross-attending to every stream token, ``(B, n_latents, D)``."""
        tokens = torch.cat([s + self.stream_embed[0], t + self.stream_embed[1], c + self.stream_embed[2]], dim=1)
        z = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # (B, n_latents, D)
        z, _ = self.cross(z, tokens)
        for block in self.latent_blocks:
            z, _ = block(z)
        return self.norm(z)  # (B, n_latents, D)


class StructuralEncoder(nn.Module):
    """Signed graph transformer over a connectome: node tokens ``(B, R, D)``."""

    def __init__(self, cfg: BrainSymphonyConfig, n_regions: int):
        super().__init__()
        self.row_in = nn.Linear(n_regions, cfg.dim)
        self.region_embed = nn.Parameter(torch.empty(n_regions, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.sc_layers))
        self.biases = nn.ModuleList(SignedBias(cfg.n_heads) for _ in range(cfg.sc_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, sc: Tensor, return_weights: bool = False) -> tuple[Tensor, list]:
        h = self.row_in(sc) + self.region_embed.to(sc.dtype)  # (B, R, D)
        maps = []
        for block, bias in zip(self.blocks, self.biases):
            h, w = block(h, bias=bias(sc.float()), return_weights=return_weights)
            maps.append(w)
        return self.norm(h), maps


class FusionGate(nn.Module):
    """``g * f + (1 - g) * s`` with ``g = sigmoid(W [f; s] + b)`` per feature."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, f: Tensor, s: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(torch.cat([f, s], dim=-1)))  # (B, D)
        return g * f + (1 - g) * s  # (B, D)


# ---------------------------------------------------------------------------------------------
# the model


class BrainSymphony(nn.Module):
    """Functional and structural encoders, the fusion gate and the pretraining decoders.

    Parameters
    ----------
    config : BrainSymphonyConfig
    n_regions : int
        Regions of the atlas (rows of ``x``, rows and columns of ``sc``), in a fixed order.
    """

    def __init__(self, config: BrainSymphonyConfig, n_regions: int):
        super().__init__()
        if not isinstance(n_regions, int) or n_regions < 2:
            raise ValueError(f"'n_regions' must be an integer of at least 2; {n_regions!r} was provided")
        self.config, self.n_regions = config, n_regions
        D, R = config.dim, n_regions
        both = config.modalities == "both"
        if config.uses_fmri:
            self.functional = FunctionalEncoder(config, R)
            self.decoder_queries = nn.Parameter(torch.empty(R, D))
            self.decoder_skip = nn.Linear(D, D)
            self.decoder = nn.ModuleList(Block(config, cross=True) for _ in range(config.decoder_layers))
            self.decoder_norm = nn.LayerNorm(D, eps=config.norm_eps)
            self.decoder_out = nn.Linear(D, config.window)
        if config.uses_sc:
            self.structural = StructuralEncoder(config, R)
            self.sc_fused = nn.Linear(D, D) if both else None
            self.sc_norm = nn.LayerNorm(D, eps=config.norm_eps)
            self.sc_out = nn.Linear(D, D)
            self.sc_offset = nn.Parameter(torch.zeros(()))
        self.gate = FusionGate(D) if both else None
        self.apply(init_linear)
        linear = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        for p in self.parameters():
            if p.ndim == 2 and id(p) not in linear:
                trunc_normal_(p)  # embeddings, latents, mask tokens

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- masking ----------------------------------------------------------------------------

    def n_noise(self, n_timepoints: int) -> int:
        """Noise values per sample ``forward`` takes: regions, then time points, then upper-triangle edges."""
        R = self.n_regions
        return (R + n_timepoints if self.config.uses_fmri else 0) + (R * (R - 1) // 2 if self.config.uses_sc else 0)

    def masks(self, noise: Tensor, n_timepoints: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Region mask (B, R), time mask (B, T), edge mask (B, R, R) from ``noise`` (B, n_noise)."""
        R, cfg = self.n_regions, self.config
        region = time = edge = None
        if cfg.uses_fmri:
            region = _highest(noise[:, :R], cfg.spatial_mask_ratio)
            time = _highest(noise[:, R:R + n_timepoints], cfg.temporal_mask_ratio)
            noise = noise[:, R + n_timepoints:]
        if cfg.uses_sc:
            upper = _highest(noise, cfg.sc_mask_ratio)  # (B, R(R-1)/2)
            i, j = torch.triu_indices(R, R, offset=1, device=noise.device)
            edge = torch.zeros(noise.shape[0], R, R, dtype=torch.bool, device=noise.device)
            edge[:, i, j] = upper
            edge = edge | edge.transpose(1, 2)
        return region, time, edge

    # --- encoders ---------------------------------------------------------------------------

    def embed(self, x: Tensor | None = None, sc: Tensor | None = None) -> BrainSymphonyEmbedding:
        """Embeddings of a window ``x`` (B, R, T) and/or a connectome ``sc`` (B, R, R), no masking."""
        self._check(x, sc)
        return self._embed(x, sc)[0]

    def encode(self, x: Tensor | None = None, sc: Tensor | None = None) -> Tensor:
        """Fixed-size embedding ``(B, dim)``: fused with both inputs, else the one given."""
        return self.embed(x, sc).fused

    def _embed(self, x, sc, region_mask=None, time_mask=None):
        f = s = regions = nodes = latents = None
        if x is not None:
            regions, t, c, _ = self.functional.streams(x, region_mask, time_mask)
            latents = self.functional.distil(regions, t, c)  # (B, n_latents, D)
            f = latents.mean(dim=1)  # (B, D)
        if sc is not None:
            nodes, _ = self.structural(sc)  # (B, R, D)
            s = nodes.mean(dim=1)  # (B, D)
        fused = self.gate(f, s) if f is not None and s is not None else (f if s is None else s)
        return BrainSymphonyEmbedding(f, s, fused, regions, nodes), latents

    # --- pretraining ------------------------------------------------------------------------

    def forward(self, x: Tensor | None = None, sc: Tensor | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> BrainSymphonyOutput:
        """Masked reconstruction of ``x`` and/or ``sc`` (whichever the model's modalities use).

        Masks come from ``noise`` (B, n_noise) when given (one global draw sliced per DDP rank),
        else from uniform noise drawn with ``generator``.
        """
        x, sc = (x if self.config.uses_fmri else None), (sc if self.config.uses_sc else None)
        self._check(x, sc, pretraining=True)
        ref = x if x is not None else sc
        T = x.shape[2] if x is not None else 0
        if noise is None:
            noise = torch.rand(ref.shape[0], self.n_noise(T), generator=generator,
                               device=generator.device if generator is not None else ref.device)
        region, time, edge = self.masks(noise.to(ref.device), T)
        sc_in = sc.masked_fill(edge, 0.0) if sc is not None else None
        emb, latents = self._embed(x, sc_in, region, time)
        fused = emb.fused if self.gate is not None else None
        loss = torch.zeros((), device=ref.device)
        pred_x = pred_sc = fmri_loss = sc_loss = entries = None
        if x is not None:
            pred_x = self._decode_x(emb.regions, latents, fused)  # (B, R, T)
            entries = region[:, :, None] | time[:, None, :]  # (B, R, T)
            fmri_loss = _masked_mse(pred_x, x, entries)
            loss = loss + fmri_loss
        if sc is not None:
            pred_sc = self._decode_sc(emb.nodes, fused)  # (B, R, R)
            sc_loss = _masked_mse(pred_sc, sc, edge)
            loss = loss + self.config.sc_loss_weight * sc_loss
        return BrainSymphonyOutput(loss, fmri_loss, sc_loss, pred_x, pred_sc, entries, edge)

    def _decode_x(self, regions: Tensor, latents: Tensor, fused: Tensor | None) -> Tensor:
        q = self.decoder_queries.to(regions.dtype) + self.decoder_skip(regions)  # (B, R, D)
        memory = latents if fused is None else torch.cat([latents, fused[:, None]], dim=1)  # (B, n_latents(+1), D)
        for block in self.decoder:
            q, _ = block(q, memory)
        return self.decoder_out(self.decoder_norm(q))  # (B, R, T)

    def _decode_sc(self, nodes: Tensor, fused: Tensor | None) -> Tensor:
        if fused is not None:
            nodes = nodes + self.sc_fused(fused)[:, None]  # (B, R, D)
        h = self.sc_out(self.sc_norm(nodes))  # (B, R, D)
        return h @ h.transpose(1, 2) / math.sqrt(h.shape[-1]) + self.sc_offset  # (B, R, R), symmetric

    # --- interpretation ---------------------------------------------------------------------

    @torch.no_grad()
    def spatial_attention(self, x: Tensor) -> Tensor:
        """The spatial stream's attention maps ``(B, layers, heads, R, R)``: row i = how region i attends."""
        self._check(x, None)
        _, _, _, maps = self.functional.streams(x, return_weights=True)
        return torch.stack(maps, dim=1)

    @torch.no_grad()
    def structural_attention(self, sc: Tensor) -> Tensor:
        """The signed graph transformer's attention maps ``(B, layers, heads, R, R)``."""
        self._check(None, sc)
        return torch.stack(self.structural(sc, return_weights=True)[1], dim=1)

    def incoming_attention(self, x: Tensor | None = None, sc: Tensor | None = None) -> Tensor:
        """Attention each region receives ``(B, R)``: mean over layers, heads and querying regions (sums to 1)."""
        maps = self.spatial_attention(x) if x is not None else self.structural_attention(sc)
        return maps.mean(dim=(1, 2, 3))  # (B, R)

    def _check(self, x: Tensor | None, sc: Tensor | None, pretraining: bool = False) -> None:
        cfg, R = self.config, self.n_regions
        if x is None and sc is None:
            raise ValueError("give 'x' (a window of region time series) and/or 'sc' (a connectome)")
        if pretraining and ((cfg.uses_fmri and x is None) or (cfg.uses_sc and sc is None)):
            raise ValueError(f"pretraining with modalities={cfg.modalities!r} needs "
                             f"{'x and sc' if cfg.modalities == 'both' else 'x' if cfg.uses_fmri else 'sc'}")
        if x is not None:
            if not cfg.uses_fmri:
                raise ValueError("this model was built with modalities='sc'; it takes no time series 'x'")
            if x.ndim != 3 or tuple(x.shape[1:]) != (R, cfg.window):
                raise ValueError(f"'x' must have shape (batch, {R} regions, {cfg.window} time points); "
                                 f"got {tuple(x.shape)}")
        if sc is not None:
            if not cfg.uses_sc:
                raise ValueError("this model was built with modalities='fmri'; it takes no connectome 'sc'")
            if sc.ndim != 3 or tuple(sc.shape[1:]) != (R, R):
                raise ValueError(f"'sc' must have shape (batch, {R}, {R}); got {tuple(sc.shape)}")
            if x is not None and x.shape[0] != sc.shape[0]:
                raise ValueError(f"'x' and 'sc' must have the same batch size; got {x.shape[0]} and {sc.shape[0]}")


def network_similarity(tokens: Tensor, networks: Tensor, n_networks: int) -> Tensor:
    """Mean cosine similarity of region tokens per pair of networks, ``(B, K(K+1)/2)`` (upper triangle, row-major).

    ``tokens`` (B, R, D): region tokens (the spatial stream's, or the connectome's node tokens);
    ``networks`` (R,) long: each region's network in 0..K-1. Each token is centred on the mean
    token of its sample first (the part every region shares says nothing about which regions
    go together). Two regions whose time series co-vary get similar spatial tokens (a token is
    a projection of the region's window), and two regions with similar connectivity rows
    similar node tokens; averaged over a pair of networks this keeps the network-level
    structure (FC between systems, tract density between them) that the mean over all regions
    averages away.
    """
    centred = tokens.float() - tokens.float().mean(dim=1, keepdim=True)  # (B, R, D)
    unit = F.normalize(centred, dim=-1)
    similarity = unit @ unit.transpose(1, 2)  # (B, R, R)
    member = F.one_hot(networks.long(), n_networks).to(similarity.dtype)  # (R, K)
    member = member / member.sum(dim=0).clamp_min(1)  # column k: the mean over network k's regions
    blocks = member.T @ similarity @ member  # (B, K, K)
    i, j = torch.triu_indices(n_networks, n_networks, device=tokens.device)
    return blocks[:, i, j]


def _highest(noise: Tensor, ratio: float) -> Tensor:
    """True for the ``round(n * ratio)`` highest-noise entries of each row (the MAE shuffle's masked set)."""
    n = noise.shape[1]
    n_keep = n - round(n * ratio)
    return noise.argsort(dim=1).argsort(dim=1) >= n_keep


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MSE over the True entries of ``mask``, fp32, no host sync."""
    err = (pred.float() - target.float()).pow(2) * mask
    return err.sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------
# named configs


CONFIGS: dict[str, BrainSymphonyConfig] = {
    # fast unit tests only
    "tiny": BrainSymphonyConfig(window=40, dim=32, n_heads=2, spatial_layers=1, temporal_layers=1, conv_layers=1,
                                n_latents=8, latent_layers=1, sc_layers=2, decoder_layers=1),
    # the paper's size: about 5.6M parameters at 450 regions x 200 frames
    "brainsymphony-5m": BrainSymphonyConfig(),
}


def create_brainsymphony(name: str, n_regions: int, **overrides) -> BrainSymphony:
    """Build the named config (``CONFIGS``) for ``n_regions``, with any config field overridden by keyword."""
    return BrainSymphony(named_config(CONFIGS, name, **overrides), n_regions)
