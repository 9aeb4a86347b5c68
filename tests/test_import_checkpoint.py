"""Importing released checkpoints (fmriflow.bundle.imports): state dicts with the released names and
shapes (written out here from the published configs and module layouts, at toy width and at full
size) load with every tensor mapped; missing and extra tensors are errors that list them; BrainLM
v1's blocks match ``transformers``' Nystromformer layer and its time table the closed form; the
ViT-MAE wrapper matches ``transformers``' ViTMAE on the authors' image layout built here by hand;
the CLI writes a bundle whose card records the recipe and which rebuilds the same encoder.
NeuroSTORM: the Lightning state dicts of the authors' current and 2025 modules (names and shapes
written out here, checked equal to their modules' beside them) map fully at the paper's size; the
patch embedding, head, window masking and loss match the authors' formulas computed by hand."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fmriflow.errors import InputError
from test_atlas_pinned import doubles, pinned_to_doubles  # noqa: F401 - the pinned-atlas test doubles (fixtures)

# the released v1 config.json (vandijklab/BrainLM pretrained_models/2023-06-06-22_15_00-checkpoint-1400)
V1_RELEASE = {
    "architectures": ["BrainLMForPretraining"], "attention_probs_dropout_prob": 0.1, "conv_kernel_size": 65,
    "decoder_hidden_size": 256, "decoder_intermediate_size": 1024, "decoder_num_attention_heads": 4,
    "decoder_num_hidden_layers": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 256,
    "image_size": 224, "initializer_range": 0.02, "intermediate_size": 1024, "inv_coeff_init_option": False,
    "layer_norm_eps": 1e-12, "loss_fn": "mse", "mask_ratio": 0.2, "model_type": "brainlm_mae",
    "norm_pix_loss": False, "num_attention_heads": 4, "num_brain_voxels": 424, "num_channels": 3,
    "num_hidden_layers": 4, "num_landmarks": 64, "num_timepoints_per_voxel": 200, "patch_size": 16,
    "qkv_bias": True, "segment_means_seq_len": 64, "timepoint_patching_size": 20, "torch_dtype": "float32",
    "transformers_version": "4.28.0.dev0", "use_tanh_decoder": False,
}
V1_TOY = {**V1_RELEASE, "hidden_size": 16, "decoder_hidden_size": 16, "intermediate_size": 32,
          "decoder_intermediate_size": 32, "num_attention_heads": 2, "decoder_num_attention_heads": 2,
          "num_hidden_layers": 2, "decoder_num_hidden_layers": 1, "num_timepoints_per_voxel": 40}
VITMAE_TOY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
              "decoder_hidden_size": 8, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
              "decoder_intermediate_size": 16, "image_size": [432, 432], "patch_size": 16, "num_channels": 3,
              "mask_ratio": 0.75, "layer_norm_eps": 1e-12, "qkv_bias": True, "hidden_act": "gelu"}
# BrainLM's 111M and 650M shapes (ViT-B/16 at 432, ViT-H/14 at 434; decoder 512 x 8)
VITMAE_FULL = {
    "111M": {**VITMAE_TOY, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "decoder_hidden_size": 512, "decoder_num_hidden_layers": 8,
             "decoder_num_attention_heads": 16, "decoder_intermediate_size": 2048},
    "650M": {**VITMAE_TOY, "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
             "intermediate_size": 5120, "decoder_hidden_size": 512, "decoder_num_hidden_layers": 8,
             "decoder_num_attention_heads": 16, "decoder_intermediate_size": 2048, "image_size": [434, 434],
             "patch_size": 14},
}


def _nystromformer_layer(prefix: str, width: int, heads: int, inner: int, kernel: int) -> dict:
    """Names and shapes of one released Nystromformer layer (transformers 4.28)."""
    shapes = {"attention.self.query.weight": (width, width), "attention.self.query.bias": (width,),
              "attention.self.key.weight": (width, width), "attention.self.key.bias": (width,),
              "attention.self.value.weight": (width, width), "attention.self.value.bias": (width,),
              "attention.self.conv.weight": (heads, 1, kernel, 1),
              "attention.output.dense.weight": (width, width), "attention.output.dense.bias": (width,),
              "attention.output.LayerNorm.weight": (width,), "attention.output.LayerNorm.bias": (width,),
              "intermediate.dense.weight": (inner, width), "intermediate.dense.bias": (inner,),
              "output.dense.weight": (width, inner), "output.dense.bias": (width,),
              "output.LayerNorm.weight": (width,), "output.LayerNorm.bias": (width,)}
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def released_v1_shapes(c: dict) -> dict:
    """The tensors of a saved BrainLMForPretraining, as the authors' module (modeling_brainlm.py) holds them."""
    H, D, P = c["hidden_size"], c["decoder_hidden_size"], c["timepoint_patching_size"]
    shapes = {"vit.embeddings.cls_token": (1, 1, H), "vit.embeddings.signal_embedding_projection.weight": (H, P),
              "vit.embeddings.signal_embedding_projection.bias": (H,),
              "vit.embeddings.xyz_embedding_projection.weight": (H, 3),
              "vit.embeddings.xyz_embedding_projection.bias": (H,), "vit.embeddings.pos_embedding.pe": (5000, H),
              "vit.layernorm.weight": (H,), "vit.layernorm.bias": (H,), "decoder.mask_token": (1, 1, D),
              "decoder.decoder_embed.weight": (D, H), "decoder.decoder_embed.bias": (D,),
              "decoder.decoder_norm.weight": (D,), "decoder.decoder_norm.bias": (D,),
              # the ViT-MAE image head the decoder inherits and never calls (16 * 16 * 3 outputs)
              "decoder.decoder_pred.weight": (c["patch_size"] ** 2 * c["num_channels"], D),
              "decoder.decoder_pred.bias": (c["patch_size"] ** 2 * c["num_channels"],),
              "decoder.decoder_xyz_projection.weight": (H, 3), "decoder.decoder_xyz_projection.bias": (H,),
              "decoder.pos_embedding.pe": (5000, H), "decoder.decoder_pred1.weight": (D // 2, D),
              "decoder.decoder_pred1.bias": (D // 2,), "decoder.decoder_pred2.weight": (P, D // 2),
              "decoder.decoder_pred2.bias": (P,)}
    for i in range(c["num_hidden_layers"]):
        shapes.update(_nystromformer_layer(f"vit.encoder.layer.{i}", H, c["num_attention_heads"],
                                           c["intermediate_size"], c["conv_kernel_size"]))
    for i in range(c["decoder_num_hidden_layers"]):
        shapes.update(_nystromformer_layer(f"decoder.decoder_layers.{i}", D, c["decoder_num_attention_heads"],
                                           c["decoder_intermediate_size"], c["conv_kernel_size"]))
    return shapes


def released_vitmae_shapes(c: dict) -> dict:
    """The tensors of a saved ViTMAEForPreTraining as transformers 4.x names them (the release's format)."""
    H, D, C, p = c["hidden_size"], c["decoder_hidden_size"], c["num_channels"], c["patch_size"]
    n = (c["image_size"][0] // p) * (c["image_size"][1] // p)
    shapes = {"vit.embeddings.cls_token": (1, 1, H), "vit.embeddings.position_embeddings": (1, n + 1, H),
              "vit.embeddings.patch_embeddings.projection.weight": (H, C, p, p),
              "vit.embeddings.patch_embeddings.projection.bias": (H,), "vit.layernorm.weight": (H,),
              "vit.layernorm.bias": (H,), "decoder.mask_token": (1, 1, D), "decoder.decoder_pos_embed": (1, n + 1, D),
              "decoder.decoder_embed.weight": (D, H), "decoder.decoder_embed.bias": (D,),
              "decoder.decoder_norm.weight": (D,), "decoder.decoder_norm.bias": (D,),
              "decoder.decoder_pred.weight": (p * p * C, D), "decoder.decoder_pred.bias": (p * p * C,)}
    layers = [("vit.encoder.layer", c["num_hidden_layers"], H, c["intermediate_size"]),
              ("decoder.decoder_layers", c["decoder_num_hidden_layers"], D, c["decoder_intermediate_size"])]
    for prefix, count, w, inner in layers:
        for i in range(count):
            for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                         "attention.output.dense"):
                shapes[f"{prefix}.{i}.{name}.weight"], shapes[f"{prefix}.{i}.{name}.bias"] = (w, w), (w,)
            shapes[f"{prefix}.{i}.intermediate.dense.weight"], shapes[f"{prefix}.{i}.intermediate.dense.bias"] = (inner, w), (inner,)
            shapes[f"{prefix}.{i}.output.dense.weight"], shapes[f"{prefix}.{i}.output.dense.bias"] = (w, inner), (w,)
            for norm in ("layernorm_before", "layernorm_after"):
                shapes[f"{prefix}.{i}.{norm}.weight"], shapes[f"{prefix}.{i}.{norm}.bias"] = (w,), (w,)
    return shapes


def random_state(shapes: dict, seed: int = 0, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    return {name: 0.2 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _coords(n=424, seed=0):
    return np.random.default_rng(seed).uniform(-60, 60, (n, 3)).astype(np.float32)


def _import(build, release, state):
    model, keymap, recipe = build(release, _coords(), "config.json")
    mapped = keymap.apply(state, model.state_dict(), "pytorch_model.bin")
    model.load_state_dict({**model.state_dict(), **mapped})
    return model.eval(), mapped, keymap


# --------------------------------------------------------------------------- BrainLM v1


def test_v1_release_maps_every_tensor_at_toy_width_and_full_size(torch_one_thread):
    from fmriflow.bundle.imports import build_brainlm_v1

    full = released_v1_shapes(V1_RELEASE)
    assert len(full) == 124  # the authors' module at the released config holds 124 tensors (measured beside it)
    model, keymap, _ = build_brainlm_v1(V1_RELEASE, _coords(), "config.json")
    mapped = keymap.apply(random_state(full, device="meta"), model.state_dict(), "pytorch_model.bin")
    assert set(mapped) == set(model.state_dict()) - {"coords"}
    assert sum(math.prod(s) for n, s in full.items() if not n.startswith("decoder.decoder_pred.")
               and not n.endswith(".pe")) == sum(p.numel() for p in model.parameters())

    state = random_state(released_v1_shapes(V1_TOY))
    model, mapped, _ = _import(build_brainlm_v1, V1_TOY, state)
    assert len(mapped) == len(state) - 2  # all but the unused image head (weight, bias)
    assert torch.equal(model.blocks[1].attn.conv.weight, state["vit.encoder.layer.1.attention.self.conv.weight"])
    assert torch.equal(model.decoder_time, state["decoder.pos_embedding.pe"])


def test_missing_and_extra_tensors_are_listed(torch_one_thread):
    from fmriflow.bundle.imports import build_brainlm_v1

    state = random_state(released_v1_shapes(V1_TOY))
    del state["vit.encoder.layer.1.output.dense.bias"]
    state["vit.encoder.layer.9.output.dense.bias"] = torch.zeros(16)
    state["vit.embeddings.signal_embedding_projection.weight"] = torch.zeros(16, 7)
    with pytest.raises(InputError) as err:
        _import(build_brainlm_v1, V1_TOY, state)
    text = str(err.value)
    assert "pytorch_model.bin" in text
    assert "unmapped checkpoint tensors (1): vit.encoder.layer.9.output.dense.bias" in text
    assert "missing from the checkpoint (2): blocks.1.fc2.bias, signal.weight" in text
    assert "vit.embeddings.signal_embedding_projection.weight (16, 7) vs signal.weight (16, 20)" in text


def test_v1_config_settings_the_twin_does_not_reproduce_are_refused():
    from fmriflow.bundle.imports import brainlm_v1_config

    with pytest.raises(InputError, match="'num_landmarks' is 32"):
        brainlm_v1_config({**V1_RELEASE, "num_landmarks": 32}, "config.json")


def test_v1_block_matches_transformers_nystromformer_layer(torch_one_thread):
    from transformers import NystromformerConfig
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerLayer

    from fmriflow.models.brainlm_v1 import PostNormBlock

    config = NystromformerConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, conv_kernel_size=65,
                                 num_landmarks=64, segment_means_seq_len=64, layer_norm_eps=1e-12,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")
    torch.manual_seed(0)
    reference = NystromformerLayer(config).eval()
    names = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
             "attention.self.conv": "attn.conv", "attention.output.dense": "proj",
             "attention.output.LayerNorm": "norm1", "intermediate.dense": "fc1", "output.dense": "fc2",
             "output.LayerNorm": "norm2"}
    ours = PostNormBlock(16, 2, 32, 65, 1e-12, 0.0).eval()
    state = {}
    for name, tensor in reference.state_dict().items():
        module, param = name.rsplit(".", 1)
        state[f"{names[module]}.{param}"] = 0.3 * torch.randn_like(tensor)
        reference.state_dict()[name].copy_(state[f"{names[module]}.{param}"])
    ours.load_state_dict(state)
    x = torch.randn(2, 81, 16, generator=torch.Generator().manual_seed(1))  # more tokens than the kernel's half
    with torch.no_grad():
        expected = reference(x)[0]
        got = ours(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_v1_time_table_is_the_closed_form():
    from fmriflow.models.brainlm_v1 import time_table

    table = time_table(7, 6).numpy()
    p, i = np.arange(7)[:, None], np.arange(3)[None, :]
    angle = p / 10000.0 ** (2 * i / 6)
    np.testing.assert_allclose(table[:, 0::2], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(angle), atol=1e-6)


# --------------------------------------------------------------------------- BrainLM ViT-MAE


@pytest.mark.parametrize("size", sorted(VITMAE_FULL))
def test_vitmae_release_key_lists_map_fully(size):
    from fmriflow.bundle.imports import build_brainlm_vitmae

    with torch.device("meta"):
        model, keymap, _ = build_brainlm_vitmae(VITMAE_FULL[size], _coords(), "config.json")
    shapes = released_vitmae_shapes(VITMAE_FULL[size])
    mapped = keymap.apply(random_state(shapes, device="meta"), model.state_dict(), "pytorch_model.bin")
    assert len(mapped) == len(shapes) and set(mapped) == set(model.state_dict()) - {"coords", "region_order"}
    n_params = sum(math.prod(s) for n, s in shapes.items() if not n.endswith(("position_embeddings", "pos_embed")))
    assert n_params / 1e6 == pytest.approx(float(size[:-1]), rel=0.02)  # the shapes give the release's name


def test_vitmae_matches_transformers_on_the_authors_image_layout(torch_one_thread):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from fmriflow.bundle.imports import build_brainlm_vitmae

    state = random_state(released_vitmae_shapes(VITMAE_TOY), seed=4)
    model, mapped, _ = _import(build_brainlm_vitmae, VITMAE_TOY, state)
    reference = ViTMAEForPreTraining(ViTMAEConfig(**VITMAE_TOY)).eval()
    reference.load_state_dict({name.replace("mae.", "", 1): t for name, t in mapped.items()})
    x = torch.randn(1, 424, 200, generator=torch.Generator().manual_seed(1))
    order = np.argsort(_coords()[:, 1], kind="stable")
    image = np.full((1, 3, 432, 432), -1.0, dtype=np.float32)  # rows by y, 3 channels, -1 around
    image[:, :, 4:428, 116:316] = x.numpy()[:, order][:, None]
    noise = torch.rand(1, 27 * 27, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(torch.from_numpy(image), noise=noise)
        expected_latent = reference.vit(torch.from_numpy(image), noise=noise).last_hidden_state
        pred, mask, latent = model(x, noise=noise)
        cls = model.encode(x)
        reference.config.mask_ratio = 0.0
        unmasked = reference.vit(torch.from_numpy(image), noise=noise).last_hidden_state[:, 0]
    patches = expected.logits.reshape(1, 27, 27, 16, 16, 3).permute(0, 5, 1, 3, 2, 4).reshape(1, 3, 432, 432)
    recon = patches[:, :, 4:428, 116:316].mean(dim=1)[0].numpy()  # (424 rows by y, 200)
    assert np.abs(pred[0].numpy()[order] - recon).max() <= 1e-5 * np.abs(recon).max()
    assert (latent - expected_latent).abs().max() <= 1e-5 * expected_latent.abs().max()
    assert (cls - unmasked).abs().max() <= 1e-5 * unmasked.abs().max()
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert model.config.hidden == 16 == cls.shape[1]  # the width the fine-tuning code reads


def test_vitmae_bundle_rebuilds_the_same_encoder(tmp_path, atlas_dir, torch_one_thread):
    from safetensors.torch import save_file

    from fmriflow.bundle.imports import build_brainlm_vitmae, import_checkpoint
    from fmriflow.bundle.read import load_bundle_encoder

    release = tmp_path / "vitmae_111M"
    release.mkdir()
    (release / "config.json").write_text(json.dumps({**VITMAE_TOY, "architectures": ["ViTMAEForPreTraining"],
                                                     "transformers_version": "4.28.0"}))
    state = random_state(released_vitmae_shapes(VITMAE_TOY), seed=5)
    save_file(state, str(release / "model.safetensors"))
    import_checkpoint("brainlm-vitmae", release, tmp_path / "bundle", atlas_cache=tmp_path / "cache", atlas_dir=atlas_dir)
    encoder = load_bundle_encoder(tmp_path / "bundle")
    coordinates = np.loadtxt(atlas_dir / "A424_Coordinates.dat")[:, 1:]
    twin, keymap, _ = build_brainlm_vitmae(VITMAE_TOY, coordinates, "config.json")
    twin.load_state_dict({**twin.state_dict(), **keymap.apply(state, twin.state_dict(), "model.safetensors")})
    x = torch.randn(2, 424, 200, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(encoder.encode(x), twin.eval().encode(x))
    assert torch.equal(encoder.region_order, torch.from_numpy(np.argsort(coordinates[:, 1], kind="stable")))


# --------------------------------------------------------------------------- the command


def test_import_checkpoint_cli_writes_a_bundle_with_the_recipe(tmp_path, atlas_dir, torch_one_thread):
    from fmriflow.bundle import read_card
    from fmriflow.bundle.read import load_bundle_encoder
    from fmriflow.bundle.imports import build_brainlm_v1

    release = tmp_path / "release"
    release.mkdir()
    (release / "config.json").write_text(json.dumps(V1_TOY))
    state = random_state(released_v1_shapes(V1_TOY), seed=7)
    torch.save(state, release / "pytorch_model.bin")
    out = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "fmriflow.cli", "import-checkpoint", "brainlm-v1", str(release),
                           str(out), "--atlas-dir", str(atlas_dir), "--atlas-cache", str(tmp_path / "cache")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    card = read_card(out)
    coordinates = np.loadtxt(atlas_dir / "A424_Coordinates.dat")
    assert card["atlas"]["n_regions"] == 424 and card["atlas"]["regions"][0] == "Cortex_R_001"
    np.testing.assert_array_equal(np.array(card["atlas"]["coordinates"]), coordinates[:, 1:])
    assert card["input"]["window"] == 40 and card["input"]["patch_size"] == 20
    assert card["input"]["tr"]["target_tr"] == 0.735
    assert "median / IQR" in card["scaling"]["formula"] and card["scaling"]["median"] is None
    assert card["model"]["source"]["dropped"] and card["model"]["source"]["tensors"] == len(state)

    encoder = load_bundle_encoder(out)
    twin, _, _ = build_brainlm_v1(V1_TOY, coordinates[:, 1:], "config.json")
    twin.signal.weight.data.copy_(state["vit.embeddings.signal_embedding_projection.weight"])
    assert torch.equal(encoder.signal.weight, twin.signal.weight)
    assert torch.equal(encoder.coords, torch.from_numpy(coordinates[:, 1:].astype(np.float32)))
    x = torch.randn(1, 424, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert encoder.encode(x).shape == (1, 16)
    shown = subprocess.run([sys.executable, "-m", "fmriflow.cli", "model-card", str(out)], capture_output=True, text=True)
    assert shown.returncode == 0 and "vandijklab/BrainLM" in shown.stdout and "not released" in shown.stdout

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(V1_TOY))
    torch.save({k: v for k, v in state.items() if k != "vit.layernorm.bias"}, broken / "pytorch_model.bin")
    failed = subprocess.run([sys.executable, "-m", "fmriflow.cli", "import-checkpoint", "brainlm-v1", str(broken),
                             str(tmp_path / "b2"), "--atlas-dir", str(atlas_dir), "--atlas-cache", str(tmp_path / "cache")],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "norm.bias" in failed.stderr and not (tmp_path / "b2").exists()


# --------------------------------------------------------------------------- Brain-JEPA


def released_jepa_shapes(hidden=768, layers=12, patch=16, regions=450, frames=160, gradient_dims=30) -> dict:
    """The target encoder of jepa-ep300.pth.tar as the authors' DDP-wrapped VisionTransformer saves it."""
    shapes = {"module.patch_embed.proj.weight": (hidden, 1, 1, patch), "module.patch_embed.proj.bias": (hidden,),
              "module.pos_embed_proj.emb_h": (regions * frames // patch, hidden // 2),
              "module.pos_embed_proj.predictor_pos_embed_proj.weight": (hidden // 2, gradient_dims),
              "module.pos_embed_proj.predictor_pos_embed_proj.bias": (hidden // 2,),
              "module.norm.weight": (hidden,), "module.norm.bias": (hidden,)}
    for i in range(layers):
        for name, shape in (("norm1", (hidden,)), ("norm2", (hidden,)), ("attn.qkv", (3 * hidden, hidden)),
                            ("attn.proj", (hidden, hidden)), ("mlp.fc1", (4 * hidden, hidden)),
                            ("mlp.fc2", (hidden, 4 * hidden))):
            shapes[f"module.blocks.{i}.{name}.weight"] = shape
            shapes[f"module.blocks.{i}.{name}.bias"] = (shape[0],)
    return shapes


def test_brain_jepa_release_maps_every_tensor_and_is_read_from_its_shapes():
    from fmriflow.bundle.import_jepa import JEPA_KEYMAP, jepa_config
    from fmriflow.models.brain_jepa import BrainJEPA

    full = released_jepa_shapes()
    assert len(full) == 151  # vit_base: 7 + 12 blocks x 12 tensors
    state = random_state(full, device="meta")
    config = jepa_config(state, 450, "jepa-ep300.pth.tar")
    assert (config.hidden, config.n_layers, config.n_heads, config.patch_size, config.n_frames) == (768, 12, 12, 16, 160)
    with torch.device("meta"):
        model = BrainJEPA(config, np.zeros((450, 30), dtype=np.float32))
    mapped = JEPA_KEYMAP.apply(state, model.state_dict(), "jepa-ep300.pth.tar")
    assert set(mapped) == set(model.state_dict()) - {"gradient"}
    assert sum(p.numel() for p in model.parameters()) == sum(
        math.prod(s) for n, s in full.items() if not n.endswith("emb_h"))


def test_brain_jepa_time_code_is_the_closed_form():
    from fmriflow.models.brain_jepa import time_code

    code = time_code(3, 10, 8).numpy()  # 3 regions x 10 patches, 8 channels
    n = np.tile(np.arange(10), 3)[:, None]
    angle = n / 10000.0 ** (np.arange(4)[None, :] / 4)
    np.testing.assert_allclose(code, np.concatenate([np.sin(angle), np.cos(angle)], axis=1), atol=1e-6)


def test_brain_jepa_import_writes_a_bundle_with_the_recipe(tmp_path, torch_one_thread, pinned_to_doubles):
    """In-process (the pinned atlas is a test double): the card's atlas is Schaefer400N17TianS3 with the
    names of that atlas's table, Tian first then the 17-network CIFTI's, as the doubles were written."""
    from fmriflow import atlas_pinned
    from fmriflow.bundle import read_card
    from fmriflow.bundle.imports import import_checkpoint
    from fmriflow.bundle.read import load_bundle_encoder

    d = pinned_to_doubles
    shapes = released_jepa_shapes(hidden=32, layers=1, regions=450, frames=32, gradient_dims=4)
    state = random_state(shapes, seed=2)
    torch.save({"target_encoder": state, "encoder": state, "predictor": {}, "epoch": 300}, tmp_path / "jepa.pth.tar")
    gradient = np.random.default_rng(0).normal(size=(450, 4))
    np.savetxt(tmp_path / "gradient_mapping_450.csv", gradient, delimiter=",")
    out = tmp_path / "bundle"
    import_checkpoint("brain-jepa", tmp_path / "jepa.pth.tar", out, atlas_cache=tmp_path / "atlases" / "A424",
                      pinned_cache=tmp_path / "atlases", atlas_dir=d["dir"])
    card = read_card(out)
    assert card["input"]["window"] == 32 and card["input"]["tr"]["target_tr"] == pytest.approx(2.205)
    assert card["model"]["source"]["not_imported"]["predictor"].startswith("the JEPA predictor")
    assert card["atlas"]["name"] == "Schaefer400N17TianS3" and card["atlas"]["n_regions"] == 450
    assert card["atlas"]["regions"] == d["tian_names"] + d["ctx17_names"]
    pinned = atlas_pinned.PINNED_ATLASES["Schaefer400N17TianS3"].files.values()
    assert {f.name for f in pinned} <= {p.name for p in (tmp_path / "atlases").iterdir()}  # the pinned cache given
    encoder = load_bundle_encoder(out)
    np.testing.assert_allclose(encoder.gradient.numpy(), gradient, rtol=1e-6)
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, state["module.blocks.0.attn.qkv.weight"])

    # the positions by hand: time code, then the gradient projection scaled to [-1, 1] over all tokens
    w, b = state["module.pos_embed_proj.predictor_pos_embed_proj.weight"], state["module.pos_embed_proj.predictor_pos_embed_proj.bias"]
    space = np.repeat(gradient @ w.numpy().T + b.numpy(), 2, axis=0)
    space = (space - space.min()) / (space.max() - space.min()) * 2 - 1
    np.testing.assert_allclose(encoder.positions().detach().numpy()[:, 16:], space, atol=1e-5)

    short = tmp_path / "short"
    short.mkdir()
    np.savetxt(short / "gradient_mapping_450.csv", gradient[:60], delimiter=",")
    with pytest.raises(InputError, match="60 regions; Brain-JEPA's atlas Schaefer400N17TianS3 has 450"):
        import_checkpoint("brain-jepa", tmp_path / "jepa.pth.tar", tmp_path / "b1", atlas_cache=tmp_path / "a",
                          pinned_cache=tmp_path / "atlases", atlas_dir=d["dir"],
                          gradient=short / "gradient_mapping_450.csv")

    missing = tmp_path / "alone"
    missing.mkdir()
    (missing / "jepa.pth.tar").write_bytes((tmp_path / "jepa.pth.tar").read_bytes())
    failed = subprocess.run([sys.executable, "-m", "fmriflow.cli", "import-checkpoint", "brain-jepa",
                             str(missing / "jepa.pth.tar"), str(tmp_path / "b2")], capture_output=True, text=True)
    assert failed.returncode == 1 and "gradient_mapping_450.csv" in failed.stderr and "--gradient" in failed.stderr


def test_brain_jepa_import_uses_the_pinned_cache_it_is_given(tmp_path, torch_one_thread, pinned_to_doubles):
    """`fmriflow import-checkpoint brain-jepa` (in-process: the pins are the doubles') with --atlas-cache and
    --pinned-cache in unrelated folders: the atlas's files (and the derived image) land in --pinned-cache,
    nothing beside --atlas-cache; the library refuses a brain-jepa import with no pinned cache, naming it."""
    from fmriflow import atlas_pinned
    from fmriflow.atlas_schaefer17 import DERIVED_IMAGE
    from fmriflow.bundle import read_card
    from fmriflow.bundle.imports import import_checkpoint
    from fmriflow.cli import main
    from fmriflow.errors import SettingError

    d = pinned_to_doubles
    state = random_state(released_jepa_shapes(hidden=32, layers=1, regions=450, frames=32, gradient_dims=4), seed=3)
    torch.save({"target_encoder": state, "epoch": 300}, tmp_path / "jepa.pth.tar")
    np.savetxt(tmp_path / "gradient_mapping_450.csv", np.ones((450, 4)), delimiter=",")
    a424_cache, pinned_cache = tmp_path / "one" / "A424", tmp_path / "two" / "store"
    assert main(["import-checkpoint", "brain-jepa", str(tmp_path / "jepa.pth.tar"), str(tmp_path / "bundle"),
                 "--atlas-dir", str(d["dir"]), "--atlas-cache", str(a424_cache),
                 "--pinned-cache", str(pinned_cache)]) == 0
    spec = atlas_pinned.PINNED_ATLASES["Schaefer400N17TianS3"]
    assert sorted(p.name for p in pinned_cache.iterdir()) == sorted([*(f.name for f in spec.files.values()),
                                                                     DERIVED_IMAGE])
    for f in spec.files.values():
        assert (pinned_cache / f.name).read_bytes() == (d["dir"] / f.name).read_bytes()
    assert not (tmp_path / "one").exists()  # nothing guessed from the A424 cache's parent
    card = read_card(tmp_path / "bundle")
    derived = hashlib.sha256((pinned_cache / DERIVED_IMAGE).read_bytes()).hexdigest()
    assert card["atlas"]["derived_image_sha256"] == derived
    with pytest.raises(SettingError, match="'pinned_cache'.*atlas.pinned_cache_dir.*None was provided"):
        import_checkpoint("brain-jepa", tmp_path / "jepa.pth.tar", tmp_path / "b3", atlas_cache=a424_cache)


def test_cli_cache_defaults_are_the_schema_defaults():
    """The CLI's --atlas-cache and --pinned-cache defaults are the config schema's atlas.cache_dir and
    atlas.pinned_cache_dir, so the CLI and the workflow share the caches by default."""
    import yaml

    from conftest import REPO
    from fmriflow import cli

    atlas = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]["atlas"]
    assert cli.DEFAULT_CACHE == atlas["properties"]["cache_dir"]["default"]
    assert cli.DEFAULT_PINNED_CACHE == atlas["properties"]["pinned_cache_dir"]["default"]
    args = cli.build_parser().parse_args(["import-checkpoint", "brain-jepa", "x.pth.tar", "out"])
    assert (args.atlas_cache, args.pinned_cache) == ("resources/atlases/A424", "resources/atlases")


# --------------------------------------------------------------------------- NeuroSTORM

# the authors' published settings (scripts/configs/models/neurostorm.yaml, main.py defaults) as a
# Lightning checkpoint's hyper_parameters hold them: a fine-tuned classifier with task prompts
STORM_HP = {"model": "neurostorm", "img_size": [96, 96, 96, 20], "patch_size": [6, 6, 6, 1], "embed_dim": 36,
            "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": [4, 4, 4, 4],
            "first_window_size": [4, 4, 4, 4], "c_multiplier": 2, "last_layer_full_MSA": True, "in_chans": 1,
            "sequence_length": 20, "stride_within_seq": 1, "stride_between_seq": 1, "with_voxel_norm": False,
            "pretraining": False, "use_mae": False, "downstream_task_type": "classification", "num_classes": 2,
            "clf_head_version": "v1", "use_prompt_tuning": True, "prompt_len": 50, "attn_drop_rate": 0.0}
STORM_MAE_HP = {**STORM_HP, "pretraining": True, "use_mae": True, "spatial_mask": "window", "time_mask": "random",
                "mask_ratio": 0.5, "use_prompt_tuning": False}
# toy size: 24^3 x 4 frames (a 4^3 grid of 6^3 patches), width 8, three stages
STORM_TOY = {**STORM_HP, "img_size": [24, 24, 24, 4], "sequence_length": 4, "embed_dim": 8, "depths": [2, 1, 2],
             "window_size": [2, 2, 2, 2], "first_window_size": [4, 4, 4, 2], "prompt_len": 3}
# the authors' MAE decoder runs with 4 stages only: 48^3 x 4 frames (an 8^3 grid), width 8
STORM_MAE_TOY = {**STORM_MAE_HP, "img_size": [48, 48, 48, 4], "sequence_length": 4, "embed_dim": 8,
                 "depths": [1, 1, 1, 1], "window_size": [2, 2, 2, 2], "first_window_size": [2, 2, 2, 2]}


def _storm_block(prefix: str, c: int, prompt: int) -> dict:
    """One SwinTransformerBlock4D: LayerNorms, mamba-ssm's Mamba (d_state 16, d_conv 4, expand 2), monai's MLP."""
    rank = math.ceil(c / 16)
    shapes = {"norm1.weight": (c,), "norm1.bias": (c,), "mamba.in_proj.weight": (4 * c, c),
              "mamba.conv1d.weight": (2 * c, 1, 4), "mamba.conv1d.bias": (2 * c,),
              "mamba.x_proj.weight": (rank + 32, 2 * c), "mamba.dt_proj.weight": (2 * c, rank),
              "mamba.dt_proj.bias": (2 * c,), "mamba.A_log": (2 * c, 16), "mamba.D": (2 * c,),
              "mamba.out_proj.weight": (c, 2 * c), "norm2.weight": (c,), "norm2.bias": (c,),
              "mlp.linear1.weight": (4 * c, c), "mlp.linear1.bias": (4 * c,), "mlp.linear2.weight": (c, 4 * c),
              "mlp.linear2.bias": (c,), **({"prompt": (1, prompt, c)} if prompt else {})}
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def released_neurostorm_shapes(hp: dict, legacy: bool = False) -> dict:
    """The ``state_dict`` of the authors' LightningModel (models/neurostorm.py, models/heads) at ``hp``.

    ``legacy``: the 2025 code (one (window volume, C) mask token; a LayerNorm in the v1 head).
    """
    p, C, depths, T = hp["patch_size"][0], hp["embed_dim"], hp["depths"], hp["img_size"][3]
    grid = [n // p for n in hp["img_size"][:3]]
    mae = hp["pretraining"]
    prompt = hp["prompt_len"] if hp.get("use_prompt_tuning") and not mae else 0
    shapes = {"model.patch_embed.fc.weight": (C, p ** 3), "model.patch_embed.fc.bias": (C,)}
    for i, depth in enumerate(depths):
        c = C * 2 ** i
        shapes[f"model.pos_embeds.{i}.pos_embed"] = (1, c, *[g // 2 ** i for g in grid], 1)
        shapes[f"model.pos_embeds.{i}.time_embed"] = (1, c, 1, 1, 1, T)
        for j in range(depth):
            shapes.update(_storm_block(f"model.layers.{i}.blocks.{j}", c, prompt))
        if i < len(depths) - 1:
            shapes[f"model.layers.{i}.downsample.norm.weight"] = shapes[f"model.layers.{i}.downsample.norm.bias"] = (8 * c,)
            shapes[f"model.layers.{i}.downsample.reduction.weight"] = (2 * c, 8 * c)
    last = C * 2 ** (len(depths) - 1)
    if not mae:
        shapes.update({"output_head.head.head.weight": (1, last), "output_head.head.head.bias": (1,)})
        if legacy:
            shapes.update({"output_head.head.norm.weight": (last,), "output_head.head.norm.bias": (last,)})
        return shapes
    volume = math.prod(hp["window_size"])
    shapes.update({"model.mask_token": (volume, C)} if legacy else
                  {"model.mask_token": (C,), "model.window_mask_token": (volume, C), "model.atlas_mask_token": (C,)})
    shapes["model.first_patch_expanding.expand.weight"] = (4 * last, last)
    shapes["model.first_patch_expanding.norm.weight"] = shapes["model.first_patch_expanding.norm.bias"] = (last // 2,)
    for k in range(len(depths) - 1):
        i = len(depths) - 2 - k
        c = C * 2 ** i
        for j in range(depths[i]):
            shapes.update(_storm_block(f"model.layers_up.{k}.blocks.{j}", c, 0))
        if i > 0:
            shapes[f"model.layers_up.{k}.upsample.expand.weight"] = (4 * c, c)
            shapes[f"model.layers_up.{k}.upsample.norm.weight"] = shapes[f"model.layers_up.{k}.upsample.norm.bias"] = (c // 2,)
    shapes.update({"model.norm_up.weight": (C,), "model.norm_up.bias": (C,),
                   "model.decoder_pred.weight": (p ** 3, last // 8), "model.decoder_pred.bias": (p ** 3,)})
    return shapes


def _storm_model(hp: dict, state: dict, source: str = "release.ckpt"):
    """The fmriflow module a checkpoint imports into (fine-tuned: NeuroSTORM; MAE: the authors' MAE twin)."""
    from fmriflow.bundle.import_neurostorm import neurostorm_keymap, neurostorm_settings
    from fmriflow.models.neurostorm import NeuroSTORM
    from fmriflow.models.neurostorm_release import NeuroSTORMReleasedMAE

    config, role = neurostorm_settings(hp, source)
    model = NeuroSTORMReleasedMAE(config) if role == "mae" else NeuroSTORM(config)
    return model, neurostorm_keymap(config.patch_size, role, legacy_mask="model.window_mask_token" not in state)


def _storm_import(hp: dict, state: dict, source: str = "release.ckpt"):
    model, keymap = _storm_model(hp, state, source)
    mapped = keymap.apply(state, model.state_dict(), source)
    model.load_state_dict({**model.state_dict(), **mapped})
    return model.eval(), mapped, keymap


# tensor counts measured beside the authors' modules: their current code (a8dc38f) and the 2025 code
# of their first released checkpoints (8419eb0: no prompts, one mask token, a LayerNorm in the head)
@pytest.mark.parametrize("hp, legacy, n_tensors", [(STORM_HP, False, 237), ({**STORM_HP, "use_prompt_tuning": False}, True, 227),
                                                   (STORM_MAE_HP, False, 409), (STORM_MAE_HP, True, 407)])
def test_neurostorm_release_maps_every_tensor_at_paper_size(hp, legacy, n_tensors):
    shapes = released_neurostorm_shapes(hp, legacy)
    assert len(shapes) == n_tensors
    with torch.device("meta"):
        model, keymap = _storm_model(hp, shapes)
    mapped = keymap.apply(random_state(shapes, device="meta"), model.state_dict(), "release.ckpt")
    assert set(mapped) == set(model.state_dict())  # every module tensor comes from the checkpoint
    assert sum(math.prod(s) for n, s in shapes.items() if not keymap.is_dropped(n)) == \
        sum(p.numel() for p in model.parameters())
    # dropped: the 2025 head's unused LayerNorm; the tokens of their random / tube / atlas masking
    assert n_tensors - len(mapped) == {(False, False): 0, (False, True): 2, (True, False): 2, (True, True): 0}[
        (hp["pretraining"], legacy)]


def test_neurostorm_import_reproduces_the_authors_patch_embedding_and_head(torch_one_thread):
    state = random_state(released_neurostorm_shapes(STORM_TOY, legacy=True), seed=3)
    model, mapped, _ = _storm_import(STORM_TOY, state)
    assert len(mapped) == len(state) - 2  # all but the 2025 head's unused LayerNorm
    x = torch.randn(2, 4, 24, 24, 24, generator=torch.Generator().manual_seed(4))  # (B, T, X, Y, Z)
    # their PatchEmbed: each frame's 6^3 patch flattened in (x, y, z) order, then their Linear
    patches = x.reshape(2, 4, 4, 6, 4, 6, 4, 6).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(2, 4, 4, 4, 4, 216)
    fc_w, fc_b = state["model.patch_embed.fc.weight"], state["model.patch_embed.fc.bias"]
    with torch.no_grad():
        tokens = model.backbone.embed(x)  # (B, D, H, W, T, C)
        features = model.forward_features(x)
        out = model(x)
    np.testing.assert_allclose(tokens.numpy(), (patches @ fc_w.T + fc_b).numpy(), atol=1e-5)
    # their embeddings are channels first: (1, C, d, h, w, 1) and (1, C, 1, 1, 1, T)
    assert torch.equal(model.backbone.stage_spatial_embeds["2"][0, ..., 0, :],
                       state["model.pos_embeds.2.pos_embed"][0, ..., 0].permute(1, 2, 3, 0))
    assert torch.equal(model.backbone.temporal_embed[0, 0, 0, 0], state["model.pos_embeds.0.time_embed"][0, :, 0, 0, 0].T)
    # their v1 head: the mean over every token of the last stage, then a Linear (no norm)
    pooled = features.flatten(1, 4).mean(dim=1)
    expected = pooled @ state["output_head.head.head.weight"].T + state["output_head.head.head.bias"]
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    assert model.config.stage_window(2) == ((1, 1, 1, 2), False) and model.config.stage_window(0) == ((4, 4, 4, 2), True)


def test_neurostorm_missing_and_extra_tensors_are_listed():
    state = random_state(released_neurostorm_shapes(STORM_TOY), seed=5)
    del state["model.layers.1.blocks.0.mamba.A_log"]
    state["model.decoder_pred.weight"] = torch.zeros(216, 4)  # an MAE tensor in a fine-tuned checkpoint
    state["model.patch_embed.fc.weight"] = torch.zeros(8, 215)
    with pytest.raises(InputError) as err:
        _storm_import(STORM_TOY, state)
    text = str(err.value)
    assert "release.ckpt" in text and "unmapped checkpoint tensors (1): model.decoder_pred.weight" in text
    assert ("missing from the checkpoint (2): backbone.patch_embed.proj.weight, "
            "backbone.stages.1.blocks.0.mamba.A_log") in text
    assert "model.patch_embed.fc.weight (8, 215) vs backbone.patch_embed.proj.weight (8, 1, 6, 6, 6)" in text


def test_neurostorm_settings_the_twin_does_not_reproduce_are_refused():
    from fmriflow.bundle.import_neurostorm import neurostorm_settings

    for key, value in (("in_chans", 2), ("c_multiplier", 3), ("clf_head_version", "v2"), ("model", "swift")):
        with pytest.raises(InputError, match=f"'{key}' is {value!r}"):
            neurostorm_settings({**STORM_HP, key: value}, "release.ckpt")
    with pytest.raises(InputError, match="lack depths"):
        neurostorm_settings({k: v for k, v in STORM_HP.items() if k != "depths"}, "release.ckpt")


def _fake_lightning(monkeypatch):
    """Lightning's hyper-parameter dict class, registered where pickle looks for it (lightning is not installed)."""
    import types

    cls = type("AttributeDict", (dict,), {"__module__": "pytorch_lightning.utilities.parsing",
                                          "__qualname__": "AttributeDict"})
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["pytorch_lightning.utilities.parsing"].AttributeDict = cls
    return cls


def test_neurostorm_cli_writes_a_bundle_with_the_recipe(tmp_path, monkeypatch, torch_one_thread):
    from fmriflow.bundle import read_card
    from fmriflow.bundle.read import load_bundle_encoder

    hp = STORM_MAE_TOY
    state = random_state(released_neurostorm_shapes(hp), seed=6)
    attribute_dict = _fake_lightning(monkeypatch)
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": attribute_dict(hp), "optimizer_states": []},
               tmp_path / "mae.ckpt")
    out = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "fmriflow.cli", "import-checkpoint", "neurostorm",
                           str(tmp_path / "mae.ckpt"), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    card = read_card(out)
    assert card["input"]["tr"]["target_tr"] == 0.8 and card["input"]["window"] == 4 and card["input"]["stride"] == 4
    assert card["atlas"]["grid"]["shape"] == [48, 48, 48] and card["scaling"]["method"].startswith("neurostorm 'z-norm'")
    assert card["model"]["source"]["role"] == "mae" and card["model"]["source"]["tensors"] == len(state)
    assert any("window masking" in why for why in card["model"]["source"]["dropped"].values())
    assert card["model"]["source"]["masking"] == {"spatial_mask": "window", "time_mask": "random", "mask_ratio": 0.5}
    mae = load_bundle_encoder(out)
    assert type(mae).__name__ == "NeuroSTORMReleasedMAE" and mae.config.last_stage_full and mae.config.stage_embeddings
    assert torch.equal(mae.encoder.stages[2].blocks[0].mamba.A_log, state["model.layers.2.blocks.0.mamba.A_log"])
    assert torch.equal(mae.up_stages[0].blocks[0].mlp.fc2.weight, state["model.layers_up.0.blocks.0.mlp.linear2.weight"])
    x = torch.randn(1, 4, 48, 48, 48, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert mae.encode(x).shape == (1, 64)
    shown = subprocess.run([sys.executable, "-m", "fmriflow.cli", "model-card", str(out)], capture_output=True, text=True)
    assert shown.returncode == 0 and "voxel grid" in shown.stdout and "CUHK-AIM-Group/NeuroSTORM" in shown.stdout

    # argparse's Namespace as the container; a class outside the allowed ones is refused by name
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(**hp)}, tmp_path / "ns.ckpt")
    from fmriflow.bundle.import_neurostorm import read_lightning_checkpoint

    assert read_lightning_checkpoint(tmp_path / "ns.ckpt")["hyper_parameters"]["depths"] == [1, 1, 1, 1]
    torch.save({"state_dict": state, "hyper_parameters": hp, "trainer": InputError}, tmp_path / "bad.ckpt")
    with pytest.raises(InputError, match="without executing code: it refers to fmriflow.errors.InputError"):
        read_lightning_checkpoint(tmp_path / "bad.ckpt")


def test_neurostorm_mae_twin_masks_whole_windows_and_averages_its_loss_per_window(torch_one_thread):
    state = random_state(released_neurostorm_shapes(STORM_MAE_TOY, legacy=True), seed=8)
    mae, mapped, _ = _storm_import(STORM_MAE_TOY, state)
    token = state["model.mask_token"].view(2, 2, 2, 2, 8)  # the 2025 layout's one (window volume, C) mask token
    assert torch.equal(mae.window_mask_token, state["model.mask_token"])
    x = torch.randn(2, 4, 48, 48, 48, generator=torch.Generator().manual_seed(9))
    hidden = torch.zeros(2, mae.n_windows(4), dtype=torch.bool)  # 4 x 4 x 4 x 2 windows of 2^4 tokens
    hidden[0, [0, 5]] = hidden[1, 127] = True  # window 5 = (0, 0, 2, 1), window 127 = (3, 3, 3, 1)
    with torch.no_grad():
        pred = mae(x, hidden)
        tokens = mae.encoder.embed(x)  # by hand: each hidden window's tokens, in (d, h, w, t) order
        tokens[0, :2, :2, :2, :2] = token
        tokens[0, :2, :2, 4:6, 2:4] = token
        tokens[1, 6:, 6:, 6:, 2:] = token
        expected = mae.decode(mae.encoder.forward_tokens(tokens)[-1])
        loss = mae.loss(x, pred, hidden)
    np.testing.assert_allclose(pred.numpy(), expected.numpy(), atol=1e-6)
    voxels = pred.numpy().reshape(2, 8, 8, 8, 4, 6, 6, 6).transpose(0, 4, 1, 5, 2, 6, 3, 7).reshape(2, 4, 48, 48, 48)
    error = (voxels - x.numpy()) ** 2  # (B, T, X, Y, Z)
    windows = [error[0, :2, :12, :12, :12], error[0, 2:, :12, :12, 24:36], error[1, 2:, 36:, 36:, 36:]]
    assert float(loss) == pytest.approx(np.mean([w.mean() for w in windows]), rel=1e-5)
