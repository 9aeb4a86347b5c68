"""fmriflow.models.neurostorm and neurostorm_mae at toy size: 4-D windows, stage shapes, gradients,
prompt tuning (the backbone stays bitwise unchanged), window masking ratios, redundancy dropout
against a hand computation, the reconstruction loss, and that hidden patches cannot leak."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fmriflow.models import windows as W
from fmriflow.models.neurostorm import (
    create_neurostorm,
    freeze_for_prompt_tuning,
    load_pretrained_backbone,
    prompt_parameter_names,
)
from fmriflow.models.neurostorm_mae import create_neurostorm_mae, redundancy, window_mask

pytestmark = pytest.mark.usefixtures("torch_one_thread")

IMG = (24, 24, 24)  # 6^3 patches: a 4 x 4 x 4 token grid


def toy(**overrides):
    torch.manual_seed(0)
    return create_neurostorm("tiny", img_size=IMG, max_frames=8, **overrides)


def test_windows_round_trip_and_hold_one_block_each():
    grid = (4, 6, 2, 4)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), dim=-1).float()[None]
    windows = W.partition(coords, (2, 3, 2, 2))  # (n_windows, 24, 4)
    assert windows.shape == (2 * 2 * 1 * 2, 24, 4)
    for block in windows:  # each window is one 2 x 3 x 2 x 2 box, time fastest
        lo = block.min(dim=0).values
        assert torch.equal(block.max(dim=0).values - lo, torch.tensor([1.0, 2, 1, 1]))
        assert torch.equal(block[1] - block[0], torch.tensor([0.0, 0, 0, 1]))
    torch.testing.assert_close(W.unpartition(windows, (2, 3, 2, 2), grid), coords)
    shifted = W.roll(coords, (1, 1, 1, 1))
    assert torch.equal(shifted[0, 0, 0, 0, 0], coords[0, 1, 1, 1, 1])
    torch.testing.assert_close(W.roll(shifted, (1, 1, 1, 1), inverse=True), coords)
    assert W.effective_window((4, 2, 8, 3), (4, 4, 4, 4), (2, 2, 2, 2)) == ((4, 2, 4, 3), (0, 0, 2, 0))


def test_stage_shapes_and_gradients():
    model = toy(n_outputs=3)
    x = torch.randn(2, 5, *IMG)
    stages = model.backbone(x)
    assert [tuple(s.shape) for s in stages] == [(2, 4, 4, 4, 5, 8), (2, 2, 2, 2, 5, 16)]
    out = model(x)
    assert out.shape == (2, 3)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("backbone.temporal_embed"):
            assert p.grad.abs().sum() > 0, name


def test_the_authors_switches_and_the_defaults_that_keep_fmriflows_layout():
    default = toy()
    assert not any("stage_" in name for name in default.state_dict()) and isinstance(default.head[0], torch.nn.LayerNorm)
    theirs = toy(stage_embeddings=True, last_stage_full=True, first_window_size=(4, 4, 4, 2), head_norm=False,
                 n_outputs=0)
    assert theirs.head is None
    assert theirs.backbone.stage_spatial_embeds["1"].shape == (1, 2, 2, 2, 1, 16)
    assert theirs.backbone.stage_temporal_embeds["1"].shape == (1, 1, 1, 1, 8, 16)
    # the last stage: one window over its whole 2^3 grid and 2 frames, never shifted; the first: its own window
    assert [b.window for b in theirs.backbone.stages[1].blocks] == [(2, 2, 2, 2)]
    assert all(b.shift == (0, 0, 0, 0) for b in theirs.backbone.stages[1].blocks)
    assert theirs.backbone.stages[0].blocks[1].window == (4, 4, 4, 2) and theirs.backbone.stages[0].blocks[1].shift == (2, 2, 2, 1)
    x = torch.randn(1, 6, *IMG)
    with torch.no_grad():
        stages = theirs.backbone(x)
        torch.testing.assert_close(theirs(x), stages[-1].flatten(1, 4).mean(dim=1))  # no head: the embedding
        # the later stage's tables enter before its blocks: zeroing them changes only that stage
        theirs.backbone.stage_spatial_embeds["1"].zero_()
        theirs.backbone.stage_temporal_embeds["1"].zero_()
        again = theirs.backbone(x)
    torch.testing.assert_close(again[0], stages[0])
    assert not torch.allclose(again[1], stages[1])


def test_shifted_blocks_mix_across_window_borders():
    """A change in one token reaches tokens of the neighbouring window only through the shifted block."""
    x = torch.randn(1, 4, *IMG)
    bumped = x.clone()
    bumped[0, 0, :6, :6, :6] += 1.0  # patch (0, 0, 0) of frame 0: window (0, 0, 0, 0) of the 2^4 windows
    for depth, reaches in ((1, False), (2, True)):
        model = toy(depths=(depth,))
        diff = (model.backbone(bumped)[0] - model.backbone(x)[0]).abs().amax(dim=-1)[0]  # (4, 4, 4, T)
        assert diff[:2, :2, :2, :2].max() > 0
        assert (diff[2:, :, :, :].max() > 0) == reaches  # a token of another window along x


def test_prompt_tuning_leaves_the_backbone_bitwise_unchanged():
    model = toy(n_outputs=2, prompt_len=3)
    trainable = freeze_for_prompt_tuning(model)
    assert set(trainable) == set(prompt_parameter_names(model)) | {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"}
    assert len(prompt_parameter_names(model)) == 3  # one per block: depths (2, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(2, 4, *IMG, generator=g), torch.tensor([0, 1])
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"


def test_prompts_change_the_output():
    model = toy(prompt_len=2)
    x = torch.randn(1, 4, *IMG)
    out = model(x)
    with torch.no_grad():
        model.backbone.stages[0].blocks[0].prompt.add_(1.0)
    assert (model(x) - out).abs().max() > 1e-6


def test_pretrained_encoder_loads_into_the_task_model():
    mae = create_neurostorm_mae("tiny", img_size=IMG, max_frames=8)
    model = toy(prompt_len=2)
    load_pretrained_backbone(model, mae.state_dict())
    for name, value in mae.encoder.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained_backbone(toy(embed_dim=16), mae.state_dict())


# --------------------------------------------------------------------------- masked pretraining


@pytest.mark.parametrize("grid, window, ratio", [((4, 4, 4, 8), (2, 2, 2, 2), 0.5), ((4, 4, 4, 6), (2, 2, 2, 4), 0.3),
                                                 ((16, 16, 16, 20), (4, 4, 4, 4), 0.75)])
def test_window_masking_hides_whole_windows_in_the_asked_ratio(grid, window, ratio):
    counts = [math.ceil(n / w) for n, w in zip(grid, window)]
    n_win = math.prod(counts)
    noise = torch.rand(3, n_win, generator=torch.Generator().manual_seed(2))
    mask = window_mask(noise, grid, window, ratio)
    assert mask.shape == (3, *grid)
    for b in range(3):
        hidden = set()
        for index in itertools.product(*[range(c) for c in counts]):
            box = mask[(b, *[slice(i * w, (i + 1) * w) for i, w in zip(index, window)])]
            assert box.all() or not box.any(), "a window is partly hidden"
            if box.all():
                hidden.add(index)
        assert len(hidden) == round(ratio * n_win)
        # the hidden windows are the lowest-noise ones
        lowest = set(np.argsort(noise[b].numpy())[:len(hidden)])
        assert {int(np.ravel_multi_index(i, counts)) for i in hidden} == lowest


def test_redundancy_equals_a_hand_computation():
    g = torch.Generator().manual_seed(3)
    patches = torch.randn(1, 3, 2, 2, 3, 5, generator=g)
    patches[0, 1, 1, 0] = patches[0, 0, 1, 0] * 2  # a copy (times 2) of its x-neighbour
    ours = redundancy(patches)[0]
    D, H, Wd, T = 3, 2, 2, 3

    def cos(a, b):
        return max(0.0, float(a @ b / (a.norm() * b.norm())))

    for d, h, w, t in itertools.product(range(D), range(H), range(Wd), range(T)):
        p = patches[0, d, h, w, t]
        spatial = [cos(p, patches[0, d + dd, h + dh, w + dw, t])
                   for dd, dh, dw in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
                   if 0 <= d + dd < D and 0 <= h + dh < H and 0 <= w + dw < Wd]
        temporal = [cos(p, patches[0, d, h, w, t + dt]) for dt in (1, -1) if 0 <= t + dt < T]
        expected = (np.mean(spatial) + np.mean(temporal)) / 2
        assert float(ours[d, h, w, t]) == pytest.approx(expected, abs=1e-6)
    assert float(ours[1, 1, 0].max()) > float(ours[2, 1, 0].max())


def test_redundancy_dropout_rate_and_only_while_training():
    mae = create_neurostorm_mae("tiny", img_size=IMG, max_frames=8, strd_rate=0.4, mask_ratio=0.25)
    x = torch.ones(4, 8, *IMG)  # constant: every patch repeats its neighbours (redundancy 1)
    out = mae(x, generator=torch.Generator().manual_seed(4))
    visible = ~out.mask
    assert not (out.dropped & out.mask).any()
    rate = float(out.dropped[visible].float().mean())
    n = int(visible.sum())
    assert abs(rate - 0.4) < 4 * math.sqrt(0.4 * 0.6 / n)
    mae.eval()
    assert not mae(x, generator=torch.Generator().manual_seed(4)).dropped.any()
    mae.train()
    mae.config.strd_rate = 0.0
    assert not mae(x, generator=torch.Generator().manual_seed(4)).dropped.any()


def test_loss_is_the_mse_of_the_masked_patches():
    mae = create_neurostorm_mae("tiny", img_size=IMG, max_frames=8)
    x = torch.randn(2, 3, *IMG)
    out = mae(x, generator=torch.Generator().manual_seed(5))
    # patches by hand: token (i, j, k, t) holds voxels [6i:6i+6, 6j:6j+6, 6k:6k+6] of frame t, x-major
    target = torch.empty(2, 4, 4, 4, 3, 216)
    for i, j, k in itertools.product(range(4), repeat=3):
        target[:, i, j, k] = x[:, :, 6 * i:6 * i + 6, 6 * j:6 * j + 6, 6 * k:6 * k + 6].reshape(2, 3, 216)
    per_patch = (out.pred - target).square().mean(dim=-1)
    torch.testing.assert_close(out.loss, per_patch[out.mask].mean())
    out.loss.backward()
    assert mae.mask_token.grad.abs().sum() > 0


def test_hidden_patches_do_not_leak_into_the_reconstruction():
    mae = create_neurostorm_mae("tiny", img_size=IMG, max_frames=8, strd_rate=0.0).eval()
    x = torch.randn(1, 4, *IMG)
    noise = torch.rand(1, mae.n_noise(4), generator=torch.Generator().manual_seed(6))
    out = mae(x, noise=noise)
    changed = x.clone()
    hidden = out.mask[0]  # (4, 4, 4, T)
    for i, j, k, t in hidden.nonzero().tolist():
        changed[0, t, 6 * i:6 * i + 6, 6 * j:6 * j + 6, 6 * k:6 * k + 6] = 100.0
    torch.testing.assert_close(mae(changed, noise=noise).pred, out.pred, atol=0, rtol=0)
    visible = (~hidden).nonzero()[0].tolist()
    changed[0, visible[3], 6 * visible[0]:6 * visible[0] + 6] += 1.0
    assert (mae(changed, noise=noise).pred - out.pred).abs().max() > 0
