"""FMMTC building blocks: ResNet-18 against the paper's published shape, the fusion variants,
per-window FC against numpy, and the frozen-encoder contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmriflow.finetune.features import window_fc
from fmriflow.finetune.settings import TrainSettings
from fmriflow.finetune.trainer import VARIANTS, build
from fmriflow.models.brainlm import create_model
from fmriflow.models.fmmtc import FMMTC, FMMTCConfig, FMMTCWithEncoder
from fmriflow.models.resnet import ResNet18


def test_resnet18_matches_the_published_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters with 3 input channels and a 1000-way fc;
    # without the fc (512*1000 + 1000) and with one input channel (64*2*7*7 fewer stem weights):
    expected = 11_689_512 - (512 * 1000 + 1000) - 64 * 2 * 7 * 7
    assert sum(p.numel() for p in ResNet18(in_channels=1, width=64).parameters()) == expected


def test_resnet18_layout_and_downsampling():
    net = ResNet18(width=4).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 17  # 18 weighted layers of the paper = 17 convolutions + the fc the caller adds
    shapes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for stage in net.stages]
    with torch.no_grad():
        out = net(torch.randn(2, 1, 424, 424))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 32)
    assert shapes == [(2, 4, 106, 106), (2, 8, 53, 53), (2, 16, 27, 27), (2, 32, 14, 14)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_end_to_end(variant):
    torch.manual_seed(0)
    model = build(variant, ts_dim=12, settings=TrainSettings(embed_dim=16, resnet_width=2))
    ts, fc = torch.randn(3, 12), torch.randn(3, 20, 20)
    out = model(ts, fc)
    assert out.shape == (3, 1)
    out.sum().backward()
    grads = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if model.use_ts:
        assert "ts_proj" in grads
    if model.use_fc:
        assert "fc_encoder" in grads


def test_concat_head_sees_both_256d_embeddings():
    model = FMMTC(ts_dim=32, config=FMMTCConfig(resnet_width=2))
    assert model.head.in_features == 512
    assert model.ts_proj.out_features == 256 and model.fc_proj.out_features == 256


def test_single_modality_ignores_the_other_input():
    torch.manual_seed(0)
    ts_only = FMMTC(8, FMMTCConfig(modalities="ts", embed_dim=4, resnet_width=2)).eval()
    fc_only = FMMTC(8, FMMTCConfig(modalities="fc", embed_dim=4, resnet_width=2)).eval()
    ts, fc = torch.randn(2, 8), torch.randn(2, 16, 16)
    assert torch.equal(ts_only(ts, fc), ts_only(ts, torch.randn(2, 16, 16)))
    assert torch.equal(fc_only(ts, fc), fc_only(torch.randn(2, 8), fc))


def test_window_fc_is_fisher_z_of_numpy_corrcoef():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40)) * rng.uniform(0.5, 3, (6, 1)) + 5
    x[1] = 0.9 * x[0] + 0.1 * x[1]
    valid = np.array([True, True, True, False, True, True])
    z = window_fc(x, valid)
    expected = np.arctanh(np.clip(np.corrcoef(x), -0.999, 0.999))
    np.fill_diagonal(expected, 0)
    expected[3, :] = expected[:, 3] = 0
    np.testing.assert_allclose(z, expected, atol=1e-6)
    assert z.dtype == np.float32


def test_encoder_is_frozen_inside_the_composed_model():
    coords = torch.randn(10, 3)
    encoder = create_model("tiny", coords, max_timepoints=40)
    for p in encoder.parameters():
        p.requires_grad_(False)
    head = FMMTC(encoder.config.hidden, FMMTCConfig(embed_dim=8, resnet_width=2))
    model = FMMTCWithEncoder(encoder.eval(), head)
    x = torch.randn(2, 10, 40, requires_grad=True)
    model(x, torch.randn(2, 10, 10)).sum().backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the raw window (for IG)


def test_early_stopping_waits_for_min_epochs():
    """Validation labels opposite to the training labels: the validation loss is lowest
    before training, so plain early stopping keeps epoch 0; ``min_epochs`` moves both the
    stopping and the checkpoint choice past it."""
    from fmriflow.finetune.trainer import fit

    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 10)
    ts = (rng.standard_normal((20, 6)) + 2.0 * (y[:, None] - 0.5)).astype(np.float32)
    fc = np.zeros((20, 4, 4), np.float32)
    y_flipped = y.copy()
    val = np.array([0, 1, 10, 11])
    y_flipped[val] = 1 - y[val]
    fit_rows = np.setdiff1d(np.arange(20), val)
    plain = TrainSettings(embed_dim=8, batch_size=4, max_epochs=12, patience=2, lr=1e-2)
    _, _, early = fit("ts_only", "classification", ts, fc, y_flipped, fit_rows, val, plain, seed=0)
    assert early["best_epoch"] == 0 and early["epochs"] == 3
    floored = TrainSettings(embed_dim=8, batch_size=4, max_epochs=12, min_epochs=6, patience=2, lr=1e-2)
    _, _, late = fit("ts_only", "classification", ts, fc, y_flipped, fit_rows, val, floored, seed=0)
    assert late["best_epoch"] == 5 and late["epochs"] == 8
    with pytest.raises(ValueError, match="min_epochs"):
        fit("ts_only", "classification", ts, fc, y, fit_rows, val,
            TrainSettings(embed_dim=8, max_epochs=3, min_epochs=4), seed=0)


def test_staged_fusion_starts_the_fc_branch_from_the_given_model():
    from fmriflow.finetune.trainer import fit

    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 4)
    ts, fc = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 12, 12)).astype(np.float32)
    rows, val = np.arange(6), np.array([6, 7])
    settings = TrainSettings(embed_dim=8, resnet_width=2, batch_size=2, max_epochs=1, patience=1, lr=1e-2)
    stage, _, _ = fit("fc_only", "classification", ts, fc, y, rows, val, settings, seed=0)
    frozen_lr = TrainSettings(**{**settings.__dict__, "lr": 0.0})
    staged, _, _ = fit("concat", "classification", ts, fc, y, rows, val, frozen_lr, seed=1, init_fc=stage)
    fresh, _, _ = fit("concat", "classification", ts, fc, y, rows, val, frozen_lr, seed=1)
    for name in ("fc_encoder", "fc_proj"):
        a, b, c = (dict(getattr(m, name).named_parameters()) for m in (stage, staged, fresh))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
