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

Two choices keep the game about the codes' distribution rather than a trivial signature (measured
in benchmarks/README.md, vqalign_demo.py): the latents are whitened over the batch (``Whiten``:
zero mean, identity covariance, the first two moments of a from-scratch N(0, 1) text table; a
layer norm per latent instead left every code with row mean 0 and norm sqrt(dim), which a
classifier on those two numbers told from text rows at 0.85-0.89 balanced accuracy, and a linear probe
on the codes at 0.97), and the classifier sees both modalities' vectors layer-normalised
(``disc_norm``): their directions, whatever a pretrained table's row norms are. Without the
layer norm a latent's norm keeps the patch's amplitude.

With ``gain_levels`` each patch also gets an amplitude token, its log RMS in one of
``gain_levels`` bins of equal counts over the training windows, before its codes (the gain of
gain-shape quantisation): the whitened codes kept no measurable amplitude, which carries the
demo cohort's age (benchmarks/README.md). The amplitude tokens are ids ``n_codes ..``; the
language model embeds them on an ordinal ladder (``token_table``); the classifier does not see them.

The reversed gradient is gated by how well the classifier does (``reversal_gate``): its weight is
the schedule's times ``clamp(gain (2 acc - 1), 0, 1)``, ``acc`` a running mean of the classifier's
balanced accuracy on the training batches (``disc_acc_ema``). A reversal maximises the
classifier's cross-entropy, whose maximum puts the codes on the text side of the classifier's
boundary, not on it: with a constant weight the encoder pushed the codes across and the
discriminator ended at 0.37-0.40 (benchmarks/README.md). With the gate, a classifier at or below
chance gets no push against it, so the game settles near chance.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
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
    decay: float = 0.99  # the moving averages' decay
    disc_norm: bool = True  # layer-normalise both modalities' vectors at the classifier's input
    standardize: str = "whiten"  # over the batch: "whiten" | "scale" (each dimension) | "none"
    latent_norm: bool = False  # then layer-normalise each latent (its norm, e.g. the patch's amplitude, is lost)
    disc_hidden: int = 64  # domain classifier width
    disc_lr_scale: float = 1.0  # the classifier's learning rate over the rest's (two time scales: it tracks the encoder)
    text_std: float = 1.0  # standard deviation of a from-scratch text embedding table
    gain_levels: int = 0  # >0: each patch also gets an amplitude token (its log RMS in one of this many bins)
    acc_decay: float = 0.9  # decay of the running mean of the classifier's training accuracy (the reversal gate's input)


CONFIGS = {
    # decay 0.9: in a few hundred steps the codes must follow the latents the reversed gradient moves (at 0.99
    # they lagged ~100 steps and the discriminator's accuracy cycled; benchmarks/README.md)
    "tiny": VQAlignConfig(hidden=128, dim=32, n_codes=64, groups=4, disc_hidden=32, decay=0.9, gain_levels=8),
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


def reversal_gate(acc: torch.Tensor, gain: float) -> torch.Tensor:
    """The reversal weight's factor given the classifier's accuracy: ``clamp(gain (2 acc - 1), 0, 1)``;
    0 at or below chance (no push on the encoder), 1 from ``acc`` = 0.5 + 0.5 / gain. ``gain`` 0: no gate (1)."""
    acc = torch.as_tensor(acc, dtype=torch.float32)
    if gain == 0:
        return torch.ones_like(acc)
    if gain < 0:
        raise ValueError(f"'reversal_gate' must be >= 0 (0: no gate); {gain!r} was provided")
    return (gain * (2 * acc - 1)).clamp(0.0, 1.0)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, n_out))


