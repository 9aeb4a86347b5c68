"""The vector quantiser, gradient reversal and the vq-align autoencoder (fmriflow.models.vq,
fmriflow.models.vqalign), checked against brute force and closed forms on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmriflow.models.vq import GradientReversal, VectorQuantizer, code_perplexity, nearest_codes, reverse_gradient
from fmriflow.models.vqalign import create_vqalign, random_text_table, reversal_weight


def _brute_force_nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    return np.array([int(np.argmin([((row - e) ** 2).sum() for e in codebook])) for row in z])


def test_nearest_code_matches_brute_force():
    rng = np.random.default_rng(0)
    z, codebook = rng.normal(size=(200, 6)), rng.normal(size=(17, 6))
    got = nearest_codes(torch.tensor(z), torch.tensor(codebook)).numpy()
    np.testing.assert_array_equal(got, _brute_force_nearest(z, codebook))


@pytest.mark.parametrize("ema", [False, True])
def test_quantizer_output_is_nearest_code_and_loss_has_closed_form(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(12, 5, beta=0.3, ema=ema).eval()
    z = torch.randn(4, 7, 5)
    out = vq(z)
    codebook = vq.codebook.detach().numpy()
    expected = _brute_force_nearest(z.reshape(-1, 5).numpy(), codebook)
    np.testing.assert_array_equal(out.codes.reshape(-1).numpy(), expected)
    np.testing.assert_allclose(out.z_q.detach().reshape(-1, 5).numpy(), codebook[expected], rtol=1e-6)
    # beta ||z - sg(e)||^2 (+ ||sg(z) - e||^2 when the codebook learns by gradient), as means over elements
    sq = ((z.reshape(-1, 5).numpy() - codebook[expected]) ** 2).mean()
    np.testing.assert_allclose(float(out.loss.detach()), (0.3 + (0.0 if ema else 1.0)) * sq, rtol=1e-5)


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 4, ema=False)
    z = torch.randn(10, 4, requires_grad=True)
    upstream = torch.randn(10, 4)
    (vq(z).z_q * upstream).sum().backward()
    # d(sum(g * z_q))/dz = g exactly; the codebook gets nothing through z_q
    torch.testing.assert_close(z.grad, upstream)
    assert vq.codebook.grad is None or torch.count_nonzero(vq.codebook.grad) == 0


def test_commitment_gradient_pulls_latent_towards_its_code():
    torch.manual_seed(2)
    vq = VectorQuantizer(8, 4, beta=0.25, ema=True).eval()  # eval: no EMA step moves the codes
    z = torch.randn(6, 4, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    e = vq.codebook[out.codes]
    # d/dz beta * mean((z - e)^2) = 2 beta (z - e) / numel
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - e) / z.numel())


def test_ema_update_closed_form():
    torch.manual_seed(3)
    vq = VectorQuantizer(5, 3, ema=True, decay=0.9, eps=1e-5).train()
    count0, sum0 = vq.ema_count.clone().numpy(), vq.ema_sum.clone().numpy()
    z = torch.randn(40, 3)
    codes = vq(z).codes.numpy()
    counts = np.bincount(codes, minlength=5).astype(float)
    sums = np.stack([z.numpy()[codes == k].sum(0) for k in range(5)])
    count = 0.9 * count0 + 0.1 * counts
    n = count.sum()
    smoothed = (count + 1e-5) / (n + 5 * 1e-5) * n
    np.testing.assert_allclose(vq.codebook.numpy(), (0.9 * sum0 + 0.1 * sums) / smoothed[:, None], rtol=1e-5)


def test_perplexity_closed_form():
    assert float(code_perplexity(torch.tensor([0, 1, 2, 3] * 5), 8)) == pytest.approx(4.0)
    codes = torch.tensor([0] * 3 + [1])
    p = np.array([0.75, 0.25])
    assert float(code_perplexity(codes, 8)) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_restart_on_batch_latents(ema):
    torch.manual_seed(4)
    vq = VectorQuantizer(8, 2, ema=ema, usage_decay=0.5).train()
    with torch.no_grad():
        vq.codebook.data[:] = torch.tensor([[0.0, 0.0], [10.0, 10.0]] + [[100.0 + k, -100.0] for k in range(6)])
        if ema:  # the moving averages the codebook is read from
            vq.ema_sum.copy_(vq.codebook * vq.ema_count[:, None])
    z = torch.cat([torch.randn(20, 2) * 0.1, 10 + torch.randn(20, 2) * 0.1])  # near codes 0 and 1 only
    for _ in range(10):
        vq(z)
    live_before = vq.codebook[:2].clone()
    assert sorted(vq.dead_codes().tolist()) == list(range(2, 8))
    restarted = vq.restart_dead(z, generator=torch.Generator().manual_seed(0))
    assert sorted(restarted.tolist()) == list(range(2, 8))
    torch.testing.assert_close(vq.codebook[:2], live_before)
    rows = {tuple(r) for r in z.numpy().round(6).tolist()}
    picked = [tuple(r) for r in vq.codebook[2:].detach().numpy().round(6).tolist()]
    assert all(r in rows for r in picked) and len(set(picked)) == 6  # distinct latents of the batch
    assert len(vq.dead_codes()) == 0 and torch.allclose(vq.usage_share[2:], torch.full((6,), 1 / 8))


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_gradient_reversal_sign_and_scale(weight):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = GradientReversal(weight)(x)
    torch.testing.assert_close(y, x.detach())
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -weight * upstream)
    # through a non-linear function: d/dx sum(sin(rev(x))) = -weight cos(x)
    x2 = torch.randn(7, requires_grad=True)
    torch.sin(reverse_gradient(x2, weight)).sum().backward()
    torch.testing.assert_close(x2.grad, -weight * torch.cos(x2.detach()))


def test_reversal_schedule_closed_form():
    assert reversal_weight(0, 100, 0.7) == 0.0
    assert reversal_weight(100, 100, 0.7) == pytest.approx(0.7 * (2 / (1 + math.exp(-10)) - 1))
    assert reversal_weight(50, 100, 0.7) == pytest.approx(0.7 * (2 / (1 + math.exp(-5)) - 1))
    assert reversal_weight(500, 100, 0.7) == reversal_weight(100, 100, 0.7)


def _model(seed=0):
    torch.manual_seed(seed)
    table = random_text_table(30, 32, 1.0, seed=1)
    return create_vqalign("tiny", n_regions=6, text_table=table, text_ids=torch.arange(3, 30))


def test_vqalign_shapes_and_masked_reconstruction_loss():
    model = _model().eval()
    x = torch.randn(2, 6, 40)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = model(x, region_mask=mask, text_ids=torch.arange(3, 19))
    assert out.reconstruction.shape == x.shape and out.codes.shape == (2, 16)  # 4 patches x 4 codes each
    sq = (out.reconstruction - x).detach() ** 2
    expected = (sq[0].sum() + sq[1, :4].sum()) / (10 * 40)
    torch.testing.assert_close(out.recon_loss.detach(), expected)


def test_domain_classifier_gradient_reaches_encoder_reversed_and_scaled():
    """Encoder gradient of the classifier's loss with reversal weight w is -w times the gradient
    the encoder would get if it were trained to help the classifier (w = -1)."""
    x, text = torch.randn(3, 6, 20), torch.arange(3, 9)

    def encoder_grad(weight):
        model = _model(seed=5).eval()
        model.reversal.weight.fill_(weight)
        model(x, text_ids=text).disc_loss.backward()
        return model.encoder[0].weight.grad.clone()

    helping = encoder_grad(-1.0)
    assert helping.abs().sum() > 0
    for w in (0.3, 1.5):
        torch.testing.assert_close(encoder_grad(w), -w * helping, rtol=1e-4, atol=1e-7)
    assert torch.count_nonzero(encoder_grad(0.0)) == 0  # the ablation: the probe does not shape the encoder


def test_code_width_must_match_text_embeddings():
    with pytest.raises(ValueError, match="text embeddings are 16-d but the codes are 32-d"):
        from fmriflow.models.vqalign import CONFIGS, VQAlign

        VQAlign(CONFIGS["tiny"], torch.zeros(5, 16), torch.arange(5))


def test_whitening_is_zca_over_the_batch_and_keeps_running_statistics():
    """Train mode: (x - mean) V diag(1/sqrt(l)) V' with (V, l) the eigen-decomposition of the batch
    covariance (numpy), so the output has zero mean and identity covariance; eval mode applies the
    running mean and matrix (momentum 1: the last batch's)."""
    from fmriflow.models.vqalign import Whiten

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    whiten = Whiten(5, momentum=1.0, eps=1e-9)
    out = whiten(torch.tensor(x, dtype=torch.float64)).numpy()
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    expected = (x - x.mean(0)) @ vectors @ np.diag(values ** -0.5) @ vectors.T
    np.testing.assert_allclose(out, expected, atol=1e-4)  # computed in float32
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(5), atol=1e-4)
    whiten.eval()
    np.testing.assert_allclose(whiten(torch.tensor(x, dtype=torch.float64)).numpy(), expected, atol=1e-4)


