"""Parity of fmriflow's imported BrainLM models with the authors' own code, same random weights and inputs.

    python benchmarks/brainlm_parity.py AUTHORS_CHECKOUT SITE [--models v1,vitmae-111m,vitmae-650m]

AUTHORS_CHECKOUT: a checkout of vandijklab/BrainLM (kept outside this repository); SITE: a folder
holding the transformers version their code pins (4.28). The authors' side runs in a child
process with SITE and the checkout first on its path: it builds their module with seeded random
weights, runs it on a seeded CPU fp32 input and mask noise and saves weights, inputs and outputs.
This process (with the installed transformers, for the ViT-MAE models) maps the weights through
``fmriflow.bundle.imports`` (every tensor) and prints, per output, the largest absolute difference
over the largest absolute reference value. The ViT-MAE shapes are BrainLM's 111M and 650M
(ViT-B/16 at 432 and ViT-H/14 at 434, decoder 512 x 8), as the release's names and the authors'
padding code imply.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

V1_CONFIG = "pretrained_models/2023-06-06-22_15_00-checkpoint-1400/config.json"
VITMAE = {
    "vitmae-111m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=[432, 432], patch_size=16),
    "vitmae-650m": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                        image_size=[434, 434], patch_size=14),
}
VITMAE_COMMON = dict(num_channels=3, decoder_hidden_size=512, decoder_num_hidden_layers=8,
                     decoder_num_attention_heads=16, decoder_intermediate_size=2048, mask_ratio=0.75,
                     layer_norm_eps=1e-12, qkv_bias=True, hidden_act="gelu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, norm_pix_loss=False)
REGIONS, WINDOW = 424, 200


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def config_of(checkout: str, name: str) -> dict:
    if name == "v1":
        config = json.load(open(os.path.join(checkout, V1_CONFIG)))
        config.pop("architectures")
        return config
    return {**VITMAE_COMMON, **VITMAE[name]}


def coords_of(checkout: str) -> np.ndarray:
    return np.loadtxt(os.path.join(checkout, "toolkit/atlases/A424_Coordinates.dat"))[:, 1:].astype(np.float32)


# --------------------------------------------------------------------------- the authors' side (child)


def theirs_v1(checkout: str, config: dict) -> dict:
    from brainlm_mae.configuration_brainlm import BrainLMConfig
    from brainlm_mae.modeling_brainlm import BrainLMForPretraining

    torch.manual_seed(0)
    model = BrainLMForPretraining(BrainLMConfig(**config)).eval()
    x = torch.randn(2, REGIONS, WINDOW, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, REGIONS * WINDOW // config["timepoint_patching_size"], generator=torch.Generator().manual_seed(2))
    xyz = torch.from_numpy(coords_of(checkout))[None].expand(2, -1, -1)
    with torch.no_grad():
        out = model(signal_vectors=x, xyz_vectors=xyz, noise=noise)
        model.config.mask_ratio = 0.0  # their masking reads the config; noise in order keeps every token in place
        full = model.vit(signal_vectors=x, xyz_vectors=xyz, noise=torch.arange(float(noise.shape[1])).expand(2, -1))
    return {"state": model.state_dict(), "x": x, "noise": noise, "pred": out.logits[0], "latent": out.logits[1],
            "full": full.last_hidden_state}


def theirs_vitmae(checkout: str, config: dict) -> dict:
    import transformers
    from brainlm_mae.modeling_vit_mae_with_padding import ViTMAEForPreTraining

    torch.manual_seed(0)
    model = ViTMAEForPreTraining(transformers.ViTMAEConfig(**config, train_mode="auto_encode")).eval()
    x = torch.randn(1, REGIONS, WINDOW, generator=torch.Generator().manual_seed(1))
    order = np.argsort(coords_of(checkout)[:, 1], kind="stable")  # the tutorial's row order (by y)
    image = x[:, order][:, None].expand(-1, 3, -1, -1).contiguous()
    height, width = config["image_size"]
    padded = torch.nn.functional.pad(image, ((width - WINDOW) // 2,) * 2 + ((height - REGIONS) // 2,) * 2, value=-1.0)
    n_patches = (height // config["patch_size"]) * (width // config["patch_size"])
    with torch.no_grad():
        torch.manual_seed(5)  # auto_encode masking draws its own noise: the child and the parent draw the same
        noise = torch.rand(1, n_patches)
        torch.manual_seed(5)
        out = model(pixel_values=image)
        torch.manual_seed(5)
        latent = model.vit(padded).last_hidden_state
        model.config.mask_ratio = 0.0
        cls = model.vit(padded).last_hidden_state[:, 0]
    return {"state": model.state_dict(), "x": x, "noise": noise, "pred": out.logits, "latent": latent, "cls": cls,
            "order": torch.from_numpy(order)}


# --------------------------------------------------------------------------- fmriflow's side


def ours(name: str, config: dict, coords: np.ndarray, saved: dict) -> dict:
    from fmriflow.bundle.imports import build_brainlm_v1, build_brainlm_vitmae

    build = build_brainlm_v1 if name == "v1" else build_brainlm_vitmae
    model, keymap, _ = build(config, coords, "config.json")
    state = model.state_dict()
    state.update(keymap.apply(saved["state"], state, "pytorch_model.bin"))
    model.load_state_dict(state)
    model.eval()
    figures = {"tensors": len(saved["state"]), "params": sum(p.numel() for p in model.parameters())}
    x = saved["x"]
    with torch.no_grad():
        if name == "v1":
            _, pred, _, latent = model(x, noise=saved["noise"])
            figures["embedding (mask 0.2)"] = rel(latent, saved["latent"])
            figures["reconstruction"] = rel(pred, saved["pred"])
            figures["embedding (no mask)"] = rel(model.forward_features(x)[0], saved["full"])
        else:
            pred, _, latent = model(x, noise=saved["noise"])
            figures["embedding (mask 0.75)"] = rel(latent, saved["latent"])
            figures["reconstruction"] = rel(pred[:, saved["order"]], saved["pred"])
            figures["CLS (no mask)"] = rel(model.encode(x), saved["cls"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", help="the authors' BrainLM checkout (outside this repository)")
    parser.add_argument("site", help="folder holding transformers 4.28, for the authors' side")
    parser.add_argument("--models", default="v1,vitmae-111m,vitmae-650m")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # NAME:OUT, the authors' side
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.child:
        name, out = args.child.split(":", 1)
        sys.path[:0] = [args.site, args.checkout]
        config = config_of(args.checkout, name)
        torch.save((theirs_v1 if name == "v1" else theirs_vitmae)(args.checkout, config), out)
        return
    for name in args.models.split(","):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "theirs.pt")
            subprocess.run([sys.executable, __file__, args.checkout, args.site, "--child", f"{name}:{out}"], check=True)
            saved = torch.load(out, weights_only=True)
        figures = ours(name, config_of(args.checkout, name), coords_of(args.checkout), saved)
        shown = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v:,}" for k, v in figures.items())
        print(f"{name}: {shown} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
