"""Vector quantisation and gradient reversal: the pieces of the fMRI vocabulary (``vqalign``).

``VectorQuantizer`` is the bottleneck of VQ-VAE (van den Oord et al. 2017, "Neural Discrete
Representation Learning"): each latent vector is replaced by its nearest codebook vector, the
decoder's gradient passes to the encoder unchanged (straight-through estimator), and two terms
train the pair:

    codebook loss   ||sg[z_e] - e||^2     (moves the codes; replaced by EMA updates with ``ema``)
    commitment loss beta ||z_e - sg[e]||^2  (keeps the encoder near its codes)

With ``ema`` the codebook is a buffer updated as exponential moving averages of the assigned
latents' counts and sums (the paper's appendix), with Laplace smoothing of the counts. Codes
that fall out of use are restarted on latents of a batch (``restart_dead``): a dead code gets no
gradient and no EMA mass, so it would stay dead. Under DDP the EMA statistics and the restarted
rows are the same on every rank (all-reduced / broadcast from rank 0).

``GradientReversal`` (Ganin & Lempitsky 2015) is the identity forward and multiplies the
gradient by ``-weight`` backward: what it feeds learns to fool the classifier behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    """The quantiser's output for latents ``z`` of shape (..., dim)."""

    z_q: torch.Tensor  # (..., dim): the codes, with the straight-through gradient to z
    codes: torch.Tensor  # (...,) long: code indices
    loss: torch.Tensor  # (): commitment (+ codebook unless EMA) loss
    perplexity: torch.Tensor  # (): exp(entropy) of this batch's code use (1..n_codes)
    usage: torch.Tensor  # (): fraction of codes used in this batch


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) of each row of ``z`` (N, D)."""
    # ||z||^2 - 2 z.e + ||e||^2 without the (N, K, D) difference tensor
    distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)[None, :]
    return distances.argmin(1)


def code_perplexity(codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: n_codes when every code is used equally, 1 for one code."""
    p = torch.bincount(codes.reshape(-1), minlength=n_codes).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with commitment loss, straight-through gradient, optional EMA updates
    and dead-code restarts.

    Parameters
    ----------
    n_codes, dim
        Codebook size and code width.
    beta
        Weight of the commitment loss (0.25 in the paper).
    ema
        Update the codebook by exponential moving averages (decay ``decay``) instead of by gradient.
    dead_fraction
        A code is dead when its moving-average share of assignments is below
        ``dead_fraction / n_codes`` (``restart_dead`` replaces it).
    """

    def __init__(self, n_codes: int, dim: int, beta: float = 0.25, ema: bool = False, decay: float = 0.99,
                 eps: float = 1e-5, dead_fraction: float = 0.1, usage_decay: float = 0.9):
        super().__init__()
        self.n_codes, self.dim, self.beta, self.ema = n_codes, dim, beta, ema
        self.decay, self.eps, self.dead_fraction, self.usage_decay = decay, eps, dead_fraction, usage_decay
        init = torch.randn(n_codes, dim)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(n_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # moving-average share of assignments per code, starting uniform
        self.register_buffer("usage_share", torch.full((n_codes,), 1.0 / n_codes))

    def forward(self, z: torch.Tensor) -> Quantized:
        flat = z.reshape(-1, self.dim)
        codes = nearest_codes(flat.detach().float(), self.codebook.detach().float())
        e = self.codebook[codes].to(z.dtype)
        commitment = F.mse_loss(flat, e.detach())
        loss = self.beta * commitment
        if not self.ema:
            loss = loss + F.mse_loss(e, flat.detach())
        if self.training:
            self._track(flat.detach().float(), codes)
        z_q = flat + (e - flat).detach()  # straight-through: forward e, gradient of identity to z
        codes = codes.reshape(z.shape[:-1])
        used = torch.bincount(codes.reshape(-1), minlength=self.n_codes) > 0
        return Quantized(z_q.reshape(z.shape), codes, loss, code_perplexity(codes, self.n_codes), used.float().mean())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The code vectors of indices ``codes`` (...,) -> (..., dim)."""
        return self.codebook[codes]

    @torch.no_grad()
    def _track(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """Usage shares, and with ``ema`` the codebook's moving averages (summed over DDP ranks)."""
        one_hot = F.one_hot(codes, self.n_codes).float()  # (N, K)
        counts, sums = one_hot.sum(0), one_hot.t() @ flat
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.usage_share.mul_(self.usage_decay).add_(counts / counts.sum().clamp_min(1), alpha=1 - self.usage_decay)
        if not self.ema:
            return
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.n_codes * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    def dead_codes(self) -> torch.Tensor:
        """Indices of the codes whose usage share is below ``dead_fraction / n_codes``."""
        return torch.nonzero(self.usage_share < self.dead_fraction / self.n_codes).flatten()

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Move every dead code onto a latent of ``z`` (..., dim) drawn without replacement where
        there are enough; their usage restarts at uniform. Returns the restarted indices."""
        return self.restart(z, self.dead_codes(), generator)

    @torch.no_grad()
    def restart(self, z: torch.Tensor, dead: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Move codes ``dead`` onto latents of ``z`` as ``restart_dead`` does (all codes: a data-dependent
        initialisation, so that no code starts out of the latents' reach)."""
        if len(dead) == 0:
            return dead
        flat = z.reshape(-1, self.dim).float()
        if len(flat) >= len(dead):
            pick = torch.randperm(len(flat), generator=generator, device="cpu")[:len(dead)]
        else:
            pick = torch.randint(len(flat), (len(dead),), generator=generator, device="cpu")
        rows = flat[pick.to(flat.device)].to(self.codebook.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(rows, src=0)  # every rank restarts on rank 0's latents
        self.codebook.data[dead] = rows
        self.usage_share[dead] = 1.0 / self.n_codes
        if self.ema:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = rows
        return dead


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return -weight.to(grad.dtype) * grad, None


def reverse_gradient(x: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Identity forward; the gradient times ``-weight`` backward."""
    return _Reverse.apply(x, torch.as_tensor(weight, dtype=torch.float32, device=x.device))


class GradientReversal(nn.Module):
    """``reverse_gradient`` with the weight in a buffer (set per step by the schedule, saved in checkpoints)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.register_buffer("weight", torch.tensor(float(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.weight)


__all__ = ["GradientReversal", "Quantized", "VectorQuantizer", "code_perplexity", "nearest_codes", "reverse_gradient"]
