"""Pretraining step time and peak memory of BrainSymphony beside the BrainLM-style model, one run.

Both models take the same batch of windows (``--regions`` x ``--timepoints``, default 450 x 200,
the paper's shape); BrainSymphony also takes one connectome per sample (multimodal; ``--modalities``
for the unimodal paths). Each step is forward + backward + AdamW under bf16 autocast on CUDA (fp32
on CPU), ``--warmup`` untimed steps first. Prints parameters, ms per step, samples/s, peak memory
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak RSS growth) and the ratios.

    python benchmarks/brainsymphony_step.py --device cuda --batch 32
    python benchmarks/brainsymphony_step.py --device cpu --batch 2 --steps 3 --regions 100
"""

from __future__ import annotations

import argparse

import torch
from steptime import timed, train_step  # beside this script


def _models(args, device):
    from fmriflow.models.brainlm import create_model
    from fmriflow.models.brainsymphony import create_brainsymphony

    torch.manual_seed(0)
    symphony = create_brainsymphony(args.symphony, args.regions, window=args.timepoints, modalities=args.modalities)
    brainlm = create_model(args.brainlm, torch.randn(args.regions, 3) * 40, max_timepoints=args.timepoints)
    return {"brainsymphony": symphony.to(device), "brainlm": brainlm.to(device)}


def _batch(args, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.regions, args.timepoints, generator=g)
    a = torch.randn(args.batch, args.regions, args.regions, generator=g)
    return x.to(device), ((a + a.transpose(1, 2)) / 2).to(device)


def measure(name: str, model, x, sc, args, device) -> dict:
    bf16 = device.type == "cuda" and not args.fp32
    loss = (lambda: model(x, sc).loss) if name == "brainsymphony" else (lambda: model(x).loss)
    seconds, gpu, rss = timed(train_step(model, loss, device, bf16), args.warmup, args.steps, device)
    peak = gpu if device.type == "cuda" else rss
    return {"params": sum(p.numel() for p in model.parameters()), "ms": 1e3 * seconds,
            "samples_per_s": args.batch / seconds, "peak_gib": peak / 2**30}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--regions", type=int, default=450)
    parser.add_argument("--timepoints", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--symphony", default="brainsymphony-5m", help="fmriflow.models.brainsymphony.CONFIGS name")
    parser.add_argument("--brainlm", default="brainlm-5m", help="fmriflow.models.brainlm.CONFIGS name")
    parser.add_argument("--modalities", default="both", choices=("both", "fmri", "sc"))
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    x, sc = _batch(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; batch {args.batch} x {args.regions} regions x {args.timepoints} time points; "
          f"{'bf16' if device.type == 'cuda' and not args.fp32 else 'fp32'}; {args.steps} timed steps")
    # on CPU the peak is the growth of the process's peak RSS, which only grows: the second model's
    # figure is a lower bound (CUDA's peak is reset per model)
    results = {key: measure(key, model, x, sc, args, device) for key, model in _models(args, device).items()}
    for key, r in results.items():
        print(f"  {key:14s} {r['params'] / 1e6:6.2f}M params  {r['ms']:9.1f} ms/step  "
              f"{r['samples_per_s']:8.1f} samples/s  peak {r['peak_gib']:6.2f} GiB")
    s, b = results["brainsymphony"], results["brainlm"]
    print(f"brainsymphony / brainlm: step time {s['ms'] / b['ms']:.2f}x, peak memory "
          f"{s['peak_gib'] / max(b['peak_gib'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
