"""BrainSymphony (fmriflow.models.brainsymphony): shapes, gradients, masking, the parameter count
against a closed form, the signed graph attention and the spatial attention maps against a direct
einsum/softmax computation, and the fusion gate's limits.

CPU only, synthetic data.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fmriflow.models.brainsymphony import (CONFIGS, BrainSymphony, BrainSymphonyConfig, create_brainsymphony,
                                           network_similarity)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

R, T = 10, 40  # tiny problem: 10 regions x 40 time points (the tiny config's window)


def _x(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, R, T, generator=torch.Generator().manual_seed(seed))


def _sc(batch: int = 3, seed: int = 1) -> torch.Tensor:
    """Symmetric connectomes with both signs (log10 of streamlines over volume has negative weak edges)."""
    a = torch.randn(batch, R, R, generator=torch.Generator().manual_seed(seed))
    return ((a + a.transpose(1, 2)) / 2).diagonal_scatter(torch.zeros(batch, R), dim1=1, dim2=2)


def _model(modalities: str = "both", **overrides) -> BrainSymphony:
    torch.manual_seed(0)
    return create_brainsymphony("tiny", R, modalities=modalities, **overrides)


def _noise(model: BrainSymphony, batch: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, model.n_noise(T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# shapes and gradients


@pytest.mark.parametrize("modalities", ["both", "fmri", "sc"])
def test_shapes(modalities):
    model = _model(modalities)
    out = model(_x(), _sc(), noise=_noise(model))
    assert out.loss.shape == () and torch.isfinite(out.loss)
    if modalities != "sc":
        assert out.pred_x.shape == (3, R, T) and out.entry_mask.shape == (3, R, T)
    if modalities != "fmri":
        assert out.pred_sc.shape == (3, R, R) and out.edge_mask.shape == (3, R, R)
        assert torch.allclose(out.pred_sc, out.pred_sc.transpose(1, 2))
    emb = model.embed(_x() if modalities != "sc" else None, _sc() if modalities != "fmri" else None)
    assert emb.fused.shape == (3, 32)
    if modalities != "sc":
        assert emb.regions.shape == (3, R, 32) and emb.functional.shape == (3, 32)


@pytest.mark.parametrize("modalities", ["both", "fmri", "sc"])
def test_gradients_reach_every_parameter(modalities):
    model = _model(modalities)
    model(_x(), _sc(), noise=_noise(model)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_multimodal_model_embeds_each_modality_alone():
    model = _model("both").eval()
    x, sc = _x(), _sc()
    both = model.embed(x, sc)
    assert torch.allclose(model.encode(x), both.functional, atol=1e-6)
    assert torch.allclose(model.encode(sc=sc), both.structural, atol=1e-6)
    assert model.embed(x).structural is None and model.embed(sc=sc).functional is None


@pytest.mark.parametrize("call, match", [
    (lambda m: m(_x(), None), "needs x and sc"),
    (lambda m: m.embed(torch.zeros(2, R, T + 1)), r"\(batch, 10 regions, 40 time points\)"),
    (lambda m: m.embed(sc=torch.zeros(2, R, R + 1)), r"\(batch, 10, 10\)"),
    (lambda m: m.embed(_x(2), _sc(3)), "same batch size"),
    (lambda m: m.embed(), "give 'x'"),
])
def test_bad_inputs_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call(_model("both"))


def test_unimodal_model_refuses_the_other_modality():
    with pytest.raises(ValueError, match="modalities='fmri'"):
        _model("fmri").embed(_x(), _sc())
    with pytest.raises(ValueError, match="'modalities' must be one of"):
        BrainSymphonyConfig(modalities="dwi")


# ---------------------------------------------------------------------------------------------
# masking


def test_mask_counts_and_symmetry():
    model = _model("both", spatial_mask_ratio=0.3, temporal_mask_ratio=0.25, sc_mask_ratio=0.5)
    region, time, edge = model.masks(_noise(model), T)
    assert (region.sum(1) == round(R * 0.3)).all() and (time.sum(1) == round(T * 0.25)).all()
    n_edges = R * (R - 1) // 2
    assert (edge.triu(1).sum((1, 2)) == round(n_edges * 0.5)).all()
    assert torch.equal(edge, edge.transpose(1, 2)) and not edge.diagonal(dim1=1, dim2=2).any()
    # hidden entries: a hidden region's whole window, a hidden time point of every region
    out = model(_x(), _sc(), noise=_noise(model))
    assert torch.equal(out.entry_mask, region[:, :, None] | time[:, None, :])


def test_hidden_entries_do_not_reach_the_reconstruction():
    model = _model("both").eval()
    noise = _noise(model)
    x, sc = _x(), _sc()
    out = model(x, sc, noise=noise)
    x2 = torch.where(out.entry_mask, x + 5.0, x)  # change only what the model must not see
    sc2 = torch.where(out.edge_mask, sc - 3.0, sc)
    out2 = model(x2, sc2, noise=noise)
    assert torch.allclose(out.pred_x, out2.pred_x, atol=1e-6)
    assert torch.allclose(out.pred_sc, out2.pred_sc, atol=1e-6)
    # while a visible entry does reach it
    visible = (~out.entry_mask).nonzero()[0]
    x3 = x.clone()
    x3[tuple(visible)] += 5.0
    assert not torch.allclose(model(x3, sc, noise=noise).pred_x, out.pred_x, atol=1e-4)


def test_losses_are_mse_on_hidden_entries_only():
    model = _model("both", sc_loss_weight=0.5)
    x, sc = _x(), _sc()
    out = model(x, sc, noise=_noise(model))
    err_x = (out.pred_x - x).detach().pow(2)[out.entry_mask]
    err_sc = (out.pred_sc - sc).detach().pow(2)[out.edge_mask]
    assert out.fmri_loss.item() == pytest.approx(err_x.mean().item(), rel=1e-5)
    assert out.sc_loss.item() == pytest.approx(err_sc.mean().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(err_x.mean().item() + 0.5 * err_sc.mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# parameter count


def _closed_form(cfg: BrainSymphonyConfig, n: int) -> int:
    """Parameters of BrainSymphony, counted from the architecture as the module docstring states it."""
    d, m, T = cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.window
    ln = 2 * d
    attn = (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)  # q, kv, out
    mlp = (d * m + m) + (m * d + d)
    block, cross = 2 * ln + attn + mlp, 3 * ln + attn + mlp  # a cross block also norms its context
    fmri = ((T * d + d) + n * d + (n * d + d) + 2 * d  # region_in, region embed, frame_in, mask tokens
            + (cfg.spatial_layers + cfg.temporal_layers) * block + 2 * ln
            + (n * d + d) + cfg.conv_layers * (d * d * cfg.conv_kernel + d) + ln  # context path
            + 3 * d + cfg.n_latents * d + cross + cfg.latent_layers * block + ln  # Perceiver
            + n * d + (d * d + d) + cfg.decoder_layers * cross + ln + (d * T + T))  # decoder
    sc = ((n * d + d) + n * d + cfg.sc_layers * (block + 2 * cfg.n_heads) + ln  # encoder, signed biases
          + ln + (d * d + d) + 1)  # read-out
    both = (d * d + d) + (2 * d * d + d)  # fused embedding into the SC read-out, the gate
    return {"fmri": fmri, "sc": sc, "both": fmri + sc + both}[cfg.modalities]


@pytest.mark.parametrize("name", ["tiny", "brainsymphony-5m"])
@pytest.mark.parametrize("modalities", ["both", "fmri", "sc"])
@pytest.mark.parametrize("n_regions", [10, 424, 450])
def test_parameter_count_matches_the_closed_form(name, modalities, n_regions):
    cfg = dataclasses.replace(CONFIGS[name], modalities=modalities)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = BrainSymphony(cfg, n_regions)
    assert model.num_params() == _closed_form(cfg, n_regions)


@pytest.mark.parametrize("n_regions", [400, 424, 450])
def test_paper_size_has_about_the_papers_parameter_count(n_regions):
    # the paper: 5.6M parameters, multimodal, 450 regions (400 cortical + 50 subcortical), 200 frames
    count = _closed_form(CONFIGS["brainsymphony-5m"], n_regions)
    assert 5.45e6 <= count <= 5.75e6, count


# ---------------------------------------------------------------------------------------------
# attention


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    B, L, C = t.shape
    return t.view(B, L, h, C // h).transpose(1, 2)  # (B, h, L, C/h)


def _direct_maps(block, tokens: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) from the block's weights, written with einsum."""
    att, h = block.attn, block.attn.n_heads
    z = F.layer_norm(tokens, (tokens.shape[-1],), block.ln1.weight, block.ln1.bias, block.ln1.eps)
    q = _heads(torch.einsum("blc,dc->bld", z, att.q.weight) + att.q.bias, h)
    kv = torch.einsum("blc,dc->bld", z, att.kv.weight) + att.kv.bias
    k = _heads(kv[..., : z.shape[-1]], h)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / q.shape[-1] ** 0.5
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


