"""fmriflow's selective scan against a naive step-by-step loop, forward + backward, on the CPU.

The naive loop is the recurrence written one time step at a time (as mamba-ssm's
``selective_scan_ref`` does): it materialises the decays and inputs for the whole sequence,
keeps every state for autograd, and issues a handful of small operations per step (slices
taken with ``unbind``, so its backward stays linear in the length). For each shape it prints
the time of forward + backward (median of ``--repeats``), the bytes autograd keeps for the
backward pass (counted with ``saved_tensors_hooks``), and the largest output and gradient
difference between the two.

Two regimes of inputs: ``init``, the decays of a freshly initialised Mamba block
(A = -(1..d_state), softplus(delta + bias) around 0.001..0.1), where fmriflow's chunks use
their closed form; ``harsh``, A = -exp(N(0, 1)) and delta = softplus(N(-2, 1)) (per-step
log-decays up to ~40), where most chunks fall back to recursive doubling.

    PYTHONPATH=src python benchmarks/ssm_cpu.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch
import torch.nn.functional as F

from fmriflow.models.ssm import selective_scan

# (batch, d_inner, d_state, length): a toy block, the tiny voxel models' widths, a long sequence
SHAPES = [(2, 64, 16, 256), (2, 64, 16, 2048), (2, 128, 16, 8192), (1, 256, 16, 16384)]


def naive_scan(u, delta, A, B, C, D, z, delta_bias):
    """Step-by-step recurrence with softplus(delta + bias), D skip and SiLU(z) gate."""
    delta = F.softplus(delta + delta_bias[:, None])
    decay = torch.exp(delta[..., None] * A[:, None, :]).unbind(2)  # L x (b, d, n)
    drive = ((delta * u)[..., None] * B.transpose(1, 2)[:, None]).unbind(2)  # L x (b, d, n)
    readout = C[:, None].unbind(3)  # L x (b, 1, n); unbind, not indexing, keeps the backward linear in L
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a, x, c in zip(decay, drive, readout):
        h = a * h + x
        ys.append((h * c).sum(-1))
    return (torch.stack(ys, dim=2) + u * D[:, None]) * F.silu(z)


def make_inputs(regime: str, batch: int, d_inner: int, d_state: int, length: int) -> list[torch.Tensor]:
    """u, delta, A, B, C, D, z, delta_bias of one regime (see the module docstring), seeded."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if regime == "init":  # as fmriflow.models.ssm.Mamba initialises them
        step = torch.exp(torch.rand(d_inner, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        A, bias, delta = -torch.arange(1, d_state + 1.0).repeat(d_inner, 1), step + torch.log(-torch.expm1(-step)), 0.5 * r(batch, d_inner, length)
    else:
        A, bias, delta = -torch.exp(r(d_inner, d_state)), r(d_inner) - 2, r(batch, d_inner, length)
    return [r(batch, d_inner, length), delta, A, r(batch, d_state, length), r(batch, d_state, length), r(d_inner),
            r(batch, d_inner, length), bias]


def run(fn, inputs) -> tuple[float, int, torch.Tensor, list[torch.Tensor]]:
    """Seconds for forward + backward, bytes saved for backward, output and gradients."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*leaves)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - start, sum(saved), y.detach(), [t.grad for t in leaves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = lambda u, dt, A, B, C, D, z, bias: selective_scan(u, dt, A, B, C, D, z, bias, True)  # noqa: E731
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, forward + backward, median of {args.repeats}")
    print(f"{'batch x d_inner x d_state x L':>30} {'inputs':>6}  {'naive s':>9}  {'ours s':>9}  {'speed-up':>8}  "
          f"{'naive saved':>11}  {'ours saved':>10}  {'max|dy|/max|y|':>14}  {'max |dgrad|/max|grad|':>21}")
    for (batch, d_inner, d_state, length), regime in itertools.product(SHAPES, ("init", "harsh")):
        inputs = make_inputs(regime, batch, d_inner, d_state, length)
        results = {}
        for name, fn in (("naive", naive_scan), ("ours", ours)):
            runs = [run(fn, inputs) for _ in range(args.repeats)]
            results[name] = (statistics.median(r[0] for r in runs), *runs[0][1:])
        (t_n, m_n, y_n, g_n), (t_o, m_o, y_o, g_o) = results["naive"], results["ours"]
        y_err = float((y_o - y_n).abs().max() / y_n.abs().max())
        grad_err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_o, g_n))
        print(f"{f'{batch} x {d_inner} x {d_state} x {length}':>30} {regime:>6}  {t_n:9.3f}  {t_o:9.3f}  "
              f"{t_n / t_o:7.1f}x  {m_n / 2**20:8.1f} MiB  {m_o / 2**20:7.1f} MiB  {y_err:14.1e}  {grad_err:21.1e}")


if __name__ == "__main__":
    main()
