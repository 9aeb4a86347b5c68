"""An autoencoder of region time-series windows with a vector-quantised latent, aligned with text
by a domain classifier behind a gradient reversal (the fMRI vocabulary of ``lm-finetune``).

A window (regions x T) is cut into patches of ``patch`` TRs across all regions; each patch is
encoded to ``groups`` vectors, each quantised by ``VectorQuantizer`` (its codebook is the fMRI
vocabulary: ``groups`` tokens per patch, product quantisation with one shared codebook), and
decoded back to the patch. A domain classifier sees the
quantised fMRI vectors and text token embeddings (rows of a frozen text embedding table: the
vocabulary of the language model that will read the codes) and tells them apart; the gradient
reversal in front of the fMRI side makes the encoder learn to make them indistinguishable, so
codes and text tokens live in one space. ``align_weight`` scales the reversed gradient;
``align_weight`` 0 is the ablation without the domain classifier: the classifier still trains,
as a probe of how separable the two modalities are, but none of its gradient reaches the encoder.

The discriminator's accuracy is balanced (the mean of its accuracy on fMRI and on text
vectors): 0.5 is chance whatever the sample counts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vq import GradientReversal, VectorQuantizer


@dataclass
class VQAlignConfig:
    n_regions: int = 424  # set from the dataset
    patch: int = 10  # TRs per token (the window must be a multiple)
    hidden: int = 256  # width of the encoder's and decoder's MLPs
    dim: int = 32  # code width = text embedding width (a local language model's width when one is given)
    n_codes: int = 64  # codebook size: the fMRI vocabulary
    groups: int = 4  # codes per patch: the patch's latent is ``groups`` code-wide vectors, each quantised
    beta: float = 0.25  # commitment loss weight
    ema: bool = True  # codebook by moving averages (else by the codebook loss)
    disc_hidden: int = 64  # domain classifier width
    text_std: float = 1.0  # standard deviation of a from-scratch text embedding table


CONFIGS = {
    "tiny": VQAlignConfig(hidden=128, dim=32, n_codes=64, groups=4, disc_hidden=32),
    "small": VQAlignConfig(hidden=512, dim=64, n_codes=512, groups=8, disc_hidden=128),
}


@dataclass
class VQAlignOutput:
    loss: torch.Tensor  # (): reconstruction + quantiser + domain classifier losses
    recon_loss: torch.Tensor
    vq_loss: torch.Tensor
    disc_loss: torch.Tensor
    disc_acc: torch.Tensor  # (): balanced accuracy of the domain classifier on this batch
    perplexity: torch.Tensor
    usage: torch.Tensor
    reconstruction: torch.Tensor  # (B, R, T)
    codes: torch.Tensor  # (B, T // patch * groups)


def reversal_weight(step: int, max_steps: int, align_weight: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky's schedule: ``align_weight * (2 / (1 + exp(-gamma p)) - 1)``, p = step / max_steps.

    The reversed gradient starts at 0, while the classifier and the codes are still random, and
    rises to ``align_weight``."""
    p = min(1.0, step / max(1, max_steps))
    return align_weight * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, n_out))