def test_classifier_sees_each_vector_layer_normalised():
    """With disc_norm the classifier's loss is unchanged when each vector is shifted and scaled
    (what the layer norm removes: a row's mean and norm); without it, it changes."""
    torch.manual_seed(0)
    fmri, text = torch.randn(20, 32), torch.randn(30, 32)
    shift = lambda v: v * torch.rand(len(v), 1) * 3 + torch.randn(len(v), 1)  # noqa: E731
    for norm in (True, False):
        model = _model()
        model.config.disc_norm = norm
        same = torch.isclose(model._discriminate(fmri, text)[0], model._discriminate(shift(fmri), shift(text))[0],
                             atol=1e-5)
        assert bool(same) is norm


def test_optimizer_gives_the_classifier_its_learning_rate_scale():
    """Parameters marked with _lr_scale (the classifier) get lr x scale through the whole schedule;
    the others the plain lr; matrices decay, vectors do not."""
    import dataclasses
    from types import SimpleNamespace

    from fmriflow.models.vqalign import CONFIGS, VQAlign
    from fmriflow.training.config import TrainConfig
    from fmriflow.training.loop import _optimizer, lr_at

    table = random_text_table(30, 32, 1.0, seed=1)
    model = VQAlign(dataclasses.replace(CONFIGS["tiny"], n_regions=6, disc_lr_scale=7.0), table, torch.arange(3, 30))
    cfg = TrainConfig(dataset="", out="", lr=2e-3, max_steps=50, warmup_steps=5, weight_decay=0.1)
    _, optimizer, scheduler = _optimizer(model, cfg, SimpleNamespace(device=torch.device("cpu")))
    classifier = {id(p) for p in model.classifier.parameters()}
    for _ in range(12):
        optimizer.step(), scheduler.step()
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale = 7.0 if id(p) in classifier else 1.0
            assert group["lr"] == pytest.approx(lr_at(12, cfg) * scale)
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_amplitude_tokens_are_equal_count_bins_of_the_patch_log_rms():
    """gain_levels: bin edges are the quantiles of the training patches' log RMS (numpy), and each
    patch's token, before its codes, is n_codes + its bin; the token table has an ordinal ladder."""
    import dataclasses

    from fmriflow.models.vqalign import CONFIGS, VQAlign

    config = dataclasses.replace(CONFIGS["tiny"], n_regions=6, gain_levels=4)
    model = VQAlign(config, random_text_table(30, 32, 1.0, seed=1), torch.arange(3, 30)).eval()
    g = torch.Generator().manual_seed(2)
    train = torch.randn(12, 6, 40, generator=g) * torch.exp(torch.randn(12, 1, 1, generator=g))
    model.fit_gain_edges(train)
    patches = train.numpy().reshape(12, 6, 4, 10).transpose(0, 2, 1, 3).reshape(12, 4, -1)
    log_rms = 0.5 * np.log((patches.astype(np.float64) ** 2).mean(-1))
    edges = np.quantile(log_rms, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(model.gain_edges.numpy(), edges, rtol=1e-5)
    x = torch.randn(3, 6, 40, generator=g) * 2
    tokens = model.tokenize(x).reshape(3, 4, 5)  # 4 patches x (1 amplitude token + 4 codes)
    xp = x.numpy().reshape(3, 6, 4, 10).transpose(0, 2, 1, 3).reshape(3, 4, -1)
    bins = np.digitize(0.5 * np.log((xp.astype(np.float64) ** 2).mean(-1)), edges, right=True)
    np.testing.assert_array_equal(tokens[:, :, 0].numpy(), 64 + bins)
    assert torch.equal(tokens[:, :, 1:].reshape(3, -1), model.quantizer(model.encode(x)).codes)
    table = model.token_table()
    assert table.shape == (68, 32) and torch.all(table[64:, 0].diff() > 0) and model.n_tokens == 68


def test_reversal_gate_closed_form():
    """clamp(gain (2 acc - 1), 0, 1): 0 at and below chance, linear above, 1 from 0.5 + 0.5 / gain; gain 0: no gate."""
    from fmriflow.models.vqalign import reversal_gate

    acc = torch.tensor([0.0, 0.3, 0.5, 0.55, 0.6, 0.7, 0.75, 0.9, 1.0])
    expected = {1.0: [0, 0, 0, 0.1, 0.2, 0.4, 0.5, 0.8, 1.0], 2.0: [0, 0, 0, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0],
                0.0: [1.0] * 9}
    for gain, values in expected.items():
        torch.testing.assert_close(reversal_gate(acc, gain), torch.tensor(values), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="'reversal_gate' must be >= 0"):
        reversal_gate(acc, -1.0)


def test_running_accuracy_follows_training_batches_only():
    """disc_acc_ema <- 0.9 ema + 0.1 acc from 0.5, acc the batch's balanced accuracy (scikit-learn's, on the
    signs of the classifier's outputs, fMRI = 1); evaluation forwards leave it."""
    from sklearn.metrics import balanced_accuracy_score

    model = _model(seed=2)
    outputs = []
    model.classifier.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach().squeeze(-1)))
    g = torch.Generator().manual_seed(4)
    expected, accuracies = 0.5, []
    for _ in range(4):
        outputs.clear()
        model(torch.randn(3, 6, 20, generator=g) * 3, text_ids=torch.arange(3, 15))
        fmri, text = outputs  # the classifier's two calls of this forward: fMRI vectors, then text rows
        y = np.r_[np.ones(len(fmri)), np.zeros(len(text))]
        acc = balanced_accuracy_score(y, (torch.cat([fmri, text]) > 0).numpy().astype(float))
        expected, accuracies = 0.9 * expected + 0.1 * acc, accuracies + [acc]
        assert float(model.disc_acc_ema) == pytest.approx(expected, abs=1e-6)
    assert len(set(accuracies)) > 1  # the batches differ: the mean is not a constant by chance
    model.eval()
    model(torch.randn(3, 6, 20, generator=g), text_ids=torch.arange(3, 15))
    assert float(model.disc_acc_ema) == pytest.approx(expected, abs=1e-6)


