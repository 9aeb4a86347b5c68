"""fmriflow.models.brainmt at toy size: token order and embeddings against the stem run frame by frame,
shapes, gradients, the attention-only variant's size, activation checkpointing, input checks."""

from __future__ import annotations

import pytest
import torch

from fmriflow.models.brainmt import CONFIGS, BrainMT, create_brainmt

pytestmark = pytest.mark.usefixtures("torch_one_thread")

IMG = (20, 24, 20)  # four stride-2 convolutions: 10x12x10, 5x6x5, 3x3x3, 2x2x2


def toy(**overrides):
    torch.manual_seed(0)
    return create_brainmt("tiny", img_size=IMG, max_frames=6, **overrides)


def test_tokens_are_temporal_first_with_both_embeddings():
    """Token 1 + n*T + t is location n of frame t's stem output, plus spatial[n] and temporal[t]."""
    model = toy()
    x = torch.randn(2, 5, *IMG)
    tokens = model.tokens(x)
    assert model.config.grid == (2, 2, 2) and tokens.shape == (2, 1 + 8 * 5, 16) == (2, model.n_tokens(5), 16)
    torch.testing.assert_close(tokens[:, 0], model.cls_token[0].expand(2, -1))
    for b in range(2):
        for t in range(5):
            frame = model.stem(x[b, t][None, None])[0].flatten(1).T  # (8 locations, dim), x-major like flatten
            for n in range(8):
                expected = frame[n] + model.spatial_embed[0, n, 0] + model.temporal_embed[0, 0, t]
                torch.testing.assert_close(tokens[b, 1 + n * 5 + t], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_shapes_and_gradients_reach_every_parameter(mixer, n_outputs):
    model = toy(mixer=mixer, n_outputs=n_outputs)
    x = torch.randn(2, 4, *IMG)
    features = model.forward_features(x)
    assert features.shape == (2, 1 + 8 * 4, 16)
    out = model.forward_head(features)
    assert out.shape == (2, n_outputs)
    torch.testing.assert_close(out, model(x))
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("temporal_embed"):  # rows of unused frames (5th, 6th) get no gradient
            assert p.grad.abs().sum() > 0, name


def test_attention_only_variant_has_the_same_size():
    with torch.device("meta"):
        hybrid, attention = BrainMT(CONFIGS["brainmt"]), BrainMT(CONFIGS["brainmt-attention"])
    assert hybrid.config.grid == (6, 7, 6) and hybrid.config.n_spatial == 252
    assert abs(attention.num_params() / hybrid.num_params() - 1) < 0.05
    assert len(hybrid.mamba_blocks) == 12 and len(hybrid.attention_blocks) == 8


def test_activation_checkpointing_changes_nothing():
    x = torch.randn(2, 3, *IMG)
    results = []
    for flag in (False, True):
        model = toy(checkpoint=flag, stem_chunk=4)  # 6 frames: the stem runs in chunks of 4 and 2
        out = model(x)
        out.sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_sequence_mixing_reaches_the_cls_token_from_every_frame():
    """Changing the last frame changes the CLS output (the backward Mamba carries it to the front)."""
    model = toy()
    x = torch.randn(1, 4, *IMG)
    bumped = x.clone()
    bumped[0, 3] += 1.0
    assert (model(x) - model(bumped)).abs().max() > 1e-6


def test_bad_inputs_are_named():
    model = toy()
    with pytest.raises(ValueError, match=r"must have shape \(batch, frames, 20, 24, 20\)"):
        model(torch.randn(1, 2, 20, 24, 21))
    with pytest.raises(ValueError, match="max_frames=6"):
        model(torch.randn(1, 7, *IMG))
    with pytest.raises(ValueError, match="'mixer' must be one of"):
        create_brainmt("tiny", mixer="rnn")
    with pytest.raises(ValueError, match="unknown BrainMTConfig field"):
        create_brainmt("tiny", width=3)
