"""Parity of fmriflow's imported Brain-JEPA encoder with the authors' own code, same random weights and inputs.

    python benchmarks/brain_jepa_parity.py AUTHORS_CHECKOUT [--layers 12]

AUTHORS_CHECKOUT: a checkout of Eric-LRL/Brain-JEPA (kept outside this repository). Their
``src/models/vision_transformer.py`` imports ``flash_attn`` at the top; this script puts a stand-in
module of that name first on the path (its function raises: the authors' ``attn_mode='normal'``
path is the one run, on the CPU). Their ``vit_base`` target encoder (450 x 160 input, patch 16,
gradient positions from their ``data/gradient_mapping_450.csv``) gets seeded random weights,
saved in the release's layout (``module.`` prefix, under ``target_encoder``) and imported through
``fmriflow.bundle.import_jepa`` (every tensor); printed: the largest absolute difference over the
largest absolute reference value of the token outputs and of the mean-pooled embedding, CPU fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

STAND_IN = "def flash_attn_qkvpacked_func(*args, **kwargs):\n    raise RuntimeError('flash_attn is not used on the CPU')\n"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the authors' Brain-JEPA checkout (outside this repository)")
    parser.add_argument("--layers", type=int, default=12, help="encoder depth (12: the release's vit_base)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(f"{tmp}/flash_attn")
        Path(f"{tmp}/flash_attn/__init__.py").write_text(STAND_IN)
        sys.path[:0] = [tmp, str(args.checkout)]
        import pandas as pd
        from src.models.vision_transformer import VisionTransformer

        from fmriflow.bundle.imports import import_checkpoint
        from fmriflow.bundle.read import load_bundle_encoder

        gradient_csv = args.checkout / "data" / "gradient_mapping_450.csv"
        gradient = torch.tensor(pd.read_csv(gradient_csv, header=None).values, dtype=torch.float32)[None]
        torch.manual_seed(0)
        theirs = VisionTransformer(img_size=(450, 160), patch_size=16, in_chans=1, embed_dim=768, depth=args.layers,
                                   num_heads=12, mlp_ratio=4, qkv_bias=True,
                                   norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
                                   gradient_pos_embed=gradient, attn_mode="normal", add_w="mapping").eval()
        state = {f"module.{k}": v for k, v in theirs.state_dict().items()}
        checkpoint = Path(tmp) / "jepa-ep300.pth.tar"
        torch.save({"target_encoder": state, "epoch": 300}, checkpoint)
        start = time.perf_counter()
        import_checkpoint("brain-jepa", checkpoint, Path(tmp) / "bundle", atlas_cache=tmp, pinned_cache=tmp,
                          gradient=gradient_csv)
        ours = load_bundle_encoder(Path(tmp) / "bundle")
        x = torch.randn(2, 450, 160, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = theirs(x[:, None])
            got = ours.forward_features(x)
            pooled = ours.encode(x)
    print(f"brain-jepa ({args.layers} layers): tensors {len(state)}, tokens {rel(got, expected):.2e}, "
          f"mean embedding {rel(pooled, expected.mean(dim=1)):.2e} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
