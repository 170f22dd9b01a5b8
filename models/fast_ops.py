"""Opt-in fast paths for the HorNet block (issue 10). None of them is a default: none has been measured on a GPU.

* :func:`global_filter_kron` (``gf_impl='kron'``): the Global Filter ``irfft2(rfft2(x) * w)`` as ONE real GEMM
  with the precomputed (H*W, 2*H*(W//2+1)) matrix of the orthonormal 2-D real DFT (Kronecker product of the
  per-axis DFTs, real and imaginary parts interleaved), the complex filter as real arithmetic, and ONE GEMM
  with the (2*H*(W//2+1), H*W) matrix of the inverse (C2R) transform. It works on the channels-last tensor the
  block already has, so no layout copy is made.
* :class:`GatingChain` (``GnConv.fused_gating``): the gnConv gating chain after the depthwise op,
  ``x0 = pwa * q0; x_{k+1} = (W_k x_k + b_k) * q_{k+1}; out = W_o x + b_o``, as one autograd Function that saves
  only the GEMM outputs (plus its inputs) and recomputes the gating products in backward: the memory of
  selective checkpointing without its per-op dispatch.

* :func:`gnconv_tail_triton` (``GnConv.triton_dwconv``): the 7x7 depthwise conv of the channel slice (no copy),
  scale, bias and the first gating multiply in one Triton kernel (``models/kernels``), then the gating chain.

Everything but the Triton kernels is plain torch (any device, any dtype, autocast-aware). Tests against the
reference formulation: ``tests/test_fast_ops.py``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['global_filter_kron', 'kron_dft_mats', 'gating_chain', 'GatingChain', 'gnconv_tail_triton']


# ------------------------------------------------------------------------------------------ Global Filter
def _axis_dft(n: int, half: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 forward DFT matrices along one axis: hornet.py's ``_dft_mats`` (real tensors only, so it compiles)."""
    from .hornet import _dft_mats  # hornet imports this module
    return _dft_mats(n, half, torch.device('cpu'), torch.float64)


