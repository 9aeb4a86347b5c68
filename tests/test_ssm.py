"""fmriflow.models.ssm: the selective scan against a step-by-step recurrence written here, its
gradients (gradcheck and autograd through that recurrence), its memory, the Mamba block against a
hand-written forward pass, bidirectionality and the backend dispatch."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fmriflow.models import ssm
from fmriflow.models.ssm import BiMamba, Mamba, backend_of, create_mamba, resolve_backend, selective_scan


def recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The Mamba-1 scan one time step at a time, in the inputs' dtype (autograd flows through it)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, length = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def inputs(batch=2, d_inner=5, d_state=3, length=23, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return {"u": r(batch, d_inner, length), "delta": r(batch, d_inner, length),
            "A": -torch.exp(r(d_inner, d_state)), "B": r(batch, d_state, length), "C": r(batch, d_state, length),
            "D": r(d_inner), "z": r(batch, d_inner, length), "delta_bias": r(d_inner)}


pytestmark = pytest.mark.usefixtures("torch_one_thread")

OPTIONS = [dict(zip(("D", "z", "delta_bias", "delta_softplus"), flags)) for flags in itertools.product([False, True], repeat=4)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "bare")
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7])
def test_scan_equals_step_by_step_recurrence(options, chunk_size):
    x = inputs()
    if not options["delta_softplus"]:
        x["delta"] = x["delta"].abs()  # a step size must be positive for the recurrence to be stable
    args = {k: (x[k] if options[k] else None) for k in ("D", "z", "delta_bias")}
    ours = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **args,
                          delta_softplus=options["delta_softplus"], chunk_size=chunk_size)
    expected = recurrence(x["u"], x["delta"], x["A"], x["B"], x["C"], **args, delta_softplus=options["delta_softplus"])
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_gradcheck(chunk_size):
    x = inputs(batch=2, d_inner=3, d_state=2, length=7, seed=1)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    leaves = [x[k].clone().requires_grad_() for k in names]

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, True, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("path", ["blocks", "doubling"])
@pytest.mark.parametrize("chunk_size", [None, 9])
def test_both_paths_equal_the_recurrence_with_gradients(path, chunk_size, monkeypatch):
    """Closed form in 16-step blocks (3 blocks of 40 steps, or one partial block per chunk of 9),
    and the recursive-doubling fallback taken when a block's decay is too deep."""
    if path == "doubling":
        monkeypatch.setattr(ssm._Chunk, "LOG_RANGE", {torch.float64: 0.0})
    x = inputs(batch=2, d_inner=6, d_state=4, length=40, seed=2)
    grad_out = torch.randn(2, 6, 40, dtype=torch.float64)
    grads = []
    for fn in (lambda **k: selective_scan(**k, delta_softplus=True, chunk_size=chunk_size),
               lambda **k: recurrence(**k, delta_softplus=True)):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y = fn(**leaves)
        y.backward(grad_out)
        grads.append({"y": y.detach(), **{k: v.grad for k, v in leaves.items()}})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-10, rtol=1e-8, msg=name)