class Whiten(nn.Module):
    """Batch whitening (zero mean, identity covariance over the batch; ZCA, Huang et al. 2018's
    decorrelated batch norm) with running statistics for evaluation."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-3):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_matrix", torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 outside autocast: eigh has no bf16 kernel, and a bf16 covariance is too coarse
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()
            if not self.training:
                return ((x32 - self.running_mean) @ self.running_matrix).to(x.dtype)
            mean = x32.mean(0)
            centred = x32 - mean
            cov = centred.t() @ centred / max(1, len(x32) - 1) + self.eps * torch.eye(x.shape[1], device=x.device)
            values, vectors = torch.linalg.eigh(cov)
            matrix = vectors @ torch.diag(values.clamp_min(self.eps).rsqrt()) @ vectors.t()
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_matrix.lerp_(matrix, self.momentum)
            return (centred @ matrix).to(x.dtype)


def _before_the_gate(module, state_dict, prefix, *args) -> None:
    """Weights saved before the reversal gate (model files, checkpoints) have no running accuracy: start it at chance."""
    state_dict.setdefault(prefix + "disc_acc_ema", torch.tensor(0.5))


def _register_load_pre_hook(module: nn.Module, hook) -> None:
    """Register ``hook(module, state_dict, prefix, ...)`` to run before ``module.load_state_dict``."""
    if hasattr(module, "register_load_state_dict_pre_hook"):
        module.register_load_state_dict_pre_hook(hook)
    else:  # torch < 2.5 (pyproject allows >= 2.4) has only the private form; with_module gives the same call
        module._register_load_state_dict_pre_hook(hook, with_module=True)


def _standardizer(kind: str, dim: int) -> nn.Module:
    if kind == "whiten":
        return Whiten(dim)
    if kind == "scale":
        return nn.BatchNorm1d(dim, affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"'standardize' must be one of ['none', 'scale', 'whiten']; {kind!r} was provided")


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
        # running statistics in evaluation, so a window's codes do not depend on its batch
        self.standardize = _standardizer(config.standardize, config.dim)
        self.decoder = _mlp(config.dim * config.groups, config.hidden, width)
        self.quantizer = VectorQuantizer(config.n_codes, config.dim, beta=config.beta, ema=config.ema,
                                         decay=config.decay)
        self.reversal = GradientReversal(0.0)
        # running mean of the classifier's balanced accuracy on the training batches (reversal_gate's input);
        # a buffer, so a resumed run gates as an uninterrupted one
        self.register_buffer("disc_acc_ema", torch.tensor(0.5))
        _register_load_pre_hook(self, _before_the_gate)
        self.classifier = _mlp(config.dim, config.disc_hidden, 1)
        for p in self.classifier.parameters():
            p._lr_scale = config.disc_lr_scale  # read by the training loop's optimiser
        self.register_buffer("text_table", text_table.detach().clone().float())
        self.register_buffer("text_ids", text_ids.detach().clone().long())
        self.next_text_ids: torch.Tensor | None = None  # the next training forward's text draw (set_text_draw)
        if config.gain_levels:  # fitted on the training windows (fit_gain_edges)
            self.register_buffer("gain_edges", torch.zeros(config.gain_levels - 1))

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
        b = p.shape[0]
        p = self.standardize(p.reshape(-1, self.config.dim))
        p = p.reshape(b, -1, self.config.dim)
        # whitened latents have the text table's N(0, 1) scale; latent_norm also fixes each one's norm
        if self.config.latent_norm:
            p = F.layer_norm(p, (self.config.dim,))
        return p * self.config.text_std

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices of windows (B, R, T) -> (B, T // patch * groups); with ``gain_levels``, each patch's
        amplitude token (``n_codes + bin``) before its codes: (B, T // patch * (groups + 1))."""
        codes = self.quantizer(self.encode(x)).codes
        if not self.config.gain_levels:
            return codes
        gains = self.config.n_codes + torch.bucketize(self.patch_gain(x), self.gain_edges)  # (B, N)
        per_patch = codes.reshape(len(x), -1, self.config.groups)
        return torch.cat([gains[:, :, None], per_patch], 2).reshape(len(x), -1)

    def patch_gain(self, x: torch.Tensor) -> torch.Tensor:
        """log RMS of each patch (B, R, T) -> (B, T // patch): the amplitude the layer-free codes may not keep."""
        return torch.log(self.patches(x).float().pow(2).mean(-1).clamp_min(1e-12)) / 2

    @torch.no_grad()
    def fit_gain_edges(self, windows: torch.Tensor) -> None:
        """Bin edges of equal counts of the patch gains of ``windows`` (training data)."""
        gains = self.patch_gain(windows).flatten().double()
        levels = torch.arange(1, self.config.gain_levels, dtype=torch.float64) / self.config.gain_levels
        self.gain_edges.copy_(torch.quantile(gains, levels).float())

    def token_table(self) -> torch.Tensor:
        """Embeddings of the fMRI tokens for a language model: the codebook, then with ``gain_levels`` an
        ordinal ladder of the amplitude tokens (-1..1 text_std along the first axis)."""
        table = self.quantizer.codebook.detach()
        if not self.config.gain_levels:
            return table
        ladder = torch.zeros(self.config.gain_levels, self.config.dim, dtype=table.dtype, device=table.device)
        ladder[:, 0] = torch.linspace(-1, 1, self.config.gain_levels) * self.config.text_std
        return torch.cat([table, ladder])

    @property
    def n_tokens(self) -> int:
        return self.config.n_codes + self.config.gain_levels

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
        if self.training:
            self._track_accuracy(disc_acc)
        return VQAlignOutput(recon_loss + q.loss + disc_loss, recon_loss, q.loss, disc_loss, disc_acc,
                             q.perplexity, q.usage, recon, q.codes)

    @torch.no_grad()
    def _track_accuracy(self, acc: torch.Tensor) -> None:
        """Update the running mean with this batch's accuracy (under DDP the mean over ranks: equal local
        batches, so the global batch's balanced accuracy; the same gate on every rank)."""
        acc = acc.detach().float().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(acc)
            acc /= dist.get_world_size()
        self.disc_acc_ema.lerp_(acc.to(self.disc_acc_ema.device), 1 - self.config.acc_decay)

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
        text = text.to(fmri.dtype)
        if self.config.disc_norm:
            fmri, text = F.layer_norm(fmri, (self.config.dim,)), F.layer_norm(text, (self.config.dim,))
        logit_f = self.classifier(fmri).squeeze(-1)
        logit_t = self.classifier(text).squeeze(-1)
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
           "reversal_gate", "reversal_weight"]
