"""Selective state-space scan (Mamba-1) in plain PyTorch, the Mamba block, and its dispatch.

The scan follows the semantics of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(mamba-ssm 2.3.2) for a real ``A`` and input-dependent ``B``, ``C`` of shape
``(batch, d_state, L)``:

    delta_t = softplus(delta_t + delta_bias)            (each step optional)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t     (per channel d and state n)
    y_t     = <C_t, h_t> + D * u_t,   then y_t * silu(z_t)

computed in fp32 (fp64 for fp64 inputs) and returned in the dtype of ``u``, as the CUDA
kernel does. ``selective_scan`` runs on any device, so it is both the CPU path of the
voxel models and the reference the GPU parity check compares mamba-ssm's kernel against.

How it runs: an ``autograd.Function`` walks the sequence in chunks (as many steps as keep a
``(batch, d_inner, chunk, d_state)`` work tensor at ``CHUNK_ELEMENTS``). Inside a chunk the
linear recurrence runs in two levels, with whole-tensor operations instead of one small
operation per time step: in blocks of 16 steps by a closed form in the cumulative log-decay
(or, when a block's decay is too deep for ``exp`` in the working precision, by recursive
doubling, which only multiplies decays in (0, 1]), then across blocks by recursive
doubling over the blocks' total decays. The forward keeps the state at each chunk boundary
and nothing else of size ``(batch, d_inner, L, d_state)``; the backward recomputes a
chunk's states from its boundary and runs the adjoint recurrence
``g_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}`` backwards through it, the same way. Memory
therefore grows like the CUDA kernel's, with the inputs ``(batch, d_inner, L)``, plus one
chunk of work tensors. ``benchmarks/ssm_cpu.py`` times it against a step-by-step loop.

``Mamba`` is the Mamba-1 block with the parameter names, shapes and initialisation of
``mamba_ssm.modules.mamba_simple.Mamba`` (a state dict loads into either);
``create_mamba`` returns mamba-ssm's block when its CUDA kernels can run and this one
otherwise, and tags the module with the path it took (``backend_of``).

Sources (written from the papers and from reading mamba-ssm's interface, no code copied):
- Gu and Dao, "Mamba: linear-time sequence modeling with selective state spaces", 2023.
- Blelloch, "Prefix sums and their applications", 1990 (the scan as a prefix operation).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENV_BACKEND = "FMRIFLOW_MAMBA_BACKEND"  # auto | reference | mamba_ssm
BACKENDS = ("auto", "reference", "mamba_ssm")
CHUNK_ELEMENTS = 1 << 22  # elements of one (batch, d_inner, chunk, d_state) work tensor (16 MiB in fp32)


# ---------------------------------------------------------------------------------------------
# the scan


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   chunk_size: int | None = None) -> Tensor:
    """Mamba-1 selective scan with the signature of mamba-ssm's ``selective_scan_fn``.

    Parameters
    ----------
    u, delta : (batch, d_inner, L)
    A : (d_inner, d_state), real (Mamba uses ``-exp(A_log)``)
    B, C : (batch, d_state, L), one B and C shared by all channels (not grouped)
    D : (d_inner,) or None, skip connection ``y += D * u``
    z : (batch, d_inner, L) or None, gate ``y *= silu(z)``
    delta_bias : (d_inner,) or None, added to delta before the softplus
    delta_softplus : apply ``softplus`` to delta (threshold 20, as the kernel)
    chunk_size : time steps per chunk; None picks the largest that keeps one work tensor
        at ``CHUNK_ELEMENTS`` elements

    Returns
    -------
    (batch, d_inner, L) in the dtype of ``u``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    if chunk_size is None:
        chunk_size = max(1, min(length, CHUNK_ELEMENTS // max(1, batch * d_inner * d_state)))
    with torch.autocast(u.device.type, enabled=False):
        u_w = u.to(work)
        dt = delta.to(work)
        if delta_bias is not None:
            dt = dt + delta_bias.to(work)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        y = _SelectiveScan.apply(u_w, dt, A.to(work), B.to(work), C.to(work), int(chunk_size))
        if D is not None:
            y = y + u_w * D.to(work)[:, None]
        if z is not None:
            y = y * F.silu(z.to(work))
    return y.to(u.dtype)


def _inclusive_scan_(a: Tensor, x: Tensor, dim: int) -> Tensor:
    """``x_t <- x_t + a_t x_{t-1}`` along ``dim``, in place, by recursive doubling; ``a`` is consumed.

    After the pass with offset ``s``, ``x_t`` holds the recurrence over the last ``2s`` steps
    and ``a_t`` the product of their decays. Right-hand sides are evaluated into fresh
    tensors before they are written, so the overlapping slices never alias.
    """
    length = x.shape[dim]
    offset = 1
    while offset < length:
        x.narrow(dim, offset, length - offset).add_(a.narrow(dim, offset, length - offset) * x.narrow(dim, 0, length - offset))
        if 2 * offset < length:
            a.narrow(dim, offset, length - offset).copy_(a.narrow(dim, offset, length - offset) * a.narrow(dim, 0, length - offset))
        offset *= 2
    return x


class _Chunk:
    """The recurrence over one chunk in two levels: inside blocks of ``BLOCK`` steps, then across blocks.

    Inside each block, all blocks at once: when every block's total log-decay stays within
    ``LOG_RANGE``, the cumulative log-decay ``S_t`` (from the block's start) gives closed forms,
    ``h_t = e^{S_t} sum_{s<=t} e^{-S_s} x_s`` forwards and ``g_t = e^{-S_t} sum_{s>=t} e^{S_s} e_s``
    backwards (a few whole-tensor operations); otherwise (a deep decay would overflow
    ``e^{-S}``) recursive doubling, log2(BLOCK) passes that only multiply decays in (0, 1].
    Across blocks, the state handed from one block to the next follows the same recurrence
    with each block's total decay, scanned by recursive doubling on tensors BLOCK times smaller.
    """

    BLOCK = 16
    LOG_RANGE = {torch.float32: 70.0, torch.float64: 600.0}

    def __init__(self, delta: Tensor, A: Tensor):
        log_decay = delta[..., None] * A[None, :, None, :]  # (b, d, k, n), <= 0
        self.length = log_decay.shape[2]
        self.decay = torch.exp(log_decay)
        cumulative = self._blocks(log_decay, 0.0).cumsum(dim=3)  # (b, d, m, BLOCK, n); padding decays by 1
        self.closed = bool(cumulative.numel()) and -float(cumulative[:, :, :, -1].min()) < self.LOG_RANGE[delta.dtype]
        self.blocked_decay = self._blocks(self.decay, 1.0)
        # decay from each block's start to each step: exp of the cumulative sum, or (stable) the cumulative product
        self.growth = torch.exp(cumulative) if self.closed else self.blocked_decay.cumprod(dim=3)
        self.total = self.growth[:, :, :, -1]  # (b, d, m, n): each block's total decay

    def _blocks(self, x: Tensor, fill: float) -> Tensor:
        """(b, d, k, n) -> (b, d, m, BLOCK, n), padded at the end with ``fill``."""
        pad = (-self.length) % self.BLOCK
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad), value=fill)
        return x.view(x.shape[0], x.shape[1], -1, self.BLOCK, x.shape[3])

    def _unblock(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1, x.shape[4])[:, :, :self.length]

    def states(self, h0: Tensor, x: Tensor) -> Tensor:
        """``h_t = a_t h_{t-1} + x_t`` from ``h_{-1} = h0``: (b, d, k, n)."""
        x = self._blocks(x, 0.0)
        if self.closed:
            local = self.growth * (x / self.growth).cumsum(dim=3)  # each block from a zero state
        else:
            local = _inclusive_scan_(self.blocked_decay.clone(), x, dim=3)
        ends = local[:, :, :, -1].clone()  # (b, d, m, n)
        ends[:, :, 0] += self.total[:, :, 0] * h0
        ends = _inclusive_scan_(self.total.clone(), ends, dim=2)  # the state at each block's end
        entering = torch.cat([h0[:, :, None], ends[:, :, :-1]], dim=2)  # the state before each block
        return self._unblock(local + self.growth * entering[:, :, :, None])

    def adjoint(self, e: Tensor) -> Tensor:
        """``g_t = e_t + a_{t+1} g_{t+1}`` backwards from ``g_{k-1} = e_{k-1}``: (b, d, k, n)."""
        e = self._blocks(e, 0.0)
        if self.closed:
            local = (e * self.growth).flip(3).cumsum(dim=3).flip(3) / self.growth  # each block, nothing after it
            after_step = self.total[:, :, :, None] / self.growth  # decay from after step t to the block's end
        else:
            following = torch.ones_like(self.blocked_decay)  # a_{t+1} inside the block, 1 at its end
            following[:, :, :, :-1] = self.blocked_decay[:, :, :, 1:]
            after_step = following.flip(3).cumprod(dim=3).flip(3)  # decay from after step t to the block's end
            following[:, :, :, -1] = 0.0  # nothing follows a block's last step inside it
            local = _inclusive_scan_(following.flip(3), e.flip(3), dim=3).flip(3)  # flip copies: nothing aliases
        # what block j hands to block j-1, a_{first} g_{first} = a_{first} local_{first} + T_j (what block j+1 hands it)
        handed = self.blocked_decay[:, :, :, 0] * local[:, :, :, 0]  # (b, d, m, n)
        handed = _inclusive_scan_(self.total.flip(2), handed.flip(2), dim=2).flip(2)
        after = torch.cat([handed[:, :, 1:], torch.zeros_like(handed[:, :, :1])], dim=2)  # from the next block
        return self._unblock(local + after_step * after[:, :, :, None])


