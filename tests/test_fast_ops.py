"""Opt-in speed levers (models/fast_ops.py enable(), models/global_filter.py, models/kernels): each equals the
reference formulation in outputs and gradients. None is a default; none has been measured on a GPU (BENCHMARKS.md,
"Opt-in kernels")."""
from __future__ import annotations

import functools
import pathlib

import pytest
import torch
import timm

import models  # noqa: F401  (registers the models)
from models import fast_ops
from models import global_filter as gf_mod
from models.global_filter import global_filter_fft
from models.hornet import GF_384, GlobalLocalFilter, GnConv, HorNet

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def _channels_last_slice(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) view of the second half of a channels-last tensor: what GlobalLocalFilter passes in."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, w, 2 * c, generator=gen)[..., c:].permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ Global Filter
@pytest.mark.parametrize('hw', [(14, 14), (7, 7), (24, 24), (12, 12), (5, 9), (6, 10), (1, 1)])
def test_kron_matrices_are_rfft2_and_irfft2_of_the_basis(hw):
    """The precomputed matrices equal the transforms of unit maps / unit spectra (float64, to 1e-12)."""
    h, w = hw
    fwd, inv = gf_mod.kron_dft_mats(h, w)
    k = h * (w // 2 + 1)
    assert fwd.shape == (h * w, 2 * k) and inv.shape == (2 * k, h * w)
    eye = torch.eye(h * w, dtype=torch.float64).view(-1, h, w)
    expected_fwd = torch.view_as_real(torch.fft.rfft2(eye, norm='ortho')).reshape(h * w, 2 * k)
    unit_spectra = torch.view_as_complex(torch.eye(2 * k, dtype=torch.float64).view(2 * k, h, w // 2 + 1, 2))
    expected_inv = torch.fft.irfft2(unit_spectra, s=(h, w), norm='ortho').reshape(2 * k, h * w)
    torch.testing.assert_close(fwd, expected_fwd, rtol=0, atol=1e-12)
    torch.testing.assert_close(inv, expected_inv, rtol=0, atol=1e-12)


# (map size, filter size): the 224 models (14x14 / 7x7 maps) and the 384 ones (24x24 / 12x12), plus odd sizes
GF_SIZES = [((14, 14), (14, 8)), ((7, 7), (7, 4)), ((24, 24), (24, 13)), ((12, 12), (12, 7)), ((5, 9), (5, 5))]


@pytest.mark.parametrize('hw, filt', GF_SIZES)
@pytest.mark.parametrize('layout', ['channels_last_slice', 'contiguous'])
def test_global_filter_kron_equals_fft_in_outputs_and_gradients(hw, filt, layout):
    (h, w), c = hw, 6
    x = _channels_last_slice(2, c, h, w) if layout == 'channels_last_slice' else torch.randn(2, c, h, w)
    weight = torch.randn(c, *filt, 2)
    x_k, w_k = x.detach().clone().requires_grad_(), weight.clone().requires_grad_()
    x_f, w_f = x.detach().clone().requires_grad_(), weight.clone().requires_grad_()
    out_k = gf_mod.global_filter_kron(x_k, w_k)
    out_f = global_filter_fft(x_f, w_f)
    torch.testing.assert_close(out_k, out_f, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out_f)
    out_k.backward(g)
    out_f.backward(g)
    torch.testing.assert_close(x_k.grad, x_f.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_k.grad, w_f.grad, rtol=1e-5, atol=1e-5)
    if layout == 'channels_last_slice':  # no layout copy on the way out either
        assert out_k.is_contiguous(memory_format=torch.channels_last)


def test_global_filter_kron_under_bf16_autocast_is_close_to_fft():
    """Under autocast the two GEMMs run in bf16 (like gf_impl='matmul'): bf16 rounding, no worse."""
    x = _channels_last_slice(2, 8, 14, 14)
    weight = torch.randn(8, 14, 8, 2) * 0.5
    ref = global_filter_fft(x, weight)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = gf_mod.global_filter_kron(x.bfloat16(), weight)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max().item()
    assert err < 0.03 * ref.abs().max().item(), err


def test_global_local_filter_with_kron_equals_fft_module():
    torch.manual_seed(0)
    m = _randomize(GlobalLocalFilter(16, h=14, w=8), std=0.5)
    x = torch.randn(2, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    outs, grads = {}, {}
    for impl in ('fft', 'kron'):
        m.gf_impl = impl
        xi = x.clone().requires_grad_()
        m.zero_grad()
        outs[impl] = m(xi)
        outs[impl].square().sum().backward()
        grads[impl] = [xi.grad] + [p.grad.clone() for p in m.parameters()]
    torch.testing.assert_close(outs['kron'], outs['fft'], rtol=1e-5, atol=1e-5)
    for gk, gf in zip(grads['kron'], grads['fft']):
        torch.testing.assert_close(gk, gf, rtol=1e-4, atol=1e-4)


def _model_where_every_branch_matters(name: str, **kwargs) -> torch.nn.Module:
    """The model's own init, but with layer scales of 1, unit-gain gnConv projections and a strong Global Filter:
    with the default init (layer scale 1e-6) a Global Filter moves the logits by ~1e-5 and the check sees nothing."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'gamma' in n:
                p.fill_(1.0)
            elif 'complex_weight' in n:
                p.normal_(0, 0.5)
            elif 'gnconv' in n and p.ndim == 4 and p.shape[-1] == 1:  # unit-gain 1x1 projections
                p.normal_(0, p.shape[1] ** -0.5)
    return model


@pytest.mark.parametrize('name, res', [('hornet_micro_gf', 224), ('hornet_micro_gf', 384)])
def test_whole_model_logits_are_equal_with_every_gf_impl(name, res):
    """The 224 filters (14x8, 7x4) and the 384 ones (24x13, 12x7) on the cheapest Global Filter net."""
    kwargs = dict(gf_sizes=GF_384) if res == 384 else {}
    model = _model_where_every_branch_matters(name, **kwargs).eval()
    x = torch.randn(2, 3, res, res)
    logits = {}
    for impl in ('fft', 'matmul', 'kron'):
        fast_ops.enable(model, gf_impl=impl)
        with torch.no_grad():
            logits[impl] = model(x)
    fast_ops.enable(model, gf_impl='fft')
    with torch.no_grad():  # the check can see a change in the Global Filter
        model.stages[2][0].gnconv.dwconv.complex_weight.normal_(0, 0.5)  # a new filter
        changed = (model(x) - logits['fft']).abs().max().item()
    assert not torch.allclose(logits['fft'][0], logits['fft'][1], rtol=1e-3, atol=1e-3)  # inputs matter
    assert changed > 1e-2, changed  # and so does the Global Filter
    torch.testing.assert_close(logits['kron'], logits['fft'], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits['matmul'], logits['fft'], rtol=1e-4, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _mini_ref():
    return torch.load(FIXTURES / 'mini_reference.pt', weights_only=True)['mini_gf']


@pytest.mark.parametrize('res', [64, 96])
def test_kron_gives_the_original_release_logits(res):
    """Logits of the original code on the same weights (the fixture of test_models.py), 96 px with resized filters."""
    ref = _mini_ref()
    model = HorNet(num_classes=10, depths=(1, 1, 2, 1), base_dim=16, gf_sizes=(None, None, (4, 3), (2, 2))).eval()
    model.load_state_dict(ref['state_dict'], strict=True)
    fast_ops.enable(model, gf_impl='kron')
    with torch.no_grad():
        out = model(ref['inputs'][res])
    torch.testing.assert_close(out, ref['logits'][res], rtol=1e-5, atol=1e-5)


def test_gf_impl_is_validated_and_kron_is_opt_in():
    model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=(None, None, (4, 3), (2, 2)))
    assert {m.gf_impl for m in model.modules() if isinstance(m, GlobalLocalFilter)} == {'fft'}
    assert fast_ops.enable(model, gf_impl='kron') == {'gf_impl': 2}
    assert {m.gf_impl for m in model.modules() if isinstance(m, GlobalLocalFilter)} == {'kron'}
    with pytest.raises(ValueError, match='gf_impl'):
        fast_ops.enable(model, gf_impl='cufft')
    with pytest.raises(ValueError, match='gf_impl'):
        HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=(None, None, (4, 3), (2, 2)),
               gf_impl='cufft')


def test_kron_matrix_cache_survives_inference_mode_and_fake_tensors():
    """Matrices first built under inference_mode are still usable in training; fake/meta runs bypass the cache."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    gf_mod._KRON_CACHE.clear()
    model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=(None, None, (4, 3), (2, 2)),
                   gf_impl='kron')
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    assert gf_mod._KRON_CACHE
    out = model(x)
    out.sum().backward()  # would fail if a cached matrix were an inference tensor
    torch.testing.assert_close(out, ref)
    n = len(gf_mod._KRON_CACHE)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = model(mode.from_tensor(x))
    assert fake.shape == (2, 10) and len(gf_mod._KRON_CACHE) == n
    with torch.device('meta'):
        meta_model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8,
                            gf_sizes=(None, None, (4, 3), (2, 2)), gf_impl='kron')
    assert meta_model(torch.randn(2, 3, 64, 64, device='meta')).shape == (2, 10)
    assert len(gf_mod._KRON_CACHE) == n


@pytest.mark.slow
def test_kron_training_forward_is_one_torch_compile_graph():
    model = timm.create_model('hornet_micro_gf', drop_path_rate=0.1, gf_impl='kron').train()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


# ------------------------------------------------------------------------------------------ gating chain
def _gnconv_grads(m: GnConv, x: torch.Tensor, fused: bool, dtype=None):
    m.fused_gating = fused
    m.zero_grad()
    xi = x.clone().requires_grad_()
    if dtype is None:
        out = m(xi)
    else:
        with torch.autocast('cpu', dtype=dtype):
            out = m(xi)
    gen = torch.Generator().manual_seed(1)
    out.backward(torch.randn(out.shape, generator=gen).to(out.dtype))
    return out, [xi.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize('order', [2, 3, 4, 5])
@pytest.mark.parametrize('gf', [False, True])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fused_gating_equals_reference_in_fp32(order, gf, channels_last):
    """Same outputs and gradients (input, every weight and bias) as the per-op autograd graph."""
    torch.manual_seed(order)
    dim = 32
    m = _randomize(GnConv(dim, order=order, gf_size=(6, 4) if gf else None, scale=1 / 3), seed=order)
    x = torch.randn(2, dim, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_r, grads_r = _gnconv_grads(m, x, fused=False)
    out_f, grads_f = _gnconv_grads(m, x, fused=True)
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=0)  # the forward runs the same ops
    names = ['input'] + [n for n, _ in m.named_parameters()]
    for name, gf_, gr in zip(names, grads_f, grads_r):
        torch.testing.assert_close(gf_, gr, rtol=1e-5, atol=1e-6, msg=lambda s: f'{name}: {s}')


@pytest.mark.parametrize('gf', [False, True])
def test_fused_gating_under_bf16_autocast_matches_reference(gf):
    """Same ops in forward (identical bf16 output); backward mirrors autograd's casts, gradients in fp32."""
    torch.manual_seed(0)
    dim = 32
    m = _randomize(GnConv(dim, order=4, gf_size=(6, 4) if gf else None, scale=1 / 3), std=0.3)
    x = torch.randn(2, dim, 6, 6).contiguous(memory_format=torch.channels_last)
    out_r, grads_r = _gnconv_grads(m, x, fused=False, dtype=torch.bfloat16)
    out_f, grads_f = _gnconv_grads(m, x, fused=True, dtype=torch.bfloat16)
    assert out_f.dtype == out_r.dtype == torch.bfloat16
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=0)
    names = ['input'] + [n for n, _ in m.named_parameters()]
    for name, gf_, gr in zip(names, grads_f, grads_r):
        assert gf_.dtype == gr.dtype == torch.float32, name
        scale = gr.abs().max().item()
        torch.testing.assert_close(gf_, gr, rtol=2e-2, atol=2e-2 * scale, msg=lambda s: f'{name}: {s}')


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


@pytest.mark.parametrize('gf', [False, True])
def test_fused_gating_saves_less_for_backward(gf):
    """The gating products are not stored: about sum(dims) channels per position less (order 5: ~1.94 dim)."""
    torch.manual_seed(0)
    dim, order = 64, 5
    m = _randomize(GnConv(dim, order=order, gf_size=(8, 5) if gf else None, scale=1 / 3))
    x = torch.randn(2, dim, 8, 8, requires_grad=True)
    sizes = {}
    for fused in (False, True):
        m.fused_gating = fused
        sizes[fused] = _saved_bytes(lambda: m(x))
    per_channel = 2 * 8 * 8 * 4  # bytes of one channel-width (B*H*W fp32)
    saved_channels = (sizes[False] - sizes[True]) / per_channel
    assert saved_channels >= sum(m.dims) - 1, (sizes, saved_channels)
    print(f"gnConv dim {dim} order {order} gf={gf}: saved for backward {sizes[False]} -> {sizes[True]} bytes "
          f"({sizes[True] / sizes[False]:.2f}x)")


def test_fused_gating_in_a_whole_model_with_and_without_selective_checkpointing():
    torch.manual_seed(0)
    model = HorNet(num_classes=10, depths=(1, 1, 2, 1), base_dim=16, gf_sizes=(None, None, (4, 3), (2, 2)),
                   layer_scale_init_value=0.5)
    _randomize(model, std=0.1)
    x = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    assert not any(m.fused_gating for m in model.modules() if isinstance(m, GnConv))  # opt-in
    ref_out, ref_grads = grads()
    for selective in (False, True):
        fast_ops.enable(model, fused_gating=True)
        model.set_selective_checkpointing(selective)
        out, g = grads()
        torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
        for (name, _), a, b in zip(model.named_parameters(), g, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda s: f'{name}: {s}')
    with torch.no_grad():  # without autograd the plain path runs
        torch.testing.assert_close(model(x), ref_out)


@pytest.mark.slow
def test_fused_gating_training_forward_is_one_torch_compile_graph():
    model = timm.create_model('hornet_micro_7x7', drop_path_rate=0.1).train()
    fast_ops.enable(model, fused_gating=True)
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


# ------------------------------------------------------------------------------------------ Triton kernels
TRITON_CHECKS = ('dwconv_fp32', 'dwconv_bf16', 'dwconv_autocast', 'gnconv')


def _run_triton_checks(names, device: str = 'cpu') -> None:
    """tests/triton_checks.py NAME... in ONE fresh process (importing torch and triton is most of a check's time):
    on CPU with TRITON_INTERPRET=1 (set before triton loads), on CUDA with the compiled kernels. A failure's
    traceback names the check."""
    import os
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), TRITON_CHECK_DEVICE=device)
    if device == 'cpu':
        env['TRITON_INTERPRET'] = '1'
    else:
        env.pop('TRITON_INTERPRET', None)
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-m', 'tests.triton_checks', *names], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip() or 'triton cannot be imported')
    assert proc.returncode == 0, f'{" ".join(names)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}'
    print(proc.stdout)


