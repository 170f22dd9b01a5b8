"""Checks of the Triton kernels (models/kernels) against torch, run by tests/test_fast_ops.py in a subprocess with
``TRITON_INTERPRET=1`` set before triton is imported (so they run on CPU tensors, no GPU needed).

``python -m tests.triton_checks NAME`` exits 0 when the check passes, 77 when triton cannot be imported (the
test then skips, printing why), anything else on failure. With ``TRITON_CHECK_DEVICE=cuda`` (and no
``TRITON_INTERPRET``) the same checks run the compiled kernels on a GPU.
"""
from __future__ import annotations

import os
import sys

SKIP = 77
DEVICE = os.environ.get('TRITON_CHECK_DEVICE', 'cpu')


def _setup():
    if DEVICE == 'cpu':
        os.environ.setdefault('TRITON_INTERPRET', '1')
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:
        print(f'triton cannot be imported: {type(e).__name__}: {e}')
        sys.exit(SKIP)
    if DEVICE == 'cpu':
        _round_bf16_to_nearest_even_in_the_interpreter()


def _round_bf16_to_nearest_even_in_the_interpreter():
    """Make the interpreter's fp32 -> bf16 cast round to nearest even, as the GPU's does.

    The interpreter (triton 3.x) implements ``x.to(tl.bfloat16)`` by dropping the low 16 bits (round toward zero),
    while the compiled kernel rounds to nearest even (LLVM fptrunc); without this the bf16 checks would measure
    the interpreter's truncation, about twice the rounding error of the real kernel. Only the test harness is
    patched; the check below fails loudly if a future triton changes the internals this relies on.
    """
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter as interp
    builder = getattr(interp, 'InterpreterBuilder', None)
    if builder is None or not hasattr(builder, 'cast_impl') or not hasattr(interp, 'TensorHandle'):
        return
    original = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
            return interp.TensorHandle(rounded, dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    import triton

    @triton.jit
    def _cast(x_ptr, o_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(o_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    x = torch.randn(256, generator=torch.Generator().manual_seed(0))
    out = torch.empty(256, dtype=torch.bfloat16)
    _cast[(1,)](x, out, BLOCK=256)
    assert torch.equal(out, x.bfloat16()), 'the interpreter fp32 -> bf16 cast still does not round like torch'


def _ref_dwconv_gate(fused, d0, weight, bias, dtype):
    """The torch formulation of GnConv: split, depthwise conv (scale folded into weight/bias), first gating."""
    import torch.nn.functional as F
    pwa, abc = fused.split((d0, fused.shape[-1] - d0), dim=-1)
    q = F.conv2d(abc.permute(0, 3, 1, 2), weight.to(dtype), None if bias is None else bias.to(dtype),
                 padding=weight.shape[-1] // 2, groups=abc.shape[-1]).permute(0, 2, 3, 1)
    return pwa * q[..., :d0], q


def _run(impl, fused, d0, weight, bias, dtype, gated=True):
    """Outputs and gradients (w.r.t. the proj_in output, weight and bias) of one formulation."""
    import torch
    from models import kernels
    f = fused.detach().to(dtype).requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    scale = 1 / 3
    ws, bs = w * scale, (b * scale if b is not None else None)
    if impl == 'triton':
        pwa, abc = f.split((d0, f.shape[-1] - d0), dim=-1)
        if gated:
            x0, q = kernels.dwconv_gate_nhwc(abc, pwa, ws, bs)
        else:
            q = kernels.dwconv_nhwc(abc, ws, bs)
            x0 = pwa * q[..., :d0]
    else:
        x0, q = _ref_dwconv_gate(f, d0, ws, bs, dtype)
    gen = torch.Generator().manual_seed(3)
    g0 = torch.randn(x0.shape, generator=gen).to(x0.device)
    g1 = torch.randn(q.shape, generator=gen).to(q.device)
    loss = (x0.double() * g0).sum() + (q[..., d0:].double() * g1[..., d0:]).sum()
    loss.backward()
    outs = dict(x0=x0, q=q, grad_fused=f.grad, grad_weight=w.grad)
    if b is not None:
        outs['grad_bias'] = b.grad
    return outs


def _inputs(bsz, h, w, d0, c, ks, seed=0, bias=True):
    import torch
    gen = torch.Generator().manual_seed(seed)
    fused = torch.randn(bsz, h, w, d0 + c, generator=gen).to(DEVICE)
    weight = (torch.randn(c, 1, ks, ks, generator=gen) * (1.0 / ks)).to(DEVICE)
    b = torch.randn(c, generator=gen).to(DEVICE) if bias else None
    return fused, weight, b


def check_dwconv_fp32():
    """fp32: outputs and gradients equal torch's conv (to fp32 summation order)."""
    import torch
    cases = [
        dict(bsz=2, h=5, w=6, d0=3, c=10, ks=7, gated=True),
        dict(bsz=2, h=7, w=7, d0=8, c=70, ks=7, gated=True),   # 2 position tiles x 2 channel blocks
        dict(bsz=1, h=3, w=4, d0=2, c=6, ks=7, gated=False),   # map smaller than the kernel; conv only
        dict(bsz=2, h=4, w=5, d0=4, c=12, ks=3, gated=True, bias=False),
    ]
    for case in cases:
        gated = case.pop('gated')
        fused, weight, bias = _inputs(**case)
        got = _run('triton', fused, case['d0'], weight, bias, torch.float32, gated)
        ref = _run('torch', fused, case['d0'], weight, bias, torch.float32)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5, msg=lambda m: f'{case} {k}: {m}')
        assert got['q'].is_contiguous() and got['q'].dtype == torch.float32
        print('ok fp32', case, 'gated' if gated else 'conv only')


def check_dwconv_bf16():
    """bf16 inputs: each result within bf16 rounding of the float64 truth, and no further from it than torch's
    bf16 conv (the kernel accumulates in fp32; torch rounds the weight and its gradient to bf16)."""
    import torch
    case = dict(bsz=2, h=7, w=7, d0=8, c=70, ks=7)
    fused, weight, bias = _inputs(**case)
    fused = fused.bfloat16().float()  # the same bf16-representable input for all three
    truth = _run('torch', fused.double(), case['d0'], weight.double(), bias.double(), torch.float64)
    got = _run('triton', fused, case['d0'], weight, bias, torch.bfloat16)
    ref = _run('torch', fused, case['d0'], weight, bias, torch.bfloat16)
    for k in truth:
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        scale = truth[k].abs().max().item()
        err = (got[k].double() - truth[k]).abs().max().item()
        ref_err = (ref[k].double() - truth[k]).abs().max().item()
        print(f'{k}: triton err {err:.3g}, torch bf16 err {ref_err:.3g} (max |value| {scale:.3g})')
        assert err <= 1.5 * ref_err + 1e-3 * scale, (k, err, ref_err)
        assert err <= 2 ** -7 * scale * 2, (k, err, scale)


def check_dwconv_autocast():
    """Under bf16 autocast the kernel's output is bf16, like F.conv2d's."""
    import torch
    from models import kernels
    fused, weight, bias = _inputs(1, 4, 4, 2, 6, 7)
    pwa, abc = fused.split((2, 6), dim=-1)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        x0, q = kernels.dwconv_gate_nhwc(abc.bfloat16(), pwa.bfloat16(), weight, bias)
        _, q_ref = _ref_dwconv_gate(fused.bfloat16(), 2, weight, bias, torch.bfloat16)
    assert q.dtype == q_ref.dtype == torch.bfloat16 and x0.dtype == torch.bfloat16
    torch.testing.assert_close(q.float(), q_ref.float(), rtol=2e-2, atol=2e-2)
    print('ok autocast')


def _gnconv_run(m, x, dtype=None):
    import torch
    m.zero_grad()
    xi = x.clone().requires_grad_()
    if dtype is None:
        out = m(xi)
    else:
        with torch.autocast(DEVICE, dtype=dtype):
            out = m(xi)
    gen = torch.Generator().manual_seed(1)
    out.float().mul(torch.randn(out.shape, generator=gen).to(out.device)).sum().backward()
    return [out] + [xi.grad] + [p.grad.clone() for p in m.parameters()]


def check_gnconv():
    """GnConv with ``triton_dwconv`` (alone and with ``fused_gating``) equals the default GnConv: fp32 outputs and
    gradients of the input and every parameter; bf16 autocast within bf16 rounding."""
    import warnings
    import torch
    from models import kernels
    from models.hornet import GnConv
    assert kernels.can_run_on(torch.empty(1, device=DEVICE)), 'kernels would not run: torch compared with torch'
    warnings.simplefilter('error', RuntimeWarning)  # (the fallback to torch warns)
    torch.manual_seed(0)
    for order in (2, 5):
        m = GnConv(32, order=order, scale=1 / 3).to(DEVICE)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
        x = torch.randn(2, 32, 5, 6).to(DEVICE).contiguous(memory_format=torch.channels_last)
        names = ['output', 'input'] + [n for n, _ in m.named_parameters()]
        ref = _gnconv_run(m, x)
        for fused_gating in (False, True):
            m.triton_dwconv, m.fused_gating = True, fused_gating
            got = _gnconv_run(m, x)
            m.triton_dwconv = m.fused_gating = False
            for n, a, b in zip(names, got, ref):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda s: f'order {order} {n}: {s}')
            print('ok gnconv fp32, order', order, 'fused_gating', fused_gating)
        ref16 = _gnconv_run(m, x, torch.bfloat16)
        m.triton_dwconv = True
        got16 = _gnconv_run(m, x, torch.bfloat16)
        m.triton_dwconv = False
        for n, a, b, r in zip(names, got16, ref16, ref):
            assert a.dtype == b.dtype, (n, a.dtype, b.dtype)
            scale = r.abs().max().item()
            err, ref_err = (a.float() - r).abs().max().item(), (b.float() - r).abs().max().item()
            assert err <= 2 * ref_err + 1e-2 * scale, (order, n, err, ref_err, scale)
        print('ok gnconv bf16 autocast, order', order)


CHECKS = {name[len('check_'):]: fn for name, fn in globals().items() if name.startswith('check_')}


if __name__ == '__main__':
    _setup()
    for name in sys.argv[1:] or list(CHECKS):
        CHECKS[name]()