def test_signed_attention_against_a_direct_computation():
    model = _model("sc", sc_layers=1).eval()
    enc = model.structural
    with torch.no_grad():  # distinct signed-edge weights per head
        enc.biases[0].pos.copy_(torch.tensor([1.5, -0.7]))
        enc.biases[0].neg.copy_(torch.tensor([-2.0, 0.4]))
    sc = _sc()
    tokens = torch.einsum("bij,dj->bid", sc, enc.row_in.weight) + enc.row_in.bias + enc.region_embed
    pos, neg = sc.clamp(min=0), (-sc).clamp(min=0)
    bias = (torch.einsum("h,bij->bhij", enc.biases[0].pos, pos) + torch.einsum("h,bij->bhij", enc.biases[0].neg, neg))
    expected = _direct_maps(enc.blocks[0], tokens, bias.detach())
    got = model.structural_attention(sc)[:, 0]  # (B, heads, R, R)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the biases matter: without them the maps differ
    assert not torch.allclose(got, _direct_maps(enc.blocks[0], tokens, None), atol=1e-3)
    # and the fused kernel (SDPA with the bias as an additive mask) gives the eager embedding
    eager = create_brainsymphony("tiny", R, modalities="sc", sc_layers=1, attention="eager").eval()
    eager.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.encode(sc=sc), eager.encode(sc=sc), atol=1e-5, rtol=1e-5)


