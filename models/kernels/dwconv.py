"""Depthwise KxK NHWC convolution in Triton, optionally fused with gnConv's first gating multiply.

Forward: one program per (tile of flattened b, h, w positions, block of channels) accumulates the K*K taps in fp32
from the input read in place (any strides: the conv input is a channel slice of the proj_in output, which cuDNN
first copies), adds the bias, stores ``q`` and, with a gate, ``gate * q[..., :D0]``.
Backward, input: the same loop over ``gq`` shifted the other way (a transposed conv), where
``gq = grad_q + [grad_x0 * gate, 0]`` is formed on the fly. Backward, weight and bias: the
K*K per-channel reductions ``sum gq * x_shifted`` in fp32 (a fixed number of programs, each striding over the
position tiles; their partial sums are added by torch, so the result is deterministic).

The scale s of gnConv is not a kernel argument: it is folded into ``weight`` and ``bias`` by the caller
(``conv.weight * s``), so autograd carries it. All arithmetic is fp32 (loads are upcast), outputs are rounded to
the output dtype once; the gated product is taken on the rounded ``q``, as torch computes ``gate * q``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _positions(pid, BP: tl.constexpr, H, W, NPOS):
    """A tile of BP flattened (b, h, w) positions, int64."""
    p = (pid * BP + tl.arange(0, BP)).to(tl.int64)
    w = p % W
    t = p // W
    return p, t // H, t % H, w, p < NPOS


@triton.jit
def _dw_fwd_kernel(
        X, sxb, sxh, sxw, sxc,
        WT, BIAS,
        Y,
        P, spb, sph, spw, spc,
        X0,
        H, W, C, D0, NPOS,
        KS: tl.constexpr, HAS_BIAS: tl.constexpr, GATE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    p, b, h, w, mp = _positions(tl.program_id(0), BP, H, W, NPOS)
    offs_c = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)
    mc = offs_c < C
    PAD: tl.constexpr = KS // 2
    xbase = X + b[:, None] * sxb + offs_c[None, :] * sxc
    acc = tl.zeros((BP, BC), dtype=tl.float32)
    for kh in tl.static_range(KS):
        ih = h + (kh - PAD)
        mh = mp & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KS):
            iw = w + (kw - PAD)
            m = (mh & (iw >= 0) & (iw < W))[:, None] & mc[None, :]
            x = tl.load(xbase + (ih * sxh + iw * sxw)[:, None], mask=m, other=0.0)
            wv = tl.load(WT + (kh * KS + kw) * C + offs_c, mask=mc, other=0.0)
            acc += x.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_c, mask=mc, other=0.0).to(tl.float32)[None, :]
    y = acc.to(Y.dtype.element_ty)
    tl.store(Y + p[:, None] * C + offs_c[None, :], y, mask=mp[:, None] & mc[None, :])   # Y: contiguous NHWC
    if GATE:
        mg = mp[:, None] & (offs_c < D0)[None, :]
        g = tl.load(P + (b * spb + h * sph + w * spw)[:, None] + offs_c[None, :] * spc, mask=mg, other=0.0)
        x0 = g.to(tl.float32) * y.to(tl.float32)
        tl.store(X0 + p[:, None] * D0 + offs_c[None, :], x0.to(X0.dtype.element_ty), mask=mg)


@triton.jit
def _load_gq(G, sgb, sgh, sgw, sgc, GX0, sxb, sxh, sxw, sxc, P, spb, sph, spw, spc,
             b, h, w, offs_c, m, D0, GATE: tl.constexpr):
    """gq at positions (b, h, w) (vectors), fp32: grad_q, plus grad_x0 * gate on the first D0 channels."""
    g = tl.load(G + (b * sgb + h * sgh + w * sgw)[:, None] + offs_c[None, :] * sgc, mask=m, other=0.0)
    g = g.to(tl.float32)
    if GATE:
        mg = m & (offs_c < D0)[None, :]
        gx0 = tl.load(GX0 + (b * sxb + h * sxh + w * sxw)[:, None] + offs_c[None, :] * sxc, mask=mg, other=0.0)
        p = tl.load(P + (b * spb + h * sph + w * spw)[:, None] + offs_c[None, :] * spc, mask=mg, other=0.0)
        g += gx0.to(tl.float32) * p.to(tl.float32)
    return g


@triton.jit
def _dw_bwd_input_kernel(
        G, sgb, sgh, sgw, sgc,
        GX0, sxb, sxh, sxw, sxc,
        P, spb, sph, spw, spc,
        WT, DX,
        H, W, C, D0, NPOS,
        KS: tl.constexpr, GATE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    p, b, h, w, mp = _positions(tl.program_id(0), BP, H, W, NPOS)
    offs_c = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)
    mc = offs_c < C
    PAD: tl.constexpr = KS // 2
    acc = tl.zeros((BP, BC), dtype=tl.float32)
    for kh in tl.static_range(KS):
        oh = h + (PAD - kh)                               # the output row that read row h through tap kh
        mh = mp & (oh >= 0) & (oh < H)
        for kw in tl.static_range(KS):
            ow = w + (PAD - kw)
            m = (mh & (ow >= 0) & (ow < W))[:, None] & mc[None, :]
            g = _load_gq(G, sgb, sgh, sgw, sgc, GX0, sxb, sxh, sxw, sxc, P, spb, sph, spw, spc,
                         b, oh, ow, offs_c, m, D0, GATE)
            wv = tl.load(WT + (kh * KS + kw) * C + offs_c, mask=mc, other=0.0)
            acc += g * wv.to(tl.float32)[None, :]
    tl.store(DX + p[:, None] * C + offs_c[None, :], acc.to(DX.dtype.element_ty), mask=mp[:, None] & mc[None, :])


@triton.jit
def _dw_bwd_weight_kernel(
        G, sgb, sgh, sgw, sgc,
        GX0, sxb, sxh, sxw, sxc,
        P, spb, sph, spw, spc,
        X, sib, sih, siw, sic,
        PW, PB,
        H, W, C, D0, NPOS, NTILES,
        KS: tl.constexpr, GATE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """Program (i, j) sums over position tiles i, i + P, i + 2P, ... (P programs along axis 0) for channel block j
    and writes its K*K + 1 partial sums (taps, then bias) to PW[i] and PB[i]."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_c = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)
    mc = offs_c < C
    PAD: tl.constexpr = KS // 2
    for tap in tl.static_range(KS * KS):
        acc = tl.zeros((BC,), dtype=tl.float32)
        bacc = tl.zeros((BC,), dtype=tl.float32)
        for t in range(pid, NTILES, nprog):
            p, b, h, w, mp = _positions(t, BP, H, W, NPOS)
            g = _load_gq(G, sgb, sgh, sgw, sgc, GX0, sxb, sxh, sxw, sxc, P, spb, sph, spw, spc,
                         b, h, w, offs_c, mp[:, None] & mc[None, :], D0, GATE)
            ih = h + (tap // KS - PAD)
            iw = w + (tap % KS - PAD)
            m = (mp & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & mc[None, :]
            x = tl.load(X + (b * sib + ih * sih + iw * siw)[:, None] + offs_c[None, :] * sic, mask=m, other=0.0)
            acc += tl.sum(g * x.to(tl.float32), axis=0)
            if tap == 0:
                bacc += tl.sum(g, axis=0)
        tl.store(PW + (pid * (KS * KS) + tap) * C + offs_c, acc, mask=mc)
        if tap == 0:
            tl.store(PB + pid * C + offs_c, bacc, mask=mc)


def _blocks(npos: int, c: int):
    """(positions, channels) per tile: 64 x up to 64 (fp32 accumulators: 32 registers a thread at 4 warps)."""
    return min(64, triton.next_power_of_2(npos)), min(64, triton.next_power_of_2(c))


_WEIGHT_GRAD_PROGRAMS = 256  # position-tile programs of the weight gradient (its partial sums: 256 x (K*K+1) x C)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if device_type in ('cpu', 'cuda') and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


_DUMMY = {}


def _dummy(dev) -> torch.Tensor:
    """A 1-element tensor for pointer arguments a specialisation never reads."""
    t = _DUMMY.get(dev)
    if t is None:
        t = _DUMMY[dev] = torch.zeros(1, device=dev)
    return t


class DwConvNHWC(torch.autograd.Function):
    """``q = dwconv(x) + bias`` (NHWC, depthwise, 'same' padding) and optionally ``x0 = gate * q[..., :D0]``.

    Inputs: x (B, H, W, C) of any strides, gate (B, H, W, D0) or None, weight (C, 1, K, K), bias (C,) or None.
    Returns (x0 or None, q). Output dtype: the autocast dtype when autocast is on (as ``F.conv2d``), else x's.
    """

    @staticmethod
    def forward(ctx, x, gate, weight, bias):
        bsz, h, w, c = x.shape
        ks = weight.shape[-1]
        if weight.shape != (c, 1, ks, ks) or ks % 2 == 0:
            raise ValueError(f'depthwise weight of shape (C, 1, K, K), K odd, expected (got {tuple(weight.shape)})')
        out_dtype = _autocast_dtype(x.device.type) or x.dtype
        wt = weight.detach().reshape(c, ks * ks).t().contiguous()          # (K*K, C): coalesced per tap
        y = torch.empty((bsz, h, w, c), device=x.device, dtype=out_dtype)
        d0 = 0 if gate is None else gate.shape[-1]
        if gate is not None:
            x0 = torch.empty((bsz, h, w, d0), device=x.device, dtype=torch.promote_types(gate.dtype, out_dtype))
        dummy = _dummy(x.device)
        p = gate if gate is not None else dummy
        ps = gate.stride() if gate is not None else (0, 0, 0, 0)
        npos = bsz * h * w
        bp, bc = _blocks(npos, c)
        _dw_fwd_kernel[(triton.cdiv(npos, bp), triton.cdiv(c, bc))](
            x, *x.stride(), wt, bias.detach() if bias is not None else dummy, y, p, *ps,
            x0 if gate is not None else dummy, h, w, c, d0, npos,
            KS=ks, HAS_BIAS=bias is not None, GATE=gate is not None, BP=bp, BC=bc)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.gated = gate is not None
        ctx.save_for_backward(x, gate, weight, y if gate is not None else None)
        return (x0 if gate is not None else None), y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_x0, g_y):
        x, gate, weight, y = ctx.saved_tensors
        bsz, h, w, c = x.shape
        ks = weight.shape[-1]
        gated = ctx.gated and g_x0 is not None
        d0 = gate.shape[-1] if ctx.gated else 0
        if g_y is None:
            g_y = torch.zeros_like(y if y is not None else x)
        dummy = _dummy(x.device)
        gx0 = g_x0 if gated else dummy
        gxs = g_x0.stride() if gated else (0, 0, 0, 0)
        p = gate if gated else dummy
        ps = gate.stride() if gated else (0, 0, 0, 0)
        wt = weight.detach().reshape(c, ks * ks).t().contiguous()
        npos = bsz * h * w
        bp, bc = _blocks(npos, c)
        ntiles = triton.cdiv(npos, bp)
        grad_x = grad_w = grad_b = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty((bsz, h, w, c), device=x.device, dtype=x.dtype)
            _dw_bwd_input_kernel[(ntiles, triton.cdiv(c, bc))](
                g_y, *g_y.stride(), gx0, *gxs, p, *ps, wt, grad_x, h, w, c, d0, npos,
                KS=ks, GATE=gated, BP=bp, BC=bc)
        if ctx.needs_input_grad[2] or (ctx.has_bias and ctx.needs_input_grad[3]):
            nprog = min(ntiles, _WEIGHT_GRAD_PROGRAMS)
            pw = torch.empty((nprog, ks * ks, c), device=x.device, dtype=torch.float32)
            pb = torch.empty((nprog, c), device=x.device, dtype=torch.float32)
            _dw_bwd_weight_kernel[(nprog, triton.cdiv(c, bc))](
                g_y, *g_y.stride(), gx0, *gxs, p, *ps, x, *x.stride(), pw, pb, h, w, c, d0, npos, ntiles,
                KS=ks, GATE=gated, BP=bp, BC=bc)
            grad_w = pw.sum(0).t().reshape(c, 1, ks, ks).to(weight.dtype)
            if ctx.has_bias:
                grad_b = pb.sum(0).to(ctx.bias_dtype)
        if gated and ctx.needs_input_grad[1]:
            grad_gate = (g_x0 * y[..., :d0]).to(gate.dtype)
        return grad_x, grad_gate, grad_w, grad_b