def _axis_irdft(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 (n x n//2+1) matrices of the orthonormal C2R inverse (``irfft``): hornet.py's ``_irdft_mats``."""
    from .hornet import _irdft_mats
    return _irdft_mats(n, torch.device('cpu'), torch.float64)


def kron_dft_mats(h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 matrices of ``rfft2(norm='ortho')`` and ``irfft2(s=(h, w), norm='ortho')`` on flattened maps.

    Returns ``fwd`` (h*w, 2*K) and ``inv`` (2*K, h*w), K = h*(w//2+1), columns/rows ordered (k_h, k_w, re/im),
    so that for a real map ``x`` (flattened row-major), ``x @ fwd`` is ``view_as_real(rfft2(x))`` flattened and
    ``z @ inv`` is ``irfft2(view_as_complex(z))`` flattened.

    ``irfft2`` = inverse c2c DFT along H, then the C2R transform along W; so the inverse matrix is the Kronecker
    product of conj(F_h) with the C2R matrices of :func:`_axis_irdft` (Hermitian weights included).
    """
    fh_re, fh_im = _axis_dft(h, half=False)                         # (h, h)
    fw_re, fw_im = _axis_dft(w, half=True)                          # (w2, w)
    # f = kron(fh, fw) (K x h*w, complex): X = f @ x
    f_re = torch.kron(fh_re, fw_re) - torch.kron(fh_im, fw_im)
    f_im = torch.kron(fh_re, fw_im) + torch.kron(fh_im, fw_re)
    fwd = torch.stack((f_re, f_im), dim=1).reshape(-1, h * w).t().contiguous()       # (h*w, 2K)
    gh_re, gh_im = fh_re, -fh_im                                    # orthonormal inverse along H: conj (symmetric)
    iw_re, iw_im = _axis_irdft(w)                                   # (w, w2) each
    # y = sum_k [Re(D) iw_re + Im(D) iw_im] with D = gh @ Z along H:
    #   Re(D) = gh.re Z.re - gh.im Z.im,   Im(D) = gh.re Z.im + gh.im Z.re
    inv_re = torch.kron(gh_re, iw_re) + torch.kron(gh_im, iw_im)    # (h*w, K), multiplies Z.re
    inv_im = torch.kron(gh_re, iw_im) - torch.kron(gh_im, iw_re)    # (h*w, K), multiplies Z.im
    inv = torch.stack((inv_re, inv_im), dim=-1).reshape(h * w, -1).t().contiguous()  # (2K, h*w)
    return fwd, inv


_KRON_CACHE: Dict[Tuple[int, int, torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}


def _kron_mats(h: int, w: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The matrices in ``like``'s device and dtype; cached for plain eager tensors (built once per size).

    Not cached under torch.compile (built in-graph, constant-folded), for fake/meta tensors (FLOP and memory
    counters), or for tensor subclasses: a cached real tensor must never meet a fake one.
    """
    cacheable = (type(like) is torch.Tensor and like.device.type != 'meta'
                 and not torch.compiler.is_compiling())
    if not cacheable:
        fwd, inv = kron_dft_mats(h, w)
        return fwd.to(like.device, like.dtype), inv.to(like.device, like.dtype)
    key = (h, w, like.device, like.dtype)
    mats = _KRON_CACHE.get(key)
    if mats is None:
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, even if first built in inference
            fwd, inv = kron_dft_mats(h, w)
            mats = (fwd.to(like.device, like.dtype), inv.to(like.device, like.dtype))
        _KRON_CACHE[key] = mats
    return mats


def global_filter_kron(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Same function as ``global_filter_fft(x, weight)``: (B, C, H, W) in and out, weight (C, H, W//2+1, 2).

    Two GEMMs over the flattened map (contraction length H*W and 2*H*(W//2+1)) around a complex multiply done
    in real arithmetic. Computed in the GEMM dtype: x's, or the autocast dtype (bf16 GEMMs and filter product
    under bf16 autocast, like ``gf_impl='matmul'``; the reference FFT stays fp32).
    On the channels-last view the block passes in, the first GEMM reads the map transposed in place and the
    second writes channels-last, so neither side makes a layout copy.
    """
    b, c, h, w = x.shape
    fwd, inv = _kron_mats(h, w, x)
    k2 = fwd.shape[1]
    xt = x.reshape(b, c, h * w)                       # a strided view for channels-last input
    y = torch.matmul(xt, fwd)                         # (B, C, 2K), (k, re/im) interleaved
    y = y.view(b, c, k2 // 2, 2)
    dt = y.dtype                                      # the GEMM's dtype (bf16 under bf16 autocast)
    wr, wi = weight[..., 0].reshape(c, -1).to(dt), weight[..., 1].reshape(c, -1).to(dt)   # (C, K)
    # (yr + i yi)(wr + i wi) = (yr wr - yi wi) + i (yr wi + yi wr) = y * [wr, wr] + flip(y) * [-wi, wi]
    wa = torch.stack((wr, wr), dim=-1)
    wb = torch.stack((-wi, wi), dim=-1)
    z = torch.addcmul(y * wa, y.flip(-1), wb).view(b, c, k2)
    out = torch.matmul(inv.t(), z.transpose(1, 2))   # (B, H*W, C): channels-last
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ gating chain
def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast gives a GEMM on this device right now, or None when autocast is off."""
    if device_type in ('cpu', 'cuda', 'xpu', 'mps') and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class GatingChain(torch.autograd.Function):
    """``x0 = pwa * q0; x_{k+1} = (x_k W_k^T + b_k) * q_{k+1}; out = x W_o^T + b_o`` with ``q = split(dw, dims)``.

    Saves only ``pwa``, ``dw`` (both kept alive by their producers' backward anyway: proj_in's output holds the
    depthwise op's input) and the GEMM outputs ``y_k = x_k W_k^T + b_k``; the gating products ``x_k`` are
    recomputed in backward (one multiply each). The reference autograd graph also stores every ``x_k``: about
    ``sum(dims)`` channels per position less (the saving selective checkpointing gives, without a recompute pass).

    Forward runs the same torch ops as ``GnConv.forward_nhwc`` (so the same values, autocast included); backward
    mirrors autograd's dtype handling: GEMMs in the autocast dtype seen in forward, each gradient returned in its
    input's dtype. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, pwa: torch.Tensor, dw: torch.Tensor, dims: Tuple[int, ...], *params: torch.Tensor):
        ws, bs = params[0::2], params[1::2]           # pws[0..n-2] then proj_out, as (weight 2-D, bias)
        q = torch.split(dw, list(dims), dim=-1)
        x = pwa * q[0]
        ys: List[torch.Tensor] = []
        for i in range(len(dims) - 1):
            y = torch.nn.functional.linear(x, ws[i], bs[i])
            ys.append(y)
            x = y * q[i + 1]
        out = torch.nn.functional.linear(x, ws[-1], bs[-1])
        ctx.dims = tuple(dims)
        ctx.cdt = _autocast_dtype(pwa.device.type)
        ctx.bias_dtypes = [b.dtype for b in bs]
        ctx.save_for_backward(pwa, dw, *ys, *ws)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        dims, cdt = ctx.dims, ctx.cdt
        n = len(dims)
        saved = ctx.saved_tensors
        pwa, dw = saved[0], saved[1]
        ys, ws = saved[2:2 + n - 1], saved[2 + n - 1:]
        q = torch.split(dw, list(dims), dim=-1)
        xs = [pwa * q[0]] + [ys[i] * q[i + 1] for i in range(n - 1)]   # the gating products, recomputed

        def gemm_grads(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b_dtype: torch.dtype):
            """grad of F.linear(x, w, b) (under autocast: of linear(x.to(cdt), w.to(cdt), b.to(cdt)))."""
            xc = x if cdt is None else x.to(cdt)
            wc = w if cdt is None else w.to(cdt)
            g2 = g.reshape(-1, g.shape[-1])
            gw = g2.t().mm(xc.reshape(-1, xc.shape[-1])).to(w.dtype)
            gb = g2.sum(0).to(b_dtype)
            gx = g.matmul(wc).to(x.dtype)
            return gx, gw, gb

        grads_w: List[Optional[torch.Tensor]] = [None] * n
        grads_b: List[Optional[torch.Tensor]] = [None] * n
        gx, grads_w[n - 1], grads_b[n - 1] = gemm_grads(g, xs[n - 1], ws[n - 1], ctx.bias_dtypes[n - 1])
        gq: List[torch.Tensor] = [g] * n
        for i in range(n - 2, -1, -1):               # x_{i+1} = y_i * q_{i+1}
            gq[i + 1] = (gx * ys[i]).to(dw.dtype)
            gy = (gx * q[i + 1]).to(ys[i].dtype)
            gx, grads_w[i], grads_b[i] = gemm_grads(gy, xs[i], ws[i], ctx.bias_dtypes[i])
        gq[0] = (gx * pwa).to(dw.dtype)              # x_0 = pwa * q_0
        gpwa = (gx * q[0]).to(pwa.dtype)
        gdw = torch.cat(gq, dim=-1)
        params = [t for pair in zip(grads_w, grads_b) for t in pair]
        return (gpwa, gdw, None, *params)


def gating_chain(pwa: torch.Tensor, dw: torch.Tensor, dims, pws, proj_out) -> torch.Tensor:
    """:class:`GatingChain` on a GnConv's modules (``pws``: its 1x1 convs, ``proj_out``: the output 1x1 conv)."""
    params: List[torch.Tensor] = []
    for conv in list(pws) + [proj_out]:
        params += [conv.weight.flatten(1), conv.bias]
    return GatingChain.apply(pwa, dw, tuple(dims), *params)


# ------------------------------------------------------------------------------------------ Triton depthwise conv
_warned_fallback = False


def gnconv_tail_triton(gn, pwa: torch.Tensor, abc: torch.Tensor) -> torch.Tensor:
    """The rest of ``GnConv.forward_nhwc`` (7x7 variant) after proj_in, with the depthwise conv, its scale and bias
    and the first gating multiply in one Triton kernel (``models.kernels.dwconv_gate_nhwc``). With
    ``gn.fused_gating`` (and autograd on) the kernel computes the conv only and :class:`GatingChain` the rest.

    Where the kernels cannot run (CPU without ``TRITON_INTERPRET=1``, or no triton) this is the torch path,
    with a one-time warning.
    """
    from . import kernels
    conv = gn.dwconv
    weight, bias = conv.weight * gn.scale, conv.bias * gn.scale
    x: Optional[torch.Tensor] = None
    if not kernels.can_run_on(abc):
        global _warned_fallback
        if not _warned_fallback:
            import warnings
            reason = kernels.triton_available() or f'{abc.device.type} tensors need CUDA (or TRITON_INTERPRET=1)'
            warnings.warn(f'triton depthwise conv unavailable ({reason}); using torch\'s conv', RuntimeWarning)
            _warned_fallback = True
        dw = F.conv2d(abc.permute(0, 3, 1, 2), weight, bias, conv.stride, conv.padding, conv.dilation,
                      conv.groups).permute(0, 2, 3, 1)
    elif gn.fused_gating and torch.is_grad_enabled():
        return gating_chain(pwa, kernels.dwconv_nhwc(abc, weight, bias), gn.dims, gn.pws, gn.proj_out)
    else:
        x, dw = kernels.dwconv_gate_nhwc(abc, pwa, weight, bias)
    if gn.fused_gating and torch.is_grad_enabled():
        return gating_chain(pwa, dw, gn.dims, gn.pws, gn.proj_out)
    q = torch.split(dw, gn.dims, dim=-1)
    if x is None:
        x = pwa * q[0]
    for i, pw in enumerate(gn.pws):
        x = F.linear(x, pw.weight.flatten(1), pw.bias) * q[i + 1]
    return F.linear(x, gn.proj_out.weight.flatten(1), gn.proj_out.bias)