def test_incoming_attention_per_region():
    model = _model("fmri", spatial_layers=1).eval()
    x = _x()
    enc = model.functional
    tokens = torch.einsum("brt,dt->brd", x, enc.region_in.weight) + enc.region_in.bias + enc.region_embed
    maps = _direct_maps(enc.spatial[0], tokens, None)  # (B, heads, R, R), row = querying region
    incoming = model.incoming_attention(x)
    torch.testing.assert_close(incoming, maps.mean(dim=(1, 2)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(incoming.sum(1), torch.ones(3))  # each row of a map sums to one


# ---------------------------------------------------------------------------------------------
# fusion gate


def test_gate_limits():
    model = _model("both").eval()
    x, sc = _x(), _sc()
    emb = model.embed(x, sc)
    gate = model.gate.gate
    with torch.no_grad():
        gate.weight.zero_()
        for value, expected in ((60.0, emb.functional), (-60.0, emb.structural),
                                (0.0, (emb.functional + emb.structural) / 2)):
            gate.bias.fill_(value)
            torch.testing.assert_close(model.encode(x, sc), expected, atol=1e-6, rtol=1e-6)


def test_network_similarity_against_loops():
    """Mean cosine similarity of centred region tokens per pair of networks, by plain loops in float64."""
    import numpy as np

    gen = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 7, 5, generator=gen)
    networks = torch.tensor([0, 2, 1, 0, 2, 2, 1])
    got = network_similarity(tokens, networks, 3).numpy()
    t = tokens.double().numpy()
    for b in range(2):
        c = t[b] - t[b].mean(0)
        unit = c / np.linalg.norm(c, axis=1, keepdims=True)
        want = []
        for p in range(3):
            for q in range(p, 3):
                want.append(np.mean([unit[i] @ unit[j] for i in range(7) for j in range(7)
                                     if networks[i] == p and networks[j] == q]))
        np.testing.assert_allclose(got[b], want, atol=1e-5)
