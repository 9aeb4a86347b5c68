"""BrainMT against its attention-only twin: peak GPU memory and step time against the number of frames.

One step = forward, backward and fused AdamW under bf16 autocast, batch 2, random 91 x 109 x 91
volumes (float32 input, as the data loader gives them) and an MSE loss on the regression head.
Each case runs ``--warmup`` untimed steps, then ``--steps`` timed ones (CUDA-synchronised; the
median is reported); peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps,
reset before each case (``max_memory_reserved``, what the allocator held, is printed too). A
case that runs out of memory is reported as OOM and the run goes on. The attention-only model
replaces each bidirectional Mamba block by a transformer block (same width and depth, about
the same number of parameters); both attend with SDPA (flash kernels), so both are linear in
memory, and the difference shows in time.

Then, per model, a least-squares line of peak memory against frames (slope, intercept, R^2,
largest deviation from the line), and whether BrainMT's 200-frame step fits in 40 GB
(40e9 bytes, 37.25 GiB).

    PYTHONPATH=src python benchmarks/mamba_memory.py [--frames 50 100 200 300 400] [--checkpoint off on] [--json out.json]
    PYTHONPATH=src python benchmarks/mamba_memory.py --device cpu --tiny      # smoke check, no timings of note

The Mamba path (mamba-ssm's kernels or the plain-PyTorch one) is printed; install mamba-ssm
(README, GPU section) so that BrainMT runs on the kernels. ``FMRIFLOW_MAMBA_BACKEND=reference``
forces the plain path.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import numpy as np
import torch

LIMIT_BYTES = 40e9  # "fits in 40 GB"
GIB = 2**30


def measure(name: str, frames: int, args, checkpoint: bool) -> dict:
    """One case: build the model, warm up, time the steps; OOM is a result, not an error."""
    from fmriflow.models.brainmt import create_brainmt
    from fmriflow.models.ssm import backend_of

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    result = {"model": name, "frames": frames, "checkpoint": checkpoint}
    model = optimizer = x = out = loss = None
    try:
        torch.manual_seed(0)
        overrides = {"max_frames": max(args.frames), "checkpoint": checkpoint}
        if args.tiny:
            overrides["img_size"] = tuple(args.img_size)
        model = create_brainmt(name, **overrides).to(device)
        result.update(params=sum(p.numel() for p in model.parameters()), tokens=model.n_tokens(frames),
                      backend=backend_of(model) or "none (attention only)")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        x = torch.randn(args.batch, frames, *model.config.img_size, device=device)
        target = torch.zeros(args.batch, device=device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(args.warmup + args.steps):
            if step == args.warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x)
            loss = torch.nn.functional.mse_loss(out[:, 0].float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        result["step_ms"] = 1000 * statistics.median(times)
        if cuda:
            result["peak_bytes"] = torch.cuda.max_memory_allocated()
            result["reserved_bytes"] = torch.cuda.max_memory_reserved()
    except torch.OutOfMemoryError:
        result["oom"] = True
    finally:
        del model, optimizer, x, out, loss
    return result


def release(device: str) -> None:
    """Free what the last case left (called after it returned, so its frame is gone)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def linear_fit(points: list[tuple[int, float]]) -> dict | None:
    """Least squares of memory (GiB) on frames: slope per 100 frames, intercept, R^2, worst deviation."""
    if len(points) < 3:
        return None
    f, m = np.array(points, dtype=float).T
    slope, intercept = np.polyfit(f, m, 1)
    fitted = slope * f + intercept
    ss_res, ss_tot = float(((m - fitted) ** 2).sum()), float(((m - m.mean()) ** 2).sum())
    return {"slope_gib_per_100_frames": 100 * slope, "intercept_gib": intercept,
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "max_relative_deviation": float((np.abs(m - fitted) / m).max())}


def fmt_memory(r: dict | None) -> str:
    if r is None:
        return f"{'-':>9} {'-':>9}"
    if r.get("oom"):
        return f"{'OOM':>9} {'OOM':>9}"
    peak = f"{r['peak_bytes'] / GIB:9.2f}" if "peak_bytes" in r else f"{'n/a':>9}"
    return f"{peak} {r['step_ms']:9.1f}"


