"""fmriflow's selective scan against a naive step-by-step loop, forward + backward, on the CPU.

The naive loop is the recurrence written one time step at a time (as mamba-ssm's
``selective_scan_ref`` does): it materialises the decays and inputs for the whole sequence,
keeps every state for autograd, and issues a handful of small operations per step. For each
shape it prints the time of forward + backward (median of ``--repeats``), the bytes autograd
keeps for the backward pass (counted with ``saved_tensors_hooks``), and the largest output
and gradient difference between the two.

    PYTHONPATH=src python benchmarks/ssm_cpu.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
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
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (b, d, L, n)
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, L, n)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, dim=2) + u * D[:, None]) * F.silu(z)


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = lambda u, dt, A, B, C, D, z, bias: selective_scan(u, dt, A, B, C, D, z, bias, True)  # noqa: E731
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, forward + backward, median of {args.repeats}")
    print(f"{'batch x d_inner x d_state x L':>30}  {'naive s':>9}  {'ours s':>9}  {'speed-up':>8}  "
          f"{'naive saved':>11}  {'ours saved':>10}  {'max |dy|':>8}  {'max |dgrad|/max|grad|':>21}")
    for batch, d_inner, d_state, length in SHAPES:
        g = torch.Generator().manual_seed(0)
        inputs = [torch.randn(batch, d_inner, length, generator=g), torch.randn(batch, d_inner, length, generator=g),
                  -torch.exp(torch.randn(d_inner, d_state, generator=g)), torch.randn(batch, d_state, length, generator=g),
                  torch.randn(batch, d_state, length, generator=g), torch.randn(d_inner, generator=g),
                  torch.randn(batch, d_inner, length, generator=g), torch.randn(d_inner, generator=g) - 2]
        results = {}
        for name, fn in (("naive", naive_scan), ("ours", ours)):
            runs = [run(fn, inputs) for _ in range(args.repeats)]
            results[name] = (statistics.median(r[0] for r in runs), *runs[0][1:])
        (t_n, m_n, y_n, g_n), (t_o, m_o, y_o, g_o) = results["naive"], results["ours"]
        grad_err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_o, g_n))
        print(f"{f'{batch} x {d_inner} x {d_state} x {length}':>30}  {t_n:9.3f}  {t_o:9.3f}  {t_n / t_o:7.1f}x  "
              f"{m_n / 2**20:8.1f} MiB  {m_o / 2**20:7.1f} MiB  {float((y_o - y_n).abs().max()):8.1e}  {grad_err:21.1e}")


if __name__ == "__main__":
    main()
