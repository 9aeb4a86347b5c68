"""Parity of NeuroSTORM checkpoints imported by ``fmriflow import-checkpoint neurostorm`` with the authors' code.

    python benchmarks/neurostorm_parity.py AUTHORS_CHECKOUT [--mamba MAMBA_CHECKOUT] [--path DIR ...] [--small]

AUTHORS_CHECKOUT: a checkout of CUHK-AIM-Group/NeuroSTORM (kept outside this repository); their
``models/neurostorm.py`` needs ``monai`` and ``einops`` (``--path``: folders put on ``sys.path``
for them) and ``mamba_ssm``, which cannot be imported without CUDA. This script therefore writes
a stand-in ``mamba_ssm`` package into a temporary folder: its ``Mamba`` is mamba-ssm's own
``modules/mamba_simple.py``, read from MAMBA_CHECKOUT (a checkout of state-spaces/mamba, outside
this repository), whose selective scan (``ops.selective_scan_interface.selective_scan_fn``) is
fmriflow's pure-PyTorch ``fmriflow.models.ssm.selective_scan``; the fused CUDA path is absent, so
mamba-ssm's own slow path (its convolution, projections and gating) runs. Without ``--mamba`` the
stand-in's ``Mamba`` is fmriflow's block itself (then only the NeuroSTORM layers are compared).

Two checkpoints in the authors' Lightning layout (``state_dict`` with ``model.`` / ``output_head.``
prefixes and their ``hyper_parameters``), at the paper's shape (96^3 x 20 frames, width 36, stages
2-2-6-2, 4^4 windows, last stage one full window), weights from the authors' initialisation plus
seeded noise (so zero-initialised tensors differ too): a fine-tuned classifier with 4 task prompts
per block and their ``v1`` head, and an MAE pretraining checkpoint (window masking). Each is
imported through ``fmriflow.bundle.imports.import_checkpoint`` (every tensor mapped or dropped by
name) and run beside the authors' module on the same input, CPU fp32. Printed: max |fmriflow -
authors| / max |authors| of the last stage's tokens and the pooled embedding (the MAE's encoder
with masking off), the head's output, and the MAE's reconstruction and loss with the windows that
their masking hid (numpy seeded) hidden in fmriflow's twin too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCAN = '''from fmriflow.models.ssm import selective_scan


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    if return_last_state:
        raise NotImplementedError("no state is returned by the stand-in")
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def mamba_inner_fn(*args, **kwargs):
    raise RuntimeError("the fused path needs CUDA")
'''
INIT = '''from .modules.mamba_simple import Mamba


class Mamba2:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Mamba2 is not part of the stand-in")
'''


def write_stand_in(root: Path, mamba_checkout: Path | None) -> str:
    """The stand-in ``mamba_ssm`` package under ``root``; returns what its ``Mamba`` is."""
    package = root / "mamba_ssm"
    for sub in ("", "ops", "modules"):
        (package / sub).mkdir(parents=True, exist_ok=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text(INIT)
    (package / "ops" / "selective_scan_interface.py").write_text(SCAN)
    target = package / "modules" / "mamba_simple.py"
    if mamba_checkout is None:
        target.write_text("from fmriflow.models.ssm import Mamba\n")
        return "fmriflow.models.ssm.Mamba"
    shutil.copyfile(mamba_checkout / "mamba_ssm" / "modules" / "mamba_simple.py", target)
    return "mamba-ssm's mamba_simple.Mamba (slow path) on fmriflow's selective_scan"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def shape_settings(small: bool) -> dict:
    if small:
        return {"img_size": [48, 48, 48, 8], "embed_dim": 12, "depths": [2, 2, 2, 2]}
    return {"img_size": [96, 96, 96, 20], "embed_dim": 36, "depths": [2, 2, 6, 2]}


def hyper_parameters(shape: dict, mae: bool) -> dict:
    """Their argparse settings as a Lightning checkpoint stores them (main.py, scripts/configs/models)."""
    hp = {"model": "neurostorm", "patch_size": [6, 6, 6, 1], "num_heads": [3, 6, 12, 24], "window_size": [4, 4, 4, 4],
          "first_window_size": [4, 4, 4, 4], "c_multiplier": 2, "last_layer_full_MSA": True, "in_chans": 1,
          "attn_drop_rate": 0.0, "sequence_length": shape["img_size"][3], "stride_within_seq": 1,
          "stride_between_seq": 1, "with_voxel_norm": False, "dataset_name": "HCP1200", **shape}
    if mae:
        return {**hp, "pretraining": True, "use_mae": True, "spatial_mask": "window", "time_mask": "random",
                "mask_ratio": 0.5}
    return {**hp, "pretraining": False, "use_mae": False, "downstream_task_type": "classification", "num_classes": 2,
            "clf_head_version": "v1", "use_prompt_tuning": True, "prompt_len": 4}


def build_theirs(hp: dict) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    from models.heads import ClsHead
    from models.neurostorm import NeuroSTORM, NeuroSTORMMAE

    common = dict(img_size=hp["img_size"], in_chans=1, embed_dim=hp["embed_dim"], window_size=hp["window_size"],
                  first_window_size=hp["first_window_size"], patch_size=hp["patch_size"], depths=hp["depths"],
                  num_heads=hp["num_heads"], c_multiplier=2, last_layer_full_MSA=True, drop_rate=0.0,
                  drop_path_rate=0.0, attn_drop_rate=0.0)
    if hp["pretraining"]:
        return NeuroSTORMMAE(**common, mask_ratio=hp["mask_ratio"], spatial_mask="window", time_mask="random"), None
    net = NeuroSTORM(**common, prompt_len=hp["prompt_len"])
    width = hp["embed_dim"] * 2 ** (len(hp["depths"]) - 1)
    return net, ClsHead(version="v1", num_classes=2, num_tokens=width)


def perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))


def compare(hp: dict, tmp: Path, x: torch.Tensor, label: str) -> str:
    from fmriflow.bundle.imports import import_checkpoint
    from fmriflow.bundle.read import load_bundle_encoder

    torch.manual_seed(0)
    net, head = build_theirs(hp)
    perturb(net, 1)
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    if head is not None:
        perturb(head, 2)
        state.update({f"output_head.{k}": v for k, v in head.state_dict().items()})
    checkpoint = tmp / f"{label}.ckpt"
    torch.save({"epoch": 0, "state_dict": state, "hyper_parameters": hp, "optimizer_states": [], "lr_schedulers": []},
               checkpoint)
    start = time.perf_counter()
    import_checkpoint("neurostorm", checkpoint, tmp / label, atlas_cache=tmp)
    ours = load_bundle_encoder(tmp / label)
    ours_x = x[:, 0].permute(0, 4, 1, 2, 3)  # (B, 1, X, Y, Z, T) -> (B, T, X, Y, Z)
    with torch.no_grad():
        figures = []
        if head is None:
            np.random.seed(5)  # their window masking draws from numpy
            (recon, hidden), loss = net.eval()(x)
            pred = ours(ours_x, hidden)  # (B, D, H, W, T, p^3), the same windows hidden
            B, D, H, W_, T, _ = pred.shape
            voxels = pred.view(B, D, H, W_, T, 6, 6, 6).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, 6 * D, 6 * H, 6 * W_, T)
            figures += [f"reconstruction ({int(hidden.sum())} of {hidden.numel()} windows hidden) "
                        f"{rel(voxels, recon[:, 0]):.2e}",
                        f"loss {abs(float(ours.loss(ours_x, pred, hidden)) - float(loss)) / abs(float(loss)):.2e}"]
            net.mask_ratio = 0.0  # no window is masked: the encoder on the whole input
            expected = net.forward_encoder(x)[0]
        else:
            expected = net.eval()(x)
        tokens = ours.forward_features(ours_x)
        pooled = ours.encode(ours_x)
        figures += [f"tokens {rel(tokens, expected.permute(0, 2, 3, 4, 5, 1)):.2e}",
                    f"embedding {rel(pooled, expected.flatten(2).mean(-1)):.2e}"]
        if head is not None:
            figures.append(f"head {rel(ours(ours_x), head.eval()(expected)):.2e}")
    return (f"{label}: tensors {len(state)}, params {sum(p.numel() for p in ours.parameters()):,}, "
            + ", ".join(figures) + f" ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the authors' NeuroSTORM checkout (outside this repository)")
    parser.add_argument("--mamba", type=Path, help="a state-spaces/mamba checkout: its Mamba block runs their model")
    parser.add_argument("--path", type=Path, action="append", default=[], help="folders with monai / einops")
    parser.add_argument("--small", action="store_true", help="48^3 x 8 frames, width 12: a quick check")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.cuda.nvtx.range_push = torch.cuda.nvtx.range_pop = lambda *a: None  # their PatchEmbed marks NVTX ranges
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        mamba = write_stand_in(tmp / "stand_in", args.mamba)
        sys.path[:0] = [str(tmp / "stand_in"), str(args.checkout), *map(str, args.path)]
        shape = shape_settings(args.small)
        x = torch.randn(1, 1, *shape["img_size"], generator=torch.Generator().manual_seed(3))
        print(f"their Mamba: {mamba}; input {tuple(x.shape)}, CPU fp32")
        for label, mae in (("finetuned", False), ("mae", True)):
            print(compare(hyper_parameters(shape, mae), tmp, x, label), flush=True)


if __name__ == "__main__":
    main()
