"""Pretraining throughput of the BrainLM-style masked autoencoder on GPUs, side by side.

For one model config at 424 regions x 200 TRs it measures, in one run:
  * bf16 autocast + SDPA attention (flash kernels on Hopper) + fused AdamW: fmriflow's training step;
  * fp32 + eager attention (softmax(QK^T)V in PyTorch ops): the way the original BrainLM code trains;
  * optionally the bf16 step on N GPUs with DDP (torchrun), against one GPU.
and prints samples/s, tokens/s, model FLOPs utilisation (MFU, against the GPU's dense bf16 peak)
and peak memory.

    python benchmarks/pretrain_throughput.py --model brainlm-111m --batch 32 --gpus 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

# Dense bf16 tensor-core peaks (NVIDIA data sheets, SXM parts), FLOP/s per GPU.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(name: str, override: float | None) -> float:
    if override:
        return override * 1e12
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def measure(args, precision: str, attention: str, batch: int | None = None, compile: bool = False) -> dict:
    """Time `args.steps` optimiser steps after `args.warmup` untimed ones, on this process's GPU."""
    import torch.distributed as dist

    from fmriflow.models.brainlm import create_model, model_flops_per_sample

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl", device_id=device)
    torch.manual_seed(0)
    coords = torch.randn(args.regions, 3) * 40
    model = create_model(args.model, coords, attention=attention).to(device)
    trainable = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local]) if world > 1 else model
    if compile:
        trainable = torch.compile(trainable, dynamic=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = batch or args.batch
    x = torch.randn(batch, args.regions, args.timepoints, device=device)
    bf16 = precision == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as BrainLM's script runs
    torch.backends.cudnn.allow_tf32 = False

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = trainable(x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
    except torch.OutOfMemoryError:
        return {"precision": precision, "attention": attention, "oom": True}
    samples = batch * world / seconds
    flops = model_flops_per_sample(model.config, args.regions, args.timepoints)
    peak = peak_flops(torch.cuda.get_device_name(device), args.peak_tflops)
    return {
        "precision": precision, "attention": attention, "gpus": world, "gpu": torch.cuda.get_device_name(device),
        "batch": batch, "compiled": compile,
        "step_ms": seconds * 1e3, "samples_per_s": samples,
        "tokens_per_s": samples * model.n_tokens(args.regions, args.timepoints),
        "mfu": flops * samples / (peak * world), "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "rank": rank,
    }


def report(row: dict) -> str:
    if row.get("oom"):
        return f"  {row['precision']:>4} {row['attention']:<6} out of memory"
    return (f"  {row['precision']:>4} {row['attention']:<6} {'compiled' if row['compiled'] else 'eager   '} "
            f"batch {row['batch']:>3} x {row['gpus']} GPU  {row['step_ms']:8.1f} ms/step  "
            f"{row['samples_per_s']:8.1f} samples/s  {row['tokens_per_s'] / 1e6:6.2f} M tokens/s  "
            f"MFU {100 * row['mfu']:5.1f}%  peak {row['peak_mem_gib']:5.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="brainlm-111m")
    parser.add_argument("--batch", type=int, default=32, help="samples per GPU")
    parser.add_argument("--regions", type=int, default=424)
    parser.add_argument("--timepoints", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1], help="GPU counts to compare (bf16 step)")
    parser.add_argument("--no-eager", action="store_true", help="skip the fp32 eager-attention reference")
    parser.add_argument("--eager-batch", type=int, default=8, help="batch of the fp32 eager reference (BrainLM's 111M ran at 8)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the bf16 step (dynamic=False)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak per GPU if not an H100/H200/A100")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one DDP process launched by torchrun
        row = measure(args, "bf16", "sdpa", compile=args.compile)
        if row.get("rank", 0) == 0:
            print("RESULT " + json.dumps(row), flush=True)
        return

    print(f"{args.model} at {args.regions} regions x {args.timepoints} TRs, batch {args.batch} per GPU")
    rows = [measure(args, "bf16", "sdpa", compile=args.compile)]
    print(report(rows[0]), flush=True)
    if not args.no_eager:
        torch._dynamo.reset()
        rows.append(measure(args, "fp32", "eager", batch=args.eager_batch))
        print(report(rows[-1]), flush=True)
    multi = {}
    for n in [g for g in args.gpus if g > 1]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
               "--worker", "--model", args.model, "--batch", str(args.batch), "--regions", str(args.regions),
               "--timepoints", str(args.timepoints), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        if args.compile:
            cmd.append("--compile")
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout[-3000:], out.stderr[-3000:])
            raise SystemExit(f"{n}-GPU run failed")
        multi[n] = json.loads(line[7:])
        print(report(multi[n]), flush=True)

    base = rows[0]
    print("\nratios:")
    if len(rows) > 1 and not rows[1].get("oom"):
        print(f"  bf16+SDPA (batch {base['batch']}) vs fp32+eager (batch {rows[1]['batch']}, BrainLM's way): "
              f"{base['samples_per_s'] / rows[1]['samples_per_s']:.1f}x samples/s; peak memory "
              f"{base['peak_mem_gib']:.1f} vs {rows[1]['peak_mem_gib']:.1f} GiB")
    print(f"  MFU, 1 GPU bf16: {100 * base['mfu']:.1f}% (target >= 35% on an H100)")
    for n, row in multi.items():
        print(f"  {n} GPUs vs 1: {row['samples_per_s'] / base['samples_per_s']:.2f}x samples/s (target >= 1.8x for 2)")


if __name__ == "__main__":
    main()
