"""The opt-in speed levers of the HorNet block, behind one switch: :func:`enable`. None is a default (none has
been measured on a GPU); each computes the same function as the default path, with the same gradients.

* ``gf_impl``: the Global Filter's implementation, ``'fft'`` (default), ``'matmul'`` or ``'kron'``
  (``models/global_filter.py``). Also a constructor argument: ``timm.create_model(name, gf_impl='matmul')``.
* ``fused_gating``: the gnConv gating chain after the depthwise op,
  ``x0 = pwa * q0; x_{k+1} = (W_k x_k + b_k) * q_{k+1}; out = W_o x + b_o``, as one autograd Function
  (:class:`GatingChain`) that saves only the GEMM outputs (plus its inputs) and recomputes the gating products in
  backward: the memory of selective checkpointing without its per-op dispatch.
* ``triton_dwconv``: the 7x7 depthwise conv of the channel slice (no copy), its scale and bias and the first gating
  multiply in one Triton kernel (``models/kernels``), forward and backward; CUDA only (or the CPU under
  ``TRITON_INTERPRET=1``), torch's conv elsewhere with a one-time warning.

Everything but the Triton kernels is plain torch (any device, any dtype, autocast-aware). Tests against the
reference formulation: ``tests/test_fast_ops.py``. Selective activation checkpointing is a memory mode, not a
lever: ``set_selective_checkpointing`` beside timm's ``set_grad_checkpointing`` on the model.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .global_filter import check_gf_impl

__all__ = ['enable', 'gnconv_tail', 'gating_chain', 'GatingChain']


def enable(model: nn.Module, *, gf_impl: Optional[str] = None, fused_gating: Optional[bool] = None,
           triton_dwconv: Optional[bool] = None) -> Dict[str, int]:
    """Set the speed levers of every block of ``model`` that takes them; a lever left None keeps its setting.

    The blocks carry their lever as an attribute of the same name (HorNet's ``GnConv``: ``fused_gating``, and
    ``triton_dwconv`` where its depthwise op is the 7x7 conv; ``GlobalLocalFilter``: ``gf_impl``), so any model
    can be passed: one without such blocks (a timm model) is left as it is.

    Returns how many blocks each given lever reached (0: none takes it, e.g. ``triton_dwconv`` on a model whose
    blocks are all Global Filters). Raises ValueError for an unknown ``gf_impl``, and RuntimeError for
    ``triton_dwconv=True`` where triton cannot be imported.
    """
    wanted = dict(gf_impl=gf_impl, fused_gating=fused_gating, triton_dwconv=triton_dwconv)
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if gf_impl is not None:
        check_gf_impl(gf_impl)
    takers: Dict[str, List[nn.Module]] = {lever: [] for lever in wanted}
    for m in model.modules():
        for lever in wanted:
            takes = lever != 'triton_dwconv' or isinstance(getattr(m, 'dwconv', None), nn.Conv2d)  # 7x7 only
            if hasattr(m, lever) and takes:
                takers[lever].append(m)
    if triton_dwconv and takers['triton_dwconv']:
        reason = kernels.triton_available()
        if reason is not None:
            raise RuntimeError(f'triton_dwconv needs triton: {reason}')
    for lever, modules in takers.items():
        for m in modules:
            setattr(m, lever, wanted[lever])
    return {lever: len(modules) for lever, modules in takers.items()}


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


# ------------------------------------------------------------------------------------------ the gnConv tail
_warned_fallback = False


def gnconv_tail(gn: nn.Module, pwa: torch.Tensor, abc: torch.Tensor) -> torch.Tensor:
    """The rest of ``GnConv.forward_nhwc`` after proj_in, with the levers ``gn`` has on.

    ``triton_dwconv``: the depthwise conv, its scale and bias and the first gating multiply in one Triton kernel
    (``models.kernels.dwconv_gate_nhwc``); where the kernels cannot run (CPU without ``TRITON_INTERPRET=1``, or no
    triton) torch's conv, with a one-time warning. ``fused_gating`` (with autograd on): the depthwise op computes
    the conv only and :class:`GatingChain` the rest.
    """
    fused = gn.fused_gating and torch.is_grad_enabled()
    x: Optional[torch.Tensor] = None
    if gn.triton_dwconv:
        conv = gn.dwconv
        weight, bias = conv.weight * gn.scale, conv.bias * gn.scale
        if not kernels.can_run_on(abc):
            global _warned_fallback
            if not _warned_fallback:
                reason = kernels.triton_available() or f'{abc.device.type} tensors need CUDA (or TRITON_INTERPRET=1)'
                warnings.warn(f'triton depthwise conv unavailable ({reason}); using torch\'s conv', RuntimeWarning)
                _warned_fallback = True
            dw = F.conv2d(abc.permute(0, 3, 1, 2), weight, bias, conv.stride, conv.padding, conv.dilation,
                          conv.groups).permute(0, 2, 3, 1)
        elif fused:
            dw = kernels.dwconv_nhwc(abc, weight, bias)
        else:
            x, dw = kernels.dwconv_gate_nhwc(abc, pwa, weight, bias)
    else:
        dw = gn.dwconv.forward_nhwc(abc, gn.scale)
    if fused:
        return gating_chain(pwa, dw, gn.dims, gn.pws, gn.proj_out)
    q = torch.split(dw, gn.dims, dim=-1)
    if x is None:
        x = pwa * q[0]
    for i, pw in enumerate(gn.pws):
        x = F.linear(x, pw.weight.flatten(1), pw.bias) * q[i + 1]
    return F.linear(x, gn.proj_out.weight.flatten(1), gn.proj_out.bias)