def ratio(a: dict | None, b: dict | None, key: str) -> str:
    if not a or not b or a.get("oom") or b.get("oom") or key not in a or key not in b:
        return f"{'-':>8}"
    return f"{b[key] / a[key]:7.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="default 50 100 200 300 400 (--tiny: 2 4 6 8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpoint", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="activation checkpointing of BrainMT's blocks (the attention-only model follows)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny configs (smoke check)")
    parser.add_argument("--img-size", type=int, nargs=3, default=[91, 109, 91], help="with --tiny only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    args.frames = sorted(args.frames or ([2, 4, 6, 8] if args.tiny else [50, 100, 200, 300, 400]))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("mamba_memory: no CUDA device (use --device cpu --tiny for a smoke check)")
    names = ("tiny", "tiny-attention") if args.tiny else ("brainmt", "brainmt-attention")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device_name}, torch {torch.__version__}, batch {args.batch}, bf16 autocast, warm-up {args.warmup}, "
          f"median of {args.steps} steps")
    results, verdicts = [], []
    for checkpoint in (c == "on" for c in args.checkpoint):
        rows = {name: {} for name in names}
        for name in names:
            for f in args.frames:
                rows[name][f] = measure(name, f, args, checkpoint)
                release(args.device)
        results += [r for by_frame in rows.values() for r in by_frame.values()]
        first = next((r for r in rows[names[0]].values() if "params" in r), {})
        other = next((r for r in rows[names[1]].values() if "params" in r), {})
        print(f"\nactivation checkpointing {'on' if checkpoint else 'off'}; {names[0]}: {first.get('params', 0):,} "
              f"parameters, Mamba path {first.get('backend')}; {names[1]}: {other.get('params', 0):,} parameters")
        print(f"{'frames':>6} {'tokens':>8} | {names[0] + ' GiB':>9} {'ms':>9} | {names[1][:14] + ' GiB':>9} {'ms':>9} | "
              f"{'mem ratio':>9} {'time ratio':>10}")
        for f in args.frames:
            a, b = rows[names[0]][f], rows[names[1]][f]
            tokens = a.get("tokens") or b.get("tokens") or 0
            print(f"{f:6d} {tokens:8d} | {fmt_memory(a)} | {fmt_memory(b)} | {ratio(a, b, 'peak_bytes'):>9} "
                  f"{ratio(a, b, 'step_ms'):>10}")
        print("(ratios: attention-only / BrainMT)")
        for name in names:
            points = [(f, r["peak_bytes"] / GIB) for f, r in rows[name].items() if "peak_bytes" in r]
            fit = linear_fit(points)
            if fit:
                linear = fit["r2"] >= 0.99 and fit["max_relative_deviation"] <= 0.05
                print(f"{name}: memory = {fit['intercept_gib']:.2f} GiB + {fit['slope_gib_per_100_frames']:.2f} GiB per "
                      f"100 frames, R^2 {fit['r2']:.4f}, largest deviation {100 * fit['max_relative_deviation']:.1f}% "
                      f"-> {'linear' if linear else 'NOT linear'}")
                verdicts.append({"model": name, "checkpoint": checkpoint, **fit, "linear": linear})
        at200 = rows[names[0]].get(200)
        if at200 is not None and "peak_bytes" in at200:
            fits = at200["peak_bytes"] < LIMIT_BYTES
            print(f"{names[0]}, 200 frames: peak {at200['peak_bytes'] / 1e9:.1f} GB ({at200['peak_bytes'] / GIB:.2f} GiB) "
                  f"-> {'fits' if fits else 'does NOT fit'} in 40 GB")
            verdicts.append({"model": names[0], "checkpoint": checkpoint, "frames": 200, "fits_40gb": fits})
        elif at200 is not None and at200.get("oom"):
            print(f"{names[0]}, 200 frames: OOM on this device -> does NOT fit")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name, "results": results, "verdicts": verdicts}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