class _SelectiveScan(torch.autograd.Function):
    """``y_t = <C_t, h_t>`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``; chunked, recomputing backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        batch, d_inner, length = u.shape
        starts = range(0, length, chunk)
        boundary = u.new_empty(len(starts), batch, d_inner, A.shape[1])  # state before each chunk
        y = u.new_empty(batch, d_inner, length)
        h = u.new_zeros(batch, d_inner, A.shape[1])
        for i, t0 in enumerate(starts):
            part = slice(t0, min(length, t0 + chunk))
            boundary[i] = h
            states = _Chunk(delta[:, :, part], A).states(h, _drive(delta[:, :, part], u[:, :, part], B[:, :, part]))
            y[:, :, part] = torch.einsum("bdkn,bnk->bdk", states, C[:, :, part])
            h = states[:, :, -1]
        ctx.save_for_backward(u, delta, A, B, C, boundary)
        ctx.chunk = chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u, delta, A, B, C, boundary = ctx.saved_tensors
        chunk = ctx.chunk
        with torch.autocast(u.device.type, enabled=False):
            dy = dy.to(u.dtype)
            du, ddelta = torch.empty_like(u), torch.empty_like(delta)
            dB, dC = torch.empty_like(B), torch.empty_like(C)
            dA = torch.zeros_like(A)
            carry = torch.zeros_like(boundary[0])  # dL/dh at the last step of the chunk, from later steps
            length = u.shape[2]
            for i in reversed(range(len(boundary))):
                part = slice(i * chunk, min(length, (i + 1) * chunk))
                dt, uu, Bc, Cc, dyc = delta[:, :, part], u[:, :, part], B[:, :, part], C[:, :, part], dy[:, :, part]
                h0 = boundary[i]
                scan = _Chunk(dt, A)
                states = scan.states(h0, _drive(dt, uu, Bc))  # (b, d, k, n)
                dC[:, :, part] = torch.einsum("bdk,bdkn->bnk", dyc, states)
                # adjoint g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1}: the recurrence run backwards in time
                e = dyc[..., None] * Cc.transpose(1, 2)[:, None]  # (b, d, k, n)
                e[:, :, -1] += carry
                g = scan.adjoint(e)
                # h_t = a_t h_{t-1} + delta_t u_t B_t, with a_t = exp(delta_t A)
                previous = torch.cat([h0[:, :, None], states[:, :, :-1]], dim=2)  # h_{t-1}
                dlog = g * previous * scan.decay  # dL/d(delta_t A), (b, d, k, n)
                gB = torch.einsum("bdkn,bnk->bdk", g, Bc)  # sum_n g_t B_t
                dA += torch.einsum("bdkn,bdk->dn", dlog, dt)
                ddelta[:, :, part] = torch.einsum("bdkn,dn->bdk", dlog, A) + gB * uu
                du[:, :, part] = gB * dt
                dB[:, :, part] = torch.einsum("bdkn,bdk->bnk", g, dt * uu)
                carry = scan.decay[:, :, 0] * g[:, :, 0]
        return du, ddelta, dA, dB, dC, None


def _drive(delta: Tensor, u: Tensor, B: Tensor) -> Tensor:
    """``x_t = delta_t B_t u_t``: (b, d, k) and (b, n, k) -> (b, d, k, n)."""
    return (delta * u)[..., None] * B.transpose(1, 2)[:, None]


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.ndim != 3:
        raise ValueError(f"'u' must have shape (batch, d_inner, L); got {tuple(u.shape)}")
    batch, d_inner, length = u.shape
    if A.ndim != 2 or A.shape[0] != d_inner or A.is_complex():
        raise ValueError(f"'A' must be real with shape (d_inner={d_inner}, d_state); got {tuple(A.shape)}")
    expected = {"delta": (delta, (batch, d_inner, length)), "B": (B, (batch, A.shape[1], length)),
                "C": (C, (batch, A.shape[1], length)), "z": (z, (batch, d_inner, length)),
                "D": (D, (d_inner,)), "delta_bias": (delta_bias, (d_inner,))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"'{name}' must have shape {shape}; got {tuple(tensor.shape)} "
                             "(grouped or time-invariant B/C are not supported)")


# ---------------------------------------------------------------------------------------------
# the Mamba block


class Mamba(nn.Module):
    """Mamba-1 block in plain PyTorch: in_proj -> causal depthwise conv -> SiLU -> selective scan -> out_proj.

    Parameters, buffers and their initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``
    (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so a
    state dict trained with mamba-ssm's kernels loads here and the other way round.
    ``A_log`` and ``D`` are kept in fp32 and carry ``_no_weight_decay`` as in mamba-ssm.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 chunk_size: int | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        # dt_proj: weights uniform in +-dt_rank^-0.5; bias the inverse softplus of a step size
        # drawn log-uniformly in [dt_min, dt_max], so softplus(bias) starts there
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real: A = -(1, 2, ..., d_state) for every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True

    def forward(self, hidden_states: Tensor) -> Tensor:
        """``(batch, L, d_model)`` -> ``(batch, L, d_model)``."""
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)  # (b, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :length])  # causal: the padding's last d_conv-1 outputs dropped
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2*d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L); the bias goes in the scan
        A = -torch.exp(_fp32_or_wider(self.A_log))  # (d_inner, d_state), fp32 as mamba-ssm (fp64 kept)
        y = selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), _fp32_or_wider(self.D), z=z,
                           delta_bias=_fp32_or_wider(self.dt_proj.bias), delta_softplus=True,
                           chunk_size=self.chunk_size)  # (b, d_inner, L)
        return self.out_proj(y.transpose(1, 2))  # (b, L, d_model)