class VQAlign(nn.Module):
    """Patch autoencoder + vector quantiser + domain classifier over a frozen text embedding table.

    ``text_table`` (V, dim) holds the text vocabulary's embeddings; ``text_ids`` the rows the
    classifier draws text vectors from (the vocabulary without its special tokens).
    """

    def __init__(self, config: VQAlignConfig, text_table: torch.Tensor, text_ids: torch.Tensor):
        super().__init__()
        if text_table.shape[1] != config.dim:
            raise ValueError(f"text embeddings are {text_table.shape[1]}-d but the codes are {config.dim}-d")
        self.config = config
        width = config.n_regions * config.patch
        self.encoder = _mlp(width, config.hidden, config.dim * config.groups)
        self.decoder = _mlp(config.dim * config.groups, config.hidden, width)
        self.quantizer = VectorQuantizer(config.n_codes, config.dim, beta=config.beta, ema=config.ema)
        self.reversal = GradientReversal(0.0)
        self.classifier = _mlp(config.dim, config.disc_hidden, 1)
        self.register_buffer("text_table", text_table.detach().clone().float())
        self.register_buffer("text_ids", text_ids.detach().clone().long())
        self.next_text_ids: torch.Tensor | None = None  # the next training forward's text draw (set_text_draw)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, R, T) -> (B, T // patch, R * patch)."""
        b, r, t = x.shape
        if t % self.config.patch:
            raise ValueError(f"windows of {t} TRs are not a multiple of the patch ({self.config.patch} TRs)")
        return x.reshape(b, r, t // self.config.patch, self.config.patch).permute(0, 2, 1, 3).reshape(b, t // self.config.patch, -1)

    def unpatch(self, p: torch.Tensor, r: int) -> torch.Tensor:
        """(B, N, R * patch) -> (B, R, N * patch)."""
        b, n, _ = p.shape
        return p.reshape(b, n, r, self.config.patch).permute(0, 2, 1, 3).reshape(b, r, n * self.config.patch)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents before quantisation, (B, N * groups, dim): ``groups`` vectors per patch, in time order."""
        p = self.encoder(self.patches(x))
        # each latent normalised (zero mean, unit variance over its width): the scale of the text table's
        # N(0, 1) rows, codes far enough apart for the decoder to tell them apart from the start
        return F.layer_norm(p.reshape(p.shape[0], -1, self.config.dim), (self.config.dim,)) * self.config.text_std

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices of windows (B, R, T) -> (B, T // patch * groups)."""
        return self.quantizer(self.encode(x)).codes

    def forward(self, x: torch.Tensor, region_mask: torch.Tensor | None = None,
                text_ids: torch.Tensor | None = None) -> VQAlignOutput:
        """``x`` (B, R, T); ``region_mask`` (B, R) True where a region has data (the loss skips the
        others); ``text_ids`` the text rows the classifier sees (None: in training the draw set by
        ``set_text_draw``, in evaluation every row of ``self.text_ids``)."""
        q = self.quantizer(self.encode(x))
        b = x.shape[0]
        recon = self.unpatch(self.decoder(q.z_q.reshape(b, -1, self.config.dim * self.config.groups)), x.shape[1])
        weight = torch.ones_like(x[:, :, :1]) if region_mask is None else region_mask[:, :, None].to(x.dtype)
        recon_loss = ((recon - x) ** 2 * weight).sum() / (weight.sum() * x.shape[2]).clamp_min(1)
        fmri = q.z_q.reshape(-1, self.config.dim)
        if text_ids is None:
            text_ids = self._text_draw(len(fmri))
        disc_loss, disc_acc = self._discriminate(self.reversal(fmri), self.text_table[text_ids])
        return VQAlignOutput(recon_loss + q.loss + disc_loss, recon_loss, q.loss, disc_loss, disc_acc,
                             q.perplexity, q.usage, recon, q.codes)

    def set_text_draw(self, positions: torch.Tensor) -> None:
        """The text rows the next training forward shows the classifier: ``text_ids[positions]``.

        A training loop sets them from its own generator (seed, step), so that a resumed run
        draws what an uninterrupted one would have."""
        self.next_text_ids = self.text_ids[positions.to(self.text_ids.device)]

    def _text_draw(self, n: int) -> torch.Tensor:
        """Training: the set draw (or ``n`` rows from torch's generator when none is set); evaluation: every row."""
        if not self.training:
            return self.text_ids
        drawn, self.next_text_ids = self.next_text_ids, None
        if drawn is None:
            drawn = self.text_ids[torch.randint(len(self.text_ids), (n,), device=self.text_ids.device)]
        return drawn

    def _discriminate(self, fmri: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-balanced logistic loss (fMRI = 1, text = 0) and balanced accuracy."""
        logit_f = self.classifier(fmri).squeeze(-1)
        logit_t = self.classifier(text.to(fmri.dtype)).squeeze(-1)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(logit_f.float(), torch.ones_like(logit_f, dtype=torch.float32))
                      + F.binary_cross_entropy_with_logits(logit_t.float(), torch.zeros_like(logit_t, dtype=torch.float32)))
        acc = 0.5 * ((logit_f > 0).float().mean() + (logit_t <= 0).float().mean())
        return loss, acc.detach()


def create_vqalign(name: str, n_regions: int, text_table: torch.Tensor, text_ids: torch.Tensor) -> VQAlign:
    """A named configuration (``CONFIGS``) for ``n_regions`` regions; the code width follows the text table."""
    if name not in CONFIGS:
        raise ValueError(f"'model' must be one of {sorted(CONFIGS)} for task vq-align; {name!r} was provided")
    config = dataclasses.replace(CONFIGS[name], n_regions=n_regions, dim=int(text_table.shape[1]))
    return VQAlign(config, text_table, text_ids)


def random_text_table(n_tokens: int, dim: int, std: float, seed: int) -> torch.Tensor:
    """A from-scratch text embedding table, N(0, std^2), from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_tokens, dim, generator=generator) * std


__all__ = ["CONFIGS", "VQAlign", "VQAlignConfig", "VQAlignOutput", "create_vqalign", "random_text_table",
           "reversal_weight"]