@pytest.mark.slow
def test_triton_depthwise_kernels_under_the_interpreter():
    """Forward, input and weight/bias gradients of the Triton depthwise conv (+ first gating multiply) against
    torch: fp32 to summation order (dwconv_fp32), bf16 no further from float64 than torch's bf16 conv (dwconv_bf16),
    bf16 output under autocast (dwconv_autocast); the GnConv hookup too (gnconv)."""
    _run_triton_checks(TRITON_CHECKS)


@pytest.mark.gpu
def test_triton_depthwise_kernels_compiled_on_cuda():
    """The same checks with the compiled kernels (the CPU run is the interpreter test)."""
    _run_triton_checks(TRITON_CHECKS, 'cuda')


@pytest.mark.gpu
@pytest.mark.parametrize('hw, filt', GF_SIZES)
def test_global_filter_kron_equals_cufft_on_cuda(hw, filt):
    """On a GPU the reference is cuFFT: the same check as on CPU (fp32, no TF32 in the GEMMs)."""
    torch.backends.cuda.matmul.allow_tf32, tf32 = False, torch.backends.cuda.matmul.allow_tf32
    try:
        (h, w), c = hw, 6
        x = _channels_last_slice(2, c, h, w).cuda().requires_grad_()
        weight = torch.randn(c, *filt, 2, device='cuda', requires_grad=True)
        out_k = gf_mod.global_filter_kron(x, weight)
        out_f = global_filter_fft(x, weight)
        torch.testing.assert_close(out_k, out_f, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(out_f)
        grads_k = torch.autograd.grad(out_k, (x, weight), g)
        grads_f = torch.autograd.grad(out_f, (x, weight), g)
        for a, b in zip(grads_k, grads_f):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_triton_dwconv_falls_back_to_torch_where_kernels_cannot_run():
    """On CPU without the interpreter the opt-in path computes torch's conv (with one warning), same result."""
    import os
    from models import kernels
    if kernels.triton_available() is not None:
        pytest.skip(f'triton cannot be imported: {kernels.triton_available()}')
    if kernels.interpreting():
        pytest.skip('TRITON_INTERPRET is set in this process: the kernels would run')
    assert os.environ.get('TRITON_INTERPRET', '0') in ('', '0')
    torch.manual_seed(0)
    model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8)
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    assert fast_ops.enable(model, triton_dwconv=True) == {'triton_dwconv': 4}
    assert all(m.triton_dwconv for m in model.modules() if isinstance(m, GnConv))
    fast_ops._warned_fallback = False
    with pytest.warns(RuntimeWarning, match='triton depthwise conv unavailable'):
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    fast_ops.enable(model, triton_dwconv=False)
    assert not any(m.triton_dwconv for m in model.modules() if isinstance(m, GnConv))


