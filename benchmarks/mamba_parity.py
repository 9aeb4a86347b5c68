"""mamba-ssm's CUDA kernels against fmriflow's plain-PyTorch path, on one GPU: outputs and gradients.

Two checks, each in fp32 and in bf16, with the same tensors / weights on both sides:

1. the scan: ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` against
   ``fmriflow.models.ssm.selective_scan`` (input-dependent B, C; D skip, z gate, delta bias
   with softplus), gradients with respect to every input;
2. the block: ``mamba_ssm.modules.mamba_simple.Mamba`` against ``fmriflow.models.ssm.Mamba``
   with its state dict loaded, the output and every parameter's gradient (bf16 under autocast,
   as training runs; mamba-ssm takes its fused path when causal-conv1d is installed).

For each tensor it prints the largest absolute difference and that difference relative to
the largest magnitude of the reference tensor; in the scan check also each side's error
against fmriflow's path in fp64. It exits with 1 when a relative error passes the tolerance
of its dtype, 2 when mamba-ssm or CUDA is missing. mamba-ssm is imported only here, at run time.

    PYTHONPATH=src python benchmarks/mamba_parity.py [--length 4096] [--d-model 256]
"""

from __future__ import annotations

import argparse
import sys

import torch

TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # max |a - b| / max |b|
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_mamba_ssm(device: str):
    if device == "cuda" and not torch.cuda.is_available():
        print("mamba_parity: no CUDA device", file=sys.stderr)
        sys.exit(2)
    try:
        from mamba_ssm.modules import mamba_simple
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or a broken build's OSError
        print(f"mamba_parity: mamba_ssm is not importable ({type(exc).__name__}: {exc})", file=sys.stderr)
        sys.exit(2)
    return selective_scan_fn, mamba_simple


def errors(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    diff = float((ours.float() - reference.float()).abs().max())
    return diff, diff / max(float(reference.float().abs().max()), 1e-30)


def scan_check(selective_scan_fn, args, precision: str, rows: list) -> None:
    from fmriflow.models.ssm import selective_scan

    dtype = DTYPES[precision]
    g = torch.Generator(device=args.device).manual_seed(0)
    b, d, n, L = args.batch, 2 * args.d_model, args.d_state, args.length
    r = lambda *s, dt=dtype: torch.randn(*s, device=args.device, generator=g).to(dt)  # noqa: E731
    inputs = {"u": r(b, d, L), "delta": r(b, d, L) * 0.5 - 1, "A": -torch.exp(r(d, n, dt=torch.float32) * 0.5),
              "B": r(b, n, L), "C": r(b, n, L), "D": r(d, dt=torch.float32), "z": r(b, d, L),
              "delta_bias": r(d, dt=torch.float32) * 0.5 - 2}
    grad_out = r(b, d, L)

    def run(fn, cast=None):
        leaves = {k: (v.to(cast) if cast else v).detach().clone().requires_grad_() for k, v in inputs.items()}
        y = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
               leaves["delta_bias"], True)
        y.backward(grad_out.to(y.dtype))
        return {"out": y.detach(), **{f"d{k}": v.grad for k, v in leaves.items()}}

    kernel = run(selective_scan_fn)
    ours = run(selective_scan)
    exact = run(selective_scan, cast=torch.float64)
    for name in kernel:
        abs_err, rel_err = errors(ours[name], kernel[name])
        rows.append(("scan", precision, name, abs_err, rel_err, errors(kernel[name], exact[name])[1],
                     errors(ours[name], exact[name])[1]))


def block_check(mamba_simple, args, precision: str, rows: list) -> None:
    from fmriflow.models.ssm import Mamba

    torch.manual_seed(0)
    theirs = mamba_simple.Mamba(args.d_model, d_state=args.d_state, d_conv=4, expand=2).to(args.device)
    ours = Mamba(args.d_model, d_state=args.d_state, d_conv=4, expand=2).to(args.device)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator(device=args.device).manual_seed(1)
    x = torch.randn(args.batch, args.length, args.d_model, device=args.device, generator=g)
    grad_out = torch.randn(x.shape, device=args.device, generator=g)
    results = []
    for module in (theirs, ours):
        module.zero_grad(set_to_none=True)
        xi = x.detach().clone().requires_grad_()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = module(xi)
        y.backward(grad_out.to(y.dtype))
        results.append({"out": y.detach(), "dx": xi.grad, **{f"d{k}": p.grad for k, p in module.named_parameters()}})
    for name in results[0]:
        abs_err, rel_err = errors(results[1][name], results[0][name])
        rows.append(("block", precision, name, abs_err, rel_err, None, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256, help="block width; the scan uses d_inner = 2 x this")
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only exercises this script against a stand-in")
    args = parser.parse_args()
    selective_scan_fn, mamba_simple = load_mamba_ssm(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    rows: list = []
    for precision in ("fp32", "bf16"):
        scan_check(selective_scan_fn, args, precision, rows)
        block_check(mamba_simple, args, precision, rows)
    fused = mamba_simple.causal_conv1d_fn is not None
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{device}, torch {torch.__version__}, mamba_ssm block path: "
          f"{'fused (causal-conv1d)' if fused else 'selective_scan_fn + nn.Conv1d'}; batch {args.batch}, "
          f"length {args.length}, d_model {args.d_model}, d_state {args.d_state}")
    print(f"{'check':6} {'dtype':5} {'tensor':22} {'max |ours-kernel|':>17} {'relative':>9} {'tol':>7}  "
          f"{'kernel vs fp64':>14} {'ours vs fp64':>12}")
    failed = []
    for check, precision, name, abs_err, rel_err, kernel_exact, ours_exact in rows:
        tol = TOLERANCE[precision]
        flag = "" if rel_err <= tol else "  FAIL"
        extra = f"{kernel_exact:14.2e} {ours_exact:12.2e}" if kernel_exact is not None else ""
        print(f"{check:6} {precision:5} {name:22} {abs_err:17.3e} {rel_err:9.2e} {tol:7.0e}  {extra}{flag}")
        if flag:
            failed.append(f"{check} {precision} {name}")
    print("parity: " + ("FAILED for " + ", ".join(failed) if failed else "all within tolerance"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
