"""Training step time of the two text tasks (issue 22): vq-align and lm-finetune, one process.

vq-align: a batch of region windows (``--regions`` x ``--window``) through the patch autoencoder,
the vector quantiser and the domain classifier (with its text draw), backward, AdamW: what one
step of ``fmriflow.train --task vq-align`` computes. lm-finetune: a batch of token sequences as
long as that window's codes plus a prompt and an answer through the GPT-2-shaped language model
over text tokens + codes, with the loss on the answer only. bf16 autocast on CUDA unless
``--fp32`` (the loop's ``precision: auto``), fp32 on CPU; ``--warmup`` untimed steps first.
Prints ms per step, samples/s and peak memory per task and model size.

    python benchmarks/text_step_time.py --device cuda --batch 64
    python benchmarks/text_step_time.py --device cpu --batch 8 --steps 5 --models tiny
"""

from __future__ import annotations

import argparse

import torch
from steptime import timed, train_step  # beside this script


def _vq_model(name: str, args):
    from fmriflow.models.vqalign import CONFIGS, create_vqalign, random_text_table

    torch.manual_seed(0)
    table = random_text_table(args.text_tokens, CONFIGS[name].dim, CONFIGS[name].text_std, seed=0)
    return create_vqalign(name, args.regions, table, torch.arange(4, args.text_tokens))


def _lm(name: str, vq, length: int, args):
    from fmriflow.text.lm import build_lm
    from fmriflow.text.prompts import SharedVocab

    vocab = SharedVocab(n_text=args.text_tokens, n_codes=vq.n_tokens, bos=0, eos=1, pad=2)
    return build_lm(name, vocab, vq.text_table, vq.token_table(), n_positions=length), vocab


def measure(name: str, args, device) -> list[dict]:
    bf16 = device.type == "cuda" and not args.fp32
    g = torch.Generator().manual_seed(1)
    vq = _vq_model(name, args).to(device).train()
    x = torch.randn(args.batch, args.regions, args.window, generator=g).to(device)
    n_codes = args.window // vq.config.patch * vq.config.groups
    draw = torch.randint(len(vq.text_ids), (args.batch * n_codes,), generator=g)

    def vq_loss():
        vq.set_text_draw(draw)  # what the task's schedule sets before each step
        return vq(x).loss

    seconds, peak, _ = timed(train_step(vq, vq_loss, device, bf16), args.warmup, args.steps, device)
    rows = [{"task": "vq-align", "model": name, "tokens": n_codes, "ms": 1e3 * seconds, "peak": peak / 2**30}]

    n_tokens = n_codes + (args.window // vq.config.patch if vq.config.gain_levels else 0)  # + amplitude tokens
    length = n_tokens + args.prompt_tokens + args.answer_tokens + 2
    lm, vocab = _lm(name, vq, length, args)
    lm = lm.to(device).train()
    ids = torch.randint(vocab.size, (args.batch, length), generator=g).to(device)
    labels = torch.full_like(ids, -100)
    labels[:, -args.answer_tokens - 1:] = ids[:, -args.answer_tokens - 1:]  # the answer and eos only
    mask = torch.ones_like(ids)
    seconds, peak, _ = timed(train_step(lm, lambda: lm(ids, mask, labels).loss, device, bf16), args.warmup,
                              args.steps, device)
    rows.append({"task": "lm-finetune", "model": name, "tokens": length, "ms": 1e3 * seconds, "peak": peak / 2**30})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--regions", type=int, default=424)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--text-tokens", type=int, default=512, help="text vocabulary (the trained tokenizer's size)")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, batch {args.batch}, {args.regions} regions x {args.window} TRs, "
          f"{'fp32' if args.fp32 or device.type != 'cuda' else 'bf16 autocast'}, {args.steps} timed steps")
    for model in args.models:
        for row in measure(model, args, device):
            print(f"  {row['task']:11s} {row['model']:5s} {row['tokens']:4d} tokens/sample  {row['ms']:8.2f} ms/step  "
                  f"{args.batch / row['ms'] * 1e3:9.1f} samples/s  peak {row['peak']:.2f} GiB")


if __name__ == "__main__":
    main()