def _fp32_or_wider(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class BiMamba(nn.Module):
    """Bidirectional Mamba: one block reads the sequence forwards, a second reads it reversed; outputs summed."""

    def __init__(self, d_model: int, backend: str | None = None, **mamba_kwargs):
        super().__init__()
        self.fwd = create_mamba(d_model, backend=backend, **mamba_kwargs)
        self.bwd = create_mamba(d_model, backend=backend, **mamba_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, L, d_model)`` -> ``(batch, L, d_model)``."""
        return self.fwd(x) + self.bwd(x.flip(1)).flip(1)


# ---------------------------------------------------------------------------------------------
# dispatch


@functools.cache
def mamba_ssm_status() -> str | None:
    """Why mamba-ssm's kernels cannot run here, or None when they can (CUDA and an importable build)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import mamba_ssm.modules.mamba_simple  # noqa: F401  (needs the compiled selective_scan_cuda)
    except Exception as exc:  # ImportError, or an OSError / RuntimeError from a broken build
        return f"mamba_ssm is not importable ({type(exc).__name__}: {exc})"
    return None


def resolve_backend(backend: str | None = None) -> str:
    """``reference`` or ``mamba_ssm`` for a request (None reads ``$FMRIFLOW_MAMBA_BACKEND``, default ``auto``).

    ``auto`` picks ``mamba_ssm`` when its kernels can run; asking for ``mamba_ssm`` where
    they cannot is an error that says why.
    """
    requested = backend if backend is not None else os.environ.get(ENV_BACKEND, "auto")
    if requested not in BACKENDS:
        raise ValueError(f"'backend' must be one of {BACKENDS}; {requested!r} was provided")
    problem = mamba_ssm_status() if requested != "reference" else None
    if requested == "auto":
        return "reference" if problem else "mamba_ssm"
    if requested == "mamba_ssm" and problem:
        raise RuntimeError(f"the mamba_ssm backend was requested but cannot run: {problem}")
    return requested


def create_mamba(d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 backend: str | None = None, **kwargs) -> nn.Module:
    """A Mamba-1 block: mamba-ssm's (CUDA kernels) or ours (plain PyTorch), same parameters.

    The returned module carries ``fmriflow_backend`` (``reference``, ``mamba_ssm`` or
    ``mamba_ssm+causal_conv1d``: mamba-ssm takes its fused path only with causal-conv1d).
    mamba-ssm's block runs only on CUDA tensors.
    """
    name = resolve_backend(backend)
    if name == "mamba_ssm":
        from mamba_ssm.modules import mamba_simple

        kwargs.pop("chunk_size", None)
        module = mamba_simple.Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, **kwargs)
        if mamba_simple.causal_conv1d_fn is not None:
            name = "mamba_ssm+causal_conv1d"
    else:
        module = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, **kwargs)
    module.fmriflow_backend = name
    return module


def backend_of(model: nn.Module) -> str | None:
    """The Mamba path(s) a model's blocks take, e.g. ``reference``; None when it has no Mamba block."""
    names = sorted({m.fmriflow_backend for m in model.modules() if hasattr(m, "fmriflow_backend")})
    return ",".join(names) or None