def test_every_fast_path_is_off_by_default():
    model = timm.create_model('hornet_micro_gf')
    for m in model.modules():
        if isinstance(m, GnConv):
            assert not m.fused_gating and not m.triton_dwconv
        if isinstance(m, GlobalLocalFilter):
            assert m.gf_impl == 'fft'


def test_enable_is_one_switch_that_keeps_unnamed_levers_and_leaves_other_models_alone():
    model = timm.create_model('hornet_micro_gf')  # stages 1-2 7x7 (2 blocks), stages 3-4 Global Filters (4 blocks)
    assert fast_ops.enable(model, fused_gating=True, gf_impl='matmul') == {'gf_impl': 4, 'fused_gating': 6}
    assert fast_ops.enable(model, gf_impl='kron') == {'gf_impl': 4}
    assert all(m.fused_gating for m in model.modules() if isinstance(m, GnConv))  # not named: kept
    assert {m.gf_impl for m in model.modules() if isinstance(m, GlobalLocalFilter)} == {'kron'}
    assert fast_ops.enable(model, triton_dwconv=False) == {'triton_dwconv': 2}  # only the 7x7 blocks take it
    other = timm.create_model('convnext_atto')
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert fast_ops.enable(other, gf_impl='kron', fused_gating=True, triton_dwconv=True) == \
        {'gf_impl': 0, 'fused_gating': 0, 'triton_dwconv': 0}  # nothing to set: no triton needed either
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript_of_a_model_with_levers_on_runs_the_default_path():
    """TorchScript cannot compile the levers; a scripted model computes the same function on the default path."""
    torch.manual_seed(0)
    model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=(None, None, (4, 3), (2, 2))).eval()
    fast_ops.enable(model, fused_gating=True, gf_impl='kron')
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