def test_large_steps_do_not_overflow():
    """delta up to ~60 and A down to -16: decays of exp(-1000) underflow to 0, nothing overflows."""
    x = inputs(seed=3)
    x["A"] = -torch.arange(1, 4, dtype=torch.float64).repeat(5, 1) * 5
    x["delta"] = x["delta"] * 30
    ours = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True, chunk_size=8)
    expected = recurrence(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs_compute_in_fp32_and_return_their_dtype(dtype, tol):
    x = inputs(seed=4)
    low = {k: v.to(dtype) for k, v in x.items()}
    ours = selective_scan(**low, delta_softplus=True)
    assert ours.dtype == dtype
    # the reference sees the same rounded inputs, in fp64
    expected = recurrence(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(ours.double(), expected, atol=tol * expected.abs().max().item(), rtol=0)


def test_memory_saved_for_backward_grows_with_length_not_with_state():
    """Autograd keeps (batch, d_inner, L)-sized inputs and chunk-boundary states, never (batch, d_inner, L, d_state)."""

    def saved(length):
        x = {k: v.float().requires_grad_() for k, v in inputs(batch=1, d_inner=8, d_state=16, length=length).items()}
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            y = selective_scan(**x, delta_softplus=True, chunk_size=64)
        y.sum().backward()
        return max(sizes), sum(sizes), max(v.numel() for v in x.values())

    largest, total, largest_input = saved(1024)
    _, total2, _ = saved(2048)
    assert largest <= largest_input  # B and C (1, 16, L); the states would be (1, 8, L, 16)
    assert total2 == pytest.approx(2 * total, rel=0.05)


# --------------------------------------------------------------------------- the block


def block_by_hand(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Mamba-1 forward written out: projections, causal depthwise conv tap by tap, scan, gate."""
    L = x.shape[1]
    xz = x @ m.in_proj.weight.T  # (b, L, 2 d_inner)
    xs, z = xz[..., :m.d_inner], xz[..., m.d_inner:]
    w = m.conv1d.weight[:, 0, :]  # (d_inner, d_conv): tap k sees x[t - (d_conv - 1 - k)]
    conv = torch.zeros_like(xs) + m.conv1d.bias
    for k in range(m.d_conv):
        lag = m.d_conv - 1 - k
        conv[:, lag:] += xs[:, :L - lag] * w[:, k]
    xs = F.silu(conv)
    proj = xs @ m.x_proj.weight.T
    dt, B, C = proj[..., :m.dt_rank], proj[..., m.dt_rank:m.dt_rank + m.d_state], proj[..., m.dt_rank + m.d_state:]
    delta = F.softplus(dt @ m.dt_proj.weight.T + m.dt_proj.bias)  # (b, L, d_inner)
    y = recurrence(xs.transpose(1, 2), delta.transpose(1, 2), -torch.exp(m.A_log), B.transpose(1, 2),
                   C.transpose(1, 2), m.D, z.transpose(1, 2))
    return y.transpose(1, 2) @ m.out_proj.weight.T


def test_mamba_block_equals_a_hand_written_forward():
    torch.manual_seed(0)
    m = Mamba(12, d_state=5, d_conv=3, expand=2).double()
    with torch.no_grad():  # make D and A_log non-trivial so the test sees them
        m.D.normal_()
        m.A_log.add_(torch.randn_like(m.A_log) * 0.3)
    x = torch.randn(2, 17, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), block_by_hand(m, x), atol=1e-12, rtol=1e-10)


def test_mamba_parameters_follow_mamba_ssm():
    """Names and shapes of mamba_ssm 2.3.2's Mamba(d_model=32, d_state=16, d_conv=4, expand=2), and its init."""
    m = Mamba(32, dt_min=0.001, dt_max=0.1)
    d_inner, dt_rank = 64, 2  # dt_rank "auto" = ceil(32 / 16)
    expected = {"in_proj.weight": (2 * d_inner, 32), "conv1d.weight": (d_inner, 1, 4), "conv1d.bias": (d_inner,),
                "x_proj.weight": (dt_rank + 32, d_inner), "dt_proj.weight": (d_inner, dt_rank),
                "dt_proj.bias": (d_inner,), "A_log": (d_inner, 16), "D": (d_inner,), "out_proj.weight": (32, d_inner)}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    step = F.softplus(m.dt_proj.bias)
    assert step.min() >= 0.001 * 0.999 and step.max() <= 0.1 * 1.001
    torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1, 17.0).repeat(d_inner, 1))
    assert (m.D == 1).all() and m.A_log._no_weight_decay and m.D._no_weight_decay


def test_forward_block_is_causal_and_bidirectional_sees_both_ways():
    torch.manual_seed(1)
    x = torch.randn(1, 20, 8, dtype=torch.float64)
    bumped = x.clone()
    bumped[0, 12] += 1.0
    forward = Mamba(8, d_state=4).double()
    diff = (forward(bumped) - forward(x)).abs().amax(dim=-1)[0]
    assert (diff[:12] == 0).all() and (diff[12:] > 0).all()
    both = BiMamba(8, backend="reference", d_state=4).double()
    diff = (both(bumped) - both(x)).abs().amax(dim=-1)[0]
    assert (diff > 0).all()
    expected = both.fwd(x) + both.bwd(x.flip(1)).flip(1)
    torch.testing.assert_close(both(x), expected, atol=0, rtol=0)


def test_backend_dispatch(monkeypatch):
    monkeypatch.setenv(ssm.ENV_BACKEND, "reference")
    assert resolve_backend() == "reference"
    block = create_mamba(8, d_state=4)
    assert isinstance(block, Mamba) and block.fmriflow_backend == "reference"
    assert backend_of(torch.nn.Sequential(block, torch.nn.Linear(8, 8))) == "reference"
    assert backend_of(torch.nn.Linear(2, 2)) is None
    monkeypatch.setattr(ssm, "mamba_ssm_status", lambda: "no CUDA device")
    monkeypatch.setenv(ssm.ENV_BACKEND, "auto")
    assert resolve_backend() == "reference"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_backend("mamba_ssm")
    with pytest.raises(ValueError, match="'backend' must be one of"):
        resolve_backend("cuda")


def test_bad_shapes_are_named():
    x = inputs()
    with pytest.raises(ValueError, match="'B' must have shape"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :, None], x["C"])
    with pytest.raises(ValueError, match="'A' must be real"):
        selective_scan(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