def test_gated_reversal_gives_the_encoder_no_domain_gradient_at_or_below_chance():
    """The training schedule sets the weight to the closed form schedule x gate; with the classifier's running
    accuracy at or below chance the encoder gets no gradient from the classifier's loss (the classifier
    still does), above it the reversed gradient scaled by that weight."""
    from fmriflow.training.config import TrainConfig
    from fmriflow.training.text_tasks import _schedule

    x, text = torch.randn(3, 6, 20), torch.arange(3, 9)
    cfg = TrainConfig(dataset="", out="", task="vq-align", max_steps=100, batch_size=3, align_weight=0.5,
                      reversal_gate=2.0, restart_every=0)

    def grads(acc=None, weight=None):
        model = _model(seed=5).eval()
        if acc is None:
            model.reversal.weight.fill_(weight)
        else:
            model.disc_acc_ema.fill_(acc)
            _schedule(model, {"x": x}, 50, cfg)
        model(x, text_ids=text).disc_loss.backward()
        return float(model.reversal.weight), model.encoder[0].weight.grad, model.classifier[0].weight.grad

    _, helping, _ = grads(weight=-1.0)
    assert helping.abs().sum() > 0
    schedule = 0.5 * (2 / (1 + math.exp(-5)) - 1)  # Ganin & Lempitsky at p = 0.5
    for acc in (0.5, 0.4, 0.0):
        weight, encoder, classifier = grads(acc)
        assert weight == 0.0 and torch.count_nonzero(encoder) == 0 and classifier.abs().sum() > 0
    for acc, gate in ((0.6, 0.4), (0.9, 1.0)):
        weight, encoder, _ = grads(acc)
        assert weight == pytest.approx(schedule * gate, rel=1e-6)
        torch.testing.assert_close(encoder, -weight * helping, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("public_hook", [True, False], ids=["public-hook", "torch-without-public-hook"])
def test_weights_from_before_the_gate_load_with_the_running_accuracy_at_chance(public_hook, monkeypatch):
    """A state dict without 'disc_acc_ema' (model files and checkpoints written before the gate) loads strictly;
    the running accuracy starts at 0.5 and every saved tensor is taken over. Also on torch < 2.5 (pyproject
    allows >= 2.4), which has no public Module.register_load_state_dict_pre_hook: the private form stands in."""
    if not public_hook:
        monkeypatch.delattr(torch.nn.Module, "register_load_state_dict_pre_hook")
    state = _model(seed=1).state_dict()
    del state["disc_acc_ema"]
    model = _model(seed=2)
    model.disc_acc_ema.fill_(0.9)
    model.load_state_dict(state)
    assert float(model.disc_acc_ema) == 0.5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
